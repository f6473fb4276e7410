from gateway_pkg.portal.backoff import Backoff


def test_first_retry_immediate_then_growing_with_jitter_bounds():
    backoff = Backoff(rand=lambda: 0.0)
    assert backoff.next_delay(0) == 0.0
    low = [backoff.next_delay(1) for _ in range(4)]
    assert low == [0.25, 0.375, 0.5625, 0.84375]  # interval ×(1-0.5), growing ×1.5
    backoff = Backoff(rand=lambda: 1.0)
    backoff.next_delay(0)
    assert [backoff.next_delay(1) for _ in range(2)] == [0.75, 1.125]  # ×(1+0.5)


def test_interval_capped_at_60s():
    backoff = Backoff(rand=lambda: 0.5)
    delays = [backoff.next_delay(0) for _ in range(40)]
    assert max(delays) == 60.0 and delays[-1] == 60.0


def test_gives_up_after_max_elapsed_and_reset_restarts():
    backoff = Backoff(max_elapsed=900)
    assert backoff.next_delay(100) == 0.0
    assert backoff.next_delay(1000) is not None
    assert backoff.next_delay(1000.1) is None
    backoff.reset()
    assert backoff.next_delay(2000) == 0.0
