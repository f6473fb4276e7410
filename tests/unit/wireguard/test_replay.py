"""The sliding replay window: in order, out of order, too old, duplicates, limits."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from gateway_pkg.wireguard.replay import WINDOW_SIZE, ReplayWindow

LIMIT = (1 << 64) - (1 << 13) - 1


def accept(window: ReplayWindow, counter: int) -> bool:
    return window.check(counter) and window.record(counter)


def test_window_is_at_least_2048() -> None:
    assert WINDOW_SIZE >= 2048


def test_in_order_counters_are_accepted_once() -> None:
    window = ReplayWindow(LIMIT)
    assert all(accept(window, n) for n in range(10_000))
    assert not any(accept(window, n) for n in range(10_000 - 100, 10_000))


def test_out_of_order_within_2048_is_accepted() -> None:
    window = ReplayWindow(LIMIT)
    counters = list(range(2048))
    random.Random(1).shuffle(counters)
    assert accept(window, 2047)
    assert all(accept(window, n) for n in counters if n != 2047)
    assert not accept(window, 5)


def test_too_old_is_rejected_and_edge_of_window_is_accepted() -> None:
    window = ReplayWindow(LIMIT)
    assert accept(window, 20_000)
    assert not accept(window, 20_000 - WINDOW_SIZE)
    assert accept(window, 20_000 - WINDOW_SIZE + 1)
    assert not accept(window, 0)


def test_duplicate_is_rejected() -> None:
    window = ReplayWindow(LIMIT)
    assert accept(window, 0)
    assert not accept(window, 0)
    assert accept(window, 3)
    assert not window.check(3)


def test_check_does_not_move_the_window() -> None:
    window = ReplayWindow(LIMIT)
    assert accept(window, 10)
    assert window.check(1 << 40)  # a forged huge counter, never recorded
    assert accept(window, 9)


def test_large_jump_clears_stale_bits() -> None:
    window = ReplayWindow(LIMIT)
    assert accept(window, 64)
    jump = 64 + 128 * 64  # lands on the same ring slot
    assert accept(window, jump)
    assert accept(window, jump - 64)  # its bit must not be left over from counter 64


def test_counter_at_reject_after_messages_is_rejected() -> None:
    window = ReplayWindow(100)
    assert accept(window, 99)
    assert not window.check(100) and not window.record(100)


@given(st.lists(st.integers(min_value=0, max_value=30_000), max_size=300))
def test_matches_a_simple_model(counters: list[int]) -> None:
    window = ReplayWindow(LIMIT)
    seen: set[int] = set()
    greatest = -1
    for counter in counters:
        expected = counter not in seen and (greatest < 0 or greatest - counter < WINDOW_SIZE)
        assert accept(window, counter) == expected
        if expected:
            seen.add(counter)
            greatest = max(greatest, counter)
