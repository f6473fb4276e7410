"""Reconnect schedule of upstream's `backoff` 0.4 defaults, as a pure object.

First failure after a success: retry at once. Then 0.5 s growing ×1.5 with ±50 % jitter,
each interval capped at 60 s, and give up once 15 min have passed since the first failure.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        *,
        initial: float = 0.5,
        multiplier: float = 1.5,
        randomization: float = 0.5,
        max_interval: float = 60.0,
        max_elapsed: float = 900.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.multiplier = multiplier
        self.randomization = randomization
        self.max_interval = max_interval
        self.max_elapsed = max_elapsed
        self._rand = rand
        self.reset()

    def reset(self) -> None:
        """Forget past failures: called after every successful connection."""
        self._current = self.initial
        self._started: float | None = None
        self._immediate_used = False

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None when it is time to give up."""
        if self._started is None:
            self._started = now
        if now - self._started > self.max_elapsed:
            return None
        if not self._immediate_used:
            self._immediate_used = True
            return 0.0
        delta = self.randomization * self._current
        low, high = self._current - delta, self._current + delta
        delay = low + self._rand() * (high - low)
        self._current = min(self._current * self.multiplier, self.max_interval)
        return delay
