"""What the namespace benchmarks (bench_tunnel.py, bench_ice.py) share.

The load gate (ratios only from an idle machine), the search for the highest UDP rate at a
given loss, ping's summary line, and system calls counted per process with perf_event_open(2)
on the `raw_syscalls:sys_enter` tracepoint (what `perf stat -e raw_syscalls:sys_enter` counts).
A process's CPU seconds and the `nstat` counters come from tests/hygiene.py, the gates the
tests apply too.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.hygiene import UDP_ERRORS, LogGate, cpu_seconds, nstat, udp_errors
from tests.netlab import sh

__all__ = [
    "IPERF_PORT",
    "LOAD_LIMIT",
    "UDP_ERRORS",
    "LoadGate",
    "Ping",
    "SyscallCounter",
    "cpu_seconds",
    "finish_workdir",
    "highest_rate",
    "in_netns",
    "iperf_idle",
    "loadavg",
    "log_gate_report",
    "nstat",
    "parse_ping",
    "udp_errors",
]

LOAD_LIMIT = 0.5  # 1-minute load average above which ratios are not printed (unless --force)


# --- processes in the lab's namespaces -----------------------------------------------------------

IPERF_PORT = 5201  # the iperf3 server on the resource


def in_netns(ns: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command in a namespace and collect its output; the caller reads the status."""
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout,
                          check=False)


def iperf_idle(resource_ns: str, port: int = IPERF_PORT) -> bool:
    """No iperf3 test connection left open on the server (the previous test has closed)."""
    out = sh("ss", "-Htn", "state", "established", f"( sport = :{port} )", ns=resource_ns)
    return not out.strip()


def finish_workdir(workdir: Path, *, ok: bool, keep: bool) -> None:
    """After a run: on failure the last lines of every process log; the logs kept when asked
    for or on failure, else removed."""
    if not ok:
        for log in sorted(workdir.glob("*.log")):
            print(f"===== {log.name} (last 20 lines)", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
    if keep or not ok:
        print(f"logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


# --- the gateway's log -------------------------------------------------------------------------

def log_gate_report(outputs: list[str], gate: LogGate) -> str:
    """The tests' log gate (tests/hygiene.py) on the gateways of a benchmark: one line saying
    whether they wrote a WARN/ERROR line nobody announced, with the first few."""
    found = [line for output in outputs for line in gate.unexpected(output)]
    if not found:
        return "gateway log: no unexpected WARN or ERROR line"
    return f"gateway log: {len(found)} unexpected WARN/ERROR line(s):\n  " + "\n  ".join(found[:5])


# --- load ----------------------------------------------------------------------------------------

def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


@dataclass(frozen=True)
class LoadGate:
    """The 1-minute load average at the start and what it allows: ratios, or none, or flagged ones."""

    start: float
    force: bool

    @classmethod
    def now(cls, force: bool) -> LoadGate:
        return cls(os.getloadavg()[0], force)

    @property
    def busy(self) -> bool:
        return self.start > LOAD_LIMIT

    @property
    def ratios(self) -> bool:
        return not self.busy or self.force

    @property
    def flagged(self) -> bool:
        """Ratios printed although the machine was busy (--force)."""
        return self.busy and self.force

    @property
    def warning(self) -> str:
        if self.flagged:
            return (f"WARNING: 1-minute load {self.start:.2f} > {LOAD_LIMIT} at the start (--force): "
                    f"ratios taken under load, no claim from them")
        if self.busy:
            return (f"ratios withheld: 1-minute load {self.start:.2f} > {LOAD_LIMIT} at the start "
                    f"(--force prints them)")
        return f"load {self.start:.2f} at the start"


# --- measurements --------------------------------------------------------------------------------

def highest_rate(trial: Callable[[float], bool], start: float, top: float, bottom: float,
                 bisect_steps: int) -> float:
    """The highest rate for which `trial(rate)` passes, 0.0 if none down to `bottom`.

    From `start`: double while trials pass (up to `top`), or halve until one passes (down to
    `bottom`); then bisect `bisect_steps` times between the last pass and the first fail.
    """
    best, fail = 0.0, None
    rate = start
    if trial(rate):
        best = rate
        while rate * 2 <= top:
            rate *= 2
            if not trial(rate):
                fail = rate
                break
            best = rate
    else:
        fail = rate
        while rate / 2 >= bottom:
            rate /= 2
            if trial(rate):
                best = rate
                break
            fail = rate
    if fail is not None and best:
        low, high = best, fail
        for _ in range(bisect_steps):
            mid = (low + high) / 2
            if trial(mid):
                low = best = mid
            else:
                high = mid
    return best


@dataclass(frozen=True)
class Ping:
    min_ms: float
    avg_ms: float
    max_ms: float
    loss: str  # percent, as ping printed it ("?" if it printed none)


def parse_ping(stdout: str) -> Ping | None:
    """The rtt summary of `ping -q`, None if there is none (no reply at all)."""
    match = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", stdout)
    if match is None:
        return None
    lost = re.search(r"([\d.]+)% packet loss", stdout)
    return Ping(float(match.group(1)), float(match.group(2)), float(match.group(3)), lost.group(1) if lost else "?")


# --- system calls --------------------------------------------------------------------------------

_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_PERF_TYPE_TRACEPOINT = 2
_PERF_ATTR_SIZE = 128  # PERF_ATTR_SIZE_VER7 and later are larger; the kernel takes any known size >= VER0
_PERF_FLAG_FD_CLOEXEC = 8
_INHERIT = 1 << 1
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
# The calls broken out beside the total: the packet I/O and waiting calls of both kinds of gateway.
SYSCALL_BREAKDOWN = ("read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
                     "recvmmsg", "sendmmsg", "epoll_wait", "epoll_pwait", "poll", "ppoll", "select",
                     "pselect6", "futex", "nanosleep", "clock_nanosleep", "io_uring_enter", "getsockopt",
                     "setsockopt", "ioctl")


def _tracefs() -> Path | None:
    for root in TRACEFS:
        if (root / "events/raw_syscalls/sys_enter/id").exists():
            return root
    # Mounted on demand, as `perf` itself does; the standard place, nothing else changes.
    subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS[0])], capture_output=True, check=False)
    return TRACEFS[0] if (TRACEFS[0] / "events/raw_syscalls/sys_enter/id").exists() else None


