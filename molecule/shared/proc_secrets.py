#!/usr/bin/env python3
"""Is the gateway token in the environment or the argv of a unit's processes? Read from the host.

Inside the unprivileged test containers even root cannot read another user's
/proc/<pid>/environ (no CAP_SYS_PTRACE: "Permission denied"), so a check run in the container
sees nothing and passes whatever is there. This reads from the host instead: it maps the
container's processes to host PIDs (`podman top <container> pid hpid`), keeps those whose
cgroup is the unit's (every hierarchy's path ends in `/<unit>`), and reads
/proc/<host pid>/environ and /proc/<host pid>/cmdline on the host.

  proc_secrets.py --container C [--unit firezone-gateway.service] [--token-file PATH]
  proc_secrets.py --container C --self-test    # proves the reader can fail (see below)
  proc_secrets.py --pid PID [--pid PID ...] --token-env NAME    # processes of this host

The token comes from the container's token file (default /etc/firezone/gateway-token, read
with `podman exec cat`) or, with --token-env NAME, from this process's environment variable
NAME; never from the command line. It is never printed: a finding names the place (the
variable's name, the argument's index), not the value.

Exit status: 0 = every process of the unit was read and the token is in none of them;
1 = the token was found (each place printed); 2 = could not read: no such container, the unit
not running, no process of the unit, a PID without a host PID, /proc unreadable, an empty
environment (a zombie or a kernel thread), an empty token. A read failure is never "no token".

--self-test plants the container's token in two transient units as user firezone (one in an
environment variable, one as an argument), expects exit 1 naming each place, expects exit 2 for
a unit that does not run, stops the transient units, and exits 0 only if all of that held.

Python API (for other scans): `unit_processes(container, unit)`, `scan(processes, secret)`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

FOUND = 1
UNREADABLE = 2
SECRET_VARIABLE = b"FIREZONE_TOKEN"
MIN_SECRET = 8


class ReadFailure(Exception):
    """Something that must be read could not be: the check cannot conclude."""


@dataclass
class Process:
    label: str  # how a report names it: "pid 3016 (host 13174)"
    host_pid: int


@dataclass
class Reading:
    process: Process
    variables: list[str] = field(default_factory=list)  # names only
    argc: int = 0
    findings: list[str] = field(default_factory=list)


def run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ReadFailure(f"{' '.join(argv[:4])} ...: exit {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def read_proc(host_pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{host_pid}/{name}", "rb") as f:
            return f.read()
    except OSError as exc:
        raise ReadFailure(f"/proc/{host_pid}/{name}: {exc.strerror or exc}") from exc


def read_one(process: Process, secret: bytes) -> Reading:
    environ = read_proc(process.host_pid, "environ")
    cmdline = read_proc(process.host_pid, "cmdline")
    reading = Reading(process)
    entries = [e for e in environ.split(b"\0") if e]
    if not entries:
        raise ReadFailure(f"{process.label}: empty environment (a zombie or a kernel thread?): nothing was checked")
    if not cmdline:
        raise ReadFailure(f"{process.label}: empty argv (a zombie or a kernel thread?): nothing was checked")
    for entry in entries:
        name = entry.split(b"=", 1)[0]
        reading.variables.append(name.decode(errors="replace"))
        if name == SECRET_VARIABLE:
            reading.findings.append(f"environ: variable {SECRET_VARIABLE.decode()} is set")
        elif secret in entry:
            reading.findings.append(f"environ: variable {name.decode(errors='replace')} holds the token")
    args = cmdline.rstrip(b"\0").split(b"\0")
    reading.argc = len(args)
    hits = [str(i) for i, arg in enumerate(args) if secret in arg]
    if hits:
        reading.findings.append(f"cmdline: argument {', '.join(hits)} holds the token")
    elif secret in cmdline:
        reading.findings.append("cmdline: the token spans arguments")
    return reading


def scan(processes: list[Process], secret: bytes) -> list[Reading]:
    """Reads every process; raises ReadFailure when any of them cannot be read."""
    if len(secret) < MIN_SECRET:
        raise ReadFailure(f"the token to look for is empty or shorter than {MIN_SECRET} bytes: nothing to check")
    if not processes:
        raise ReadFailure("no process to read")
    return [read_one(p, secret) for p in processes]


def unit_processes(container: str, unit: str) -> list[Process]:
    """The host PIDs of every process in the unit's cgroup inside the container."""
    show = dict(line.split("=", 1) for line in run(
        ["podman", "exec", container, "systemctl", "show", "-p", "MainPID", "-p", "ActiveState", unit]).splitlines()
        if "=" in line)
    main_pid = int(show.get("MainPID") or 0)
    if main_pid <= 0:
        raise ReadFailure(f"{container}: {unit} has no main process (ActiveState={show.get('ActiveState')})")
    hpids: dict[int, int] = {}
    for line in run(["podman", "top", container, "pid", "hpid"]).splitlines()[1:]:
        cols = line.split()
        if len(cols) == 2 and cols[0].isdigit() and cols[1].isdigit():
            hpids[int(cols[0])] = int(cols[1])
    if main_pid not in hpids:
        raise ReadFailure(f"{container}: no host PID for {unit}'s main PID {main_pid} in `podman top`")
    suffix = "/" + unit
    processes = []
    for pid, hpid in sorted(hpids.items()):
        try:
            with open(f"/proc/{hpid}/cgroup") as f:
                paths = [line.rstrip("\n").split(":", 2)[-1] for line in f]
        except OSError:
            if pid == main_pid:
                raise ReadFailure(f"/proc/{hpid}/cgroup of {unit}'s main PID {main_pid} is unreadable") from None
            continue  # some other process that just exited
        if any(p.endswith(suffix) for p in paths):
            processes.append(Process(f"{container} {unit} pid {pid} (host {hpid})", hpid))
    if not any(p.host_pid == hpids[main_pid] for p in processes):
        raise ReadFailure(f"{container}: {unit}'s main PID {main_pid} (host {hpids[main_pid]}) is not in its cgroup")
    return processes


