"""Upstream's hygiene gates, shared by the integration tests, the container scenarios and the
benchmarks.

- **Log lines.** A run fails on any WARN or ERROR line of the gateway that the test did not
  provoke: a test that provokes one says so first (`LogGate.allow(pattern)`), so a new warning
  anywhere else is a failure instead of noise. Both log formats are read.
- **UDP errors.** The kernel's UDP receive-buffer and input-error counters (`nstat`) must not
  move during TCP transfers and fixed-rate UDP runs; the UDP maximum-rate search only reports
  them (it looks for loss on purpose).
- **Idle CPU.** An idle gateway spends at most `IDLE_CPU_LIMIT` CPU seconds in
  `IDLE_SECONDS`: no busy loop, no needless timers.

The container scenarios call this module as a script on a journal dump
(`python3 hygiene.py logs FILE [PATTERN ...]`), with the same rules.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

IDLE_SECONDS = 10.0
IDLE_CPU_LIMIT = 0.05  # CPU seconds in IDLE_SECONDS
CLK_TCK = os.sysconf("SC_CLK_TCK")

# `2026-01-01T00:00:00.000Z  WARN target: message` (human) or {"level": "WARN", ...} (JSON).
_HUMAN = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z\s+(WARN|ERROR) ")
# What ends a run rather than warns: a traceback is never acceptable, whatever the test allows.
_TRACEBACK = "Traceback (most recent call last)"


def problem_lines(output: str) -> list[str]:
    """The WARN and ERROR lines of a gateway's output, and any traceback."""
    found = []
    for line in output.splitlines():
        if _HUMAN.match(line) or _TRACEBACK in line:
            found.append(line)
        elif line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("level") in ("WARN", "ERROR"):
                found.append(line)
    return found


class LogGate:
    """The WARN/ERROR lines a test expects; every other one fails the test."""

    def __init__(self) -> None:
        self._allowed: list[re.Pattern[str]] = []

    def allow(self, *patterns: str) -> None:
        """Lines matching any of `patterns` (regular expressions, searched) are expected."""
        self._allowed.extend(re.compile(p) for p in patterns)

    def unexpected(self, output: str) -> list[str]:
        return [line for line in problem_lines(output)
                if _TRACEBACK in line or not any(p.search(line) for p in self._allowed)]


_current: list[LogGate] = [LogGate()]


def current_gate() -> LogGate:
    """The gate of the test that is running (labs built outside the `lab` fixture use it)."""
    return _current[0]


def new_gate() -> LogGate:
    """A fresh gate for the next test."""
    _current[0] = LogGate()
    return _current[0]


# --- UDP error counters ---------------------------------------------------------------------

def nstat(ns: str | None = None) -> dict[str, int]:
    """Absolute SNMP/netstat counters of a namespace (`nstat -asz`: no history file touched)."""
    argv = ["nstat", "-asz"]
    out = subprocess.run(["ip", "netns", "exec", ns, *argv] if ns else argv, capture_output=True, text=True,
                         check=True).stdout
    counters: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            counters[parts[0]] = int(parts[1])
    return counters


UDP_ERRORS = ("UdpInErrors", "UdpRcvbufErrors", "UdpSndbufErrors",
              "Udp6InErrors", "Udp6RcvbufErrors", "Udp6SndbufErrors")


def udp_errors(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Deltas of the UDP error counters, v4 and v6 summed: InErrors, RcvbufErrors, SndbufErrors.
    (The kernel counts a receive-buffer drop in InErrors too.)"""
    out = {}
    for kind in ("InErrors", "RcvbufErrors", "SndbufErrors"):
        out[kind] = sum(after.get(f"{fam}{kind}", 0) - before.get(f"{fam}{kind}", 0) for fam in ("Udp", "Udp6"))
    return out


class UdpErrorWatch:
    """`with UdpErrorWatch(ns) as watch: ...` then `watch.errors` (deltas); `check()` fails
    the test when receive errors moved."""

    def __init__(self, ns: str | None) -> None:
        self.ns = ns
        self.errors: dict[str, int] = {}
        self._before: dict[str, int] = {}

    def __enter__(self) -> UdpErrorWatch:
        self._before = nstat(self.ns)
        return self

    def __exit__(self, *exc: object) -> None:
        self.errors = udp_errors(self._before, nstat(self.ns))

    def check(self, what: str) -> None:
        bad = {k: v for k, v in self.errors.items() if k in ("InErrors", "RcvbufErrors") and v}
        assert not bad, f"UDP receive errors in the gateway's namespace during {what}: {bad}"


# --- idle CPU -------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads, live and exited), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def idle_cpu(pid: int, seconds: float = IDLE_SECONDS) -> float:
    """CPU seconds the process spends over `seconds` of wall time while nothing is asked of it."""
    before = cpu_seconds(pid)
    time.sleep(seconds)  # the measurement window itself, not a wait for a condition
    return cpu_seconds(pid) - before


# --- the script form, for the container scenarios ----------------------------------------

def _main(argv: Iterable[str]) -> int:
    args = list(argv)
    if len(args) < 2 or args[0] != "logs":
        print("usage: hygiene.py logs FILE [ALLOWED_PATTERN ...]", file=sys.stderr)
        return 2
    gate = LogGate()
    gate.allow(*args[2:])
    bad = gate.unexpected(Path(args[1]).read_text(errors="replace"))
    for line in bad:
        print(f"unexpected: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
