"""Whether the upstream DNS servers are answering at all (sans-I/O: every call takes `now`).

An outage begins when a query gets no reply from any nameserver (every try timed out or
could not connect) and no other query was answered while it was out: a name whose own
servers are slow times out too, but then the others keep being answered and it is no
outage. It ends at the first answered query. The resolver logs each transition once, and
while an outage is known (a failure less than one recheck interval ago) it serves stale
answers without waiting for their refresh.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outage:
    since: float
    reason: str  # the first failure, for the log line

    def duration(self, now: float) -> float:
        return now - self.since


class UpstreamHealth:
    def __init__(self, recheck: float) -> None:
        self.recheck = recheck
        self.outage: Outage | None = None
        self._last_answer = float("-inf")
        self._last_failure = float("-inf")

    def is_down(self, now: float) -> bool:
        """An outage is known and was confirmed less than one recheck interval ago."""
        return self.outage is not None and now < self._last_failure + self.recheck

    def failed(self, *, started: float, now: float, reason: str) -> bool:
        """A query sent at `started` got no reply from any server by `now`.
        True when that begins an outage."""
        if self._last_answer > started:
            return False  # other queries were answered meanwhile: this name is slow
        self._last_failure = max(self._last_failure, now)
        if self.outage is not None:
            return False
        self.outage = Outage(now, reason)
        return True

    def answered(self, now: float) -> Outage | None:
        """A query was answered; the outage it ends, if there was one."""
        self._last_answer = max(self._last_answer, now)
        outage, self.outage = self.outage, None
        return outage