class SyscallCounter:
    """System calls entered by every thread of one process, counted in the kernel.

    One perf_event_open(2) counter on the `raw_syscalls:sys_enter` tracepoint (every system
    call) per thread existing when it is made, with `inherit` so threads those create later
    are counted too; plus one per thread for each tracepoint `syscalls:sys_enter_<name>` of
    SYSCALL_BREAKDOWN that the kernel has. Reading costs one read(2) per counter; counting
    costs the tracepoint on each call (the kernel then takes its slower syscall entry for
    every task while the counters are open). `perf stat -p` would do the same, but perf 6.1
    (Debian 12) counts nothing when it attaches to a running process on this kernel.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fds: dict[str, list[int]] = {}
        why = self.why_not()
        if why:
            raise OSError(why)
        root = _tracefs()
        assert root is not None
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._nr = _PERF_EVENT_OPEN[platform.machine()]
        events = {"all": root / "events/raw_syscalls/sys_enter/id"}
        events |= {name: root / f"events/syscalls/sys_enter_{name}/id" for name in SYSCALL_BREAKDOWN}
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        try:
            for name, id_path in events.items():
                if not id_path.exists():
                    continue
                config = int(id_path.read_text())
                self.fds[name] = [self._open(config, tid) for tid in tids]
        except OSError:
            self.close()
            raise

    @staticmethod
    def why_not() -> str | None:
        """Why system calls cannot be counted here, or None."""
        if platform.machine() not in _PERF_EVENT_OPEN:
            return f"no perf_event_open number known for {platform.machine()}"
        if os.geteuid() != 0:
            return "needs root"
        if _tracefs() is None:
            return "no tracefs with raw_syscalls:sys_enter (CONFIG_FTRACE_SYSCALLS)"
        return None

    def _open(self, config: int, tid: int) -> int:
        attr = bytearray(_PERF_ATTR_SIZE)
        struct.pack_into("IIQ", attr, 0, _PERF_TYPE_TRACEPOINT, _PERF_ATTR_SIZE, config)
        struct.pack_into("Q", attr, 40, _INHERIT)  # the flags word: enabled, inherit
        buf = ctypes.create_string_buffer(bytes(attr), _PERF_ATTR_SIZE)
        fd = self._libc.syscall(self._nr, buf, tid, -1, -1, _PERF_FLAG_FD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"perf_event_open(tracepoint {config}, tid {tid}): {os.strerror(err)}")
        return int(fd)

    def read(self) -> dict[str, int]:
        """Calls so far: "all" and each name of the breakdown the kernel has."""
        return {name: sum(struct.unpack("Q", os.read(fd, 8))[0] for fd in fds) for name, fds in self.fds.items()}

    def close(self) -> None:
        for fds in self.fds.values():
            for fd in fds:
                os.close(fd)
        self.fds = {}
