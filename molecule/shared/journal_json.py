#!/usr/bin/env python3
"""With FIREZONE_LOG_FORMAT=json under systemd, does every line the gateway logged parse as JSON?

  journal_json.py --container C [--unit firezone-gateway.service] [--min-lines 5]

Reads, in the container, `journalctl -u <unit> -o json` and keeps the entries of the unit's
current run (its InvocationID). Each entry's MESSAGE is the line `journalctl -u <unit> -o cat`
prints. Every line the gateway process (the unit's main PID, on its stdout/stderr) wrote since
it started must be one JSON object with the keys of gateway_pkg/logs.py's JsonFormatter:
`timestamp` (UTC, `YYYY-MM-DDTHH:MM:SS.mmmZ`), `level` (DEBUG, INFO, WARN, ERROR), `target`,
`message` (strings; the event's further fields are strings, numbers, booleans or null, never
nested). There must be at least --min-lines of
them, the first being the start line (`... started logging`), so an empty or rotated journal
fails. The other lines of the unit's journal are listed, not judged: systemd's own notes about
the unit (PID 1 and the exec setup, which a shipper filtering on `_TRANSPORT=stdout` drops)
and what other processes of the unit printed (ExecStartPre's firezone-gateway-init).

Exit status: 0 = all of that held; 1 = it did not (each bad line printed); 2 = could not read.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from typing import Any

LEVELS = {"DEBUG", "INFO", "WARN", "ERROR"}
KEYS = ("timestamp", "level", "target", "message")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def podman_exec(container: str, *argv: str) -> str:
    done = subprocess.run(["podman", "exec", container, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"CANNOT READ: {' '.join(argv[:3])} in {container}: exit {done.returncode}: {done.stderr.strip()}",
              file=sys.stderr)
        sys.exit(2)
    return done.stdout


def message(entry: dict[str, Any]) -> str:
    value = entry.get("MESSAGE", "")
    if isinstance(value, list):  # journald's form of a MESSAGE that is not valid UTF-8
        return bytes(value).decode(errors="replace")
    return str(value)


def problem(line: str) -> str | None:
    """Why the line is not a gateway JSON log line, or None."""
    try:
        doc = json.loads(line)
    except ValueError as exc:
        return f"not JSON ({exc})"
    if not isinstance(doc, dict):
        return f"JSON but not an object ({type(doc).__name__})"
    missing = [k for k in KEYS if k not in doc]
    if missing:
        return f"missing {', '.join(missing)}"
    not_str = [k for k in KEYS if not isinstance(doc[k], str)]
    if not_str:
        return f"not strings: {', '.join(not_str)}"
    nested = [k for k, v in doc.items() if not (v is None or isinstance(v, str | int | float))]
    if nested:
        return f"fields that are not a string, number, boolean or null: {', '.join(nested)}"
    if not STAMP.match(doc["timestamp"]):
        return f"timestamp {doc['timestamp']!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    if doc["level"] not in LEVELS:
        return f"level {doc['level']!r} is not one of {sorted(LEVELS)}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--container", required=True)
    parser.add_argument("--unit", default="firezone-gateway.service")
    parser.add_argument("--min-lines", type=int, default=5)
    args = parser.parse_args()
    c, unit = args.container, args.unit

    show = dict(line.split("=", 1) for line in podman_exec(
        c, "systemctl", "show", "-p", "MainPID", "-p", "InvocationID", "-p", "ActiveState", unit).splitlines()
        if "=" in line)
    main_pid, invocation = show.get("MainPID", "0"), show.get("InvocationID", "")
    if main_pid in ("", "0") or not invocation:
        print(f"CANNOT READ: {c}: {unit} is not running ({show})", file=sys.stderr)
        return 2
    entries = [json.loads(line) for line in podman_exec(
        c, "journalctl", "--no-pager", "-o", "json", "-u", unit).splitlines() if line.strip()]
    run = [e for e in entries if invocation in (e.get("_SYSTEMD_INVOCATION_ID"), e.get("INVOCATION_ID"))]

    gateway, others, bad = [], [], []
    for e in run:
        line = message(e)
        if e.get("_PID") == main_pid and e.get("_TRANSPORT") == "stdout":
            gateway.append(line)
            why = problem(line)
            if why:
                bad.append(f"{why}: {line[:200]}")
        else:
            source = "systemd" if e.get("_PID") == "1" or e.get("_TRANSPORT") == "journal" else \
                f"pid {e.get('_PID')} ({e.get('_COMM', '?')})"
            others.append(f"{source}: {line[:120]}")

    print(f"{c} {unit}: run {invocation[:12]}, main PID {main_pid}: {len(gateway)} gateway lines, "
          f"{len(bad)} not valid; {len(others)} other lines of the unit's journal (not judged)")
    for line in others:
        print(f"  other: {line}")
    failed = False
    for line in bad:
        print(f"BAD LINE: {line}")
        failed = True
    if len(gateway) < args.min_lines:
        print(f"FAILED: only {len(gateway)} lines from the gateway (at least {args.min_lines} expected)")
        failed = True
    elif problem(gateway[0]) is None and "started logging" not in json.loads(gateway[0])["message"]:
        print(f"FAILED: the first gateway line is not its start line (journal rotated?): {gateway[0][:200]}")
        failed = True
    if not failed:
        levels = sorted({json.loads(line)["level"] for line in gateway})
        print(f"every gateway line since its start is a JSON object with {', '.join(KEYS)} (levels seen: "
              f"{', '.join(levels)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