def container_token(container: str, path: str) -> bytes:
    return run(["podman", "exec", container, "cat", path]).strip().encode()


def report(readings: list[Reading]) -> int:
    found = 0
    for r in readings:
        if r.findings:
            found += 1
            for finding in r.findings:
                print(f"TOKEN FOUND: {r.process.label}: {finding}")
        else:
            print(f"{r.process.label}: read {len(r.variables)} environment variables "
                  f"({', '.join(r.variables)}) and {r.argc} arguments: no token")
    return FOUND if found else 0


def check(processes_of: Callable[[], list[Process]], secret: bytes) -> int:
    """0, FOUND or UNREADABLE, with the report printed."""
    try:
        return report(scan(processes_of(), secret))
    except ReadFailure as exc:
        print(f"CANNOT READ: {exc}", file=sys.stderr)
        return UNREADABLE


# --- self-test ------------------------------------------------------------------------------
PLANTS = {
    # unit: (the shell line run as root in the container, where the reader must find the token)
    "e2e-planted-env.service": (
        'E2E_PLANTED="$(cat "$1")" exec setpriv --reuid=firezone --regid=firezone --clear-groups sleep infinity',
        "environ: variable E2E_PLANTED"),
    "e2e-planted-argv.service": (
        'exec setpriv --reuid=firezone --regid=firezone --clear-groups '
        'python3 -c "import time; time.sleep(86400)" "$(cat "$1")"',
        "cmdline: argument"),
}
PLANTED_COMMANDS = (b"sleep", b"python3")


def wait_for_exec(container: str, unit: str, timeout: float = 15.0) -> None:
    """Polls until the planted unit's process runs its final program (no longer bash or setpriv)."""
    deadline = time.monotonic() + timeout
    last = "not started"
    while time.monotonic() < deadline:
        try:
            processes = unit_processes(container, unit)
            argv0 = read_proc(processes[0].host_pid, "cmdline").split(b"\0")[0]
            if os.path.basename(argv0) in PLANTED_COMMANDS:
                return
            last = f"still {argv0.decode(errors='replace')}"
        except ReadFailure as exc:
            last = str(exc)
        time.sleep(0.2)  # poll interval of the loop above, not a wait standing in for it
    raise ReadFailure(f"{container}: the planted {unit} never reached its final program ({last})")


def self_test(container: str, token_file: str) -> int:
    secret = container_token(container, token_file)
    failures = []
    try:
        for unit, (line, expected) in PLANTS.items():
            run(["podman", "exec", container, "systemd-run", "--quiet", f"--unit={unit}",
                 "--description=e2e: the token planted for proc_secrets.py --self-test",
                 "/bin/bash", "-c", line, "planted", token_file])
            wait_for_exec(container, unit)
            readings = scan(unit_processes(container, unit), secret)
            findings = [f for r in readings for f in r.findings]
            rc = report(readings)
            if rc != FOUND or not any(f.startswith(expected) for f in findings):
                failures.append(f"{unit}: expected a finding starting with {expected!r}, got exit {rc}: {findings}")
            else:
                print(f"self-test: planted in {unit}, reported ({expected}...): ok")
        rc = check(lambda: unit_processes(container, "e2e-not-running.service"), secret)
        if rc != UNREADABLE:
            failures.append(f"a unit that does not run: expected exit {UNREADABLE}, got {rc}")
        else:
            print(f"self-test: a unit that does not run is exit {UNREADABLE} (cannot read), not 'no token': ok")
    finally:
        subprocess.run(["podman", "exec", container, "systemctl", "stop", *PLANTS], capture_output=True, check=False)
    for failure in failures:
        print(f"SELF-TEST FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--container", help="a podman container running systemd")
    where.add_argument("--pid", type=int, action="append", help="a process of this host (repeatable)")
    parser.add_argument("--unit", default="firezone-gateway.service")
    parser.add_argument("--token-file", default="/etc/firezone/gateway-token", help="inside the container")
    parser.add_argument("--token-env", metavar="NAME", help="take the token from this environment variable")
    parser.add_argument("--self-test", action="store_true", help="plant the token and prove it is reported")
    args = parser.parse_args(argv)
    try:
        if args.token_env:
            secret = os.environ.get(args.token_env, "").encode()
        elif args.container:
            secret = container_token(args.container, args.token_file)
        else:
            parser.error("--pid needs --token-env")
        if args.self_test:
            if not args.container:
                parser.error("--self-test needs --container")
            return self_test(args.container, args.token_file)
    except ReadFailure as exc:
        print(f"CANNOT READ: {exc}", file=sys.stderr)
        return UNREADABLE
    if args.container:
        return check(lambda: unit_processes(args.container, args.unit), secret)
    return check(lambda: [Process(f"pid {pid}", pid) for pid in args.pid], secret)


if __name__ == "__main__":
    sys.exit(main())
