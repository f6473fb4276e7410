"""Every fuzz target replays its committed seed corpus without an unexpected exception.

This is `make test`'s share of the fuzzing (fast: a few dozen inputs, no atheris); `make fuzz`
and CI's budgeted run mutate from the same corpus (fuzz/run.py, docs/testing.md "Fuzzing").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz import seed
from fuzz.framing import join, records
from fuzz.targets import all_targets

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
TARGETS = all_targets()
CASES = [(name, path.name) for name in TARGETS for path in sorted((CORPUS / name).iterdir())]


def test_every_target_has_a_seed_corpus_and_a_seed_builder():
    assert set(seed.SEEDS) == set(TARGETS)
    for name in TARGETS:
        assert len(list((CORPUS / name).iterdir())) >= 3, name


def test_the_committed_corpus_is_what_fuzz_seed_builds():
    built = seed.build()
    for name, seeds in built.items():
        assert {p.name: p.read_bytes() for p in (CORPUS / name).iterdir()} == seeds, (
            f"fuzz/corpus/{name} is stale: run python -m fuzz.seed"
        )


@pytest.mark.parametrize(("target", "name"), CASES)
def test_target_replays_its_corpus(target, name):
    TARGETS[target]((CORPUS / target / name).read_bytes())


@pytest.mark.parametrize("target", list(TARGETS))
def test_target_takes_empty_and_tiny_inputs(target):
    for data in (b"", b"\x00", b"\xff" * 3, b"\x01\x00\x01\x00", bytes(range(256))):
        TARGETS[target](data)


def test_records_round_trip_and_truncate():
    items = [(1, b"abc"), (255, b""), (0, bytes(300))]
    assert records(join(items)) == items
    assert records(join(items)[:-10]) == [*items[:2], (0, bytes(290))]
    assert records(b"\x01\x00") == []


@pytest.mark.parametrize("target", list(TARGETS))
def test_documented_rejects_are_exceptions(target):
    for reject in TARGETS[target].reject_types():
        assert issubclass(reject, Exception)
