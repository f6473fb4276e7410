from __future__ import annotations

import pytest

from .harness import Pair, make_pair


@pytest.fixture
def pair() -> Pair:
    return make_pair()
