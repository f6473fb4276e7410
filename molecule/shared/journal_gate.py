#!/usr/bin/env python3
"""The hygiene gate of a container scenario, for one gateway container, read out to the controller.

  journal_gate.py --container C --out DIR [--allow PATTERN ...] [--no-metrics]

1. `journalctl -u firezone-gateway.service -o cat` of the container (its whole life: the
   containers are created for the scenario, so that is the run since the converge) is written
   to DIR/C.journal, and `/metrics` (the role's health address, 127.0.0.1:8080) scraped to
   DIR/C.metrics, unless --no-metrics (a scenario that removed the gateway);
2. neither holds a token: the container's token file (/etc/firezone/gateway-token, when it is
   still there) and every token of E2E_GATEWAY_TOKENS (newline-separated, from the inventory,
   so a rotated-away or uninstalled token counts too). A finding names the file, never the value;
3. tests/hygiene.py, run as a script with this Python (the venv's), finds no WARN or ERROR
   line (human or JSON format) that no --allow pattern (a regular expression, searched)
   matches, and no traceback. The scenario allows exactly what it provokes.

Prints how many lines, which WARN/ERROR lines were allowed by which pattern, and every
unexpected one. Exit status 0 = clean, 1 = an unexpected line or a token found, 2 = could not
read (no journal, an unreadable /metrics, no token to look for).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
HYGIENE = ROOT / "tests" / "hygiene.py"
UNIT = "firezone-gateway.service"
TOKEN_FILE = "/etc/firezone/gateway-token"  # noqa: S105 - a path, not a token
METRICS = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
           "'http://127.0.0.1:8080/metrics', timeout=5).read().decode())")
MIN_TOKEN = 8


def podman_exec(container: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", "exec", container, *argv], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        print(f"CANNOT READ: {argv[0]} in {container}: exit {done.returncode}: {done.stderr.strip()[:300]}")
        sys.exit(2)
    return done


def hygiene(path: Path, patterns: list[str]) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, str(HYGIENE), "logs", str(path), *patterns], capture_output=True,
                          text=True, check=False)
    if done.returncode not in (0, 1):
        print(f"CANNOT READ: hygiene.py exit {done.returncode}: {done.stderr.strip()[:300]}")
        sys.exit(2)
    return done.returncode, [line.removeprefix("unexpected: ") for line in done.stdout.splitlines()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--container", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--allow", action="append", default=[], help="an expected WARN/ERROR line (regex)")
    parser.add_argument("--no-metrics", action="store_true", help="the gateway no longer runs: journal only")
    args = parser.parse_args()
    c = args.container
    args.out.mkdir(mode=0o700, parents=True, exist_ok=True)

    journal = podman_exec(c, "journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout
    if not journal.strip():
        print(f"CANNOT READ: the journal of {UNIT} in {c} is empty")
        return 2
    files = {"journal": args.out / f"{c}.journal"}
    files["journal"].write_text(journal)
    if not args.no_metrics:
        files["metrics"] = args.out / f"{c}.metrics"
        files["metrics"].write_text(podman_exec(c, "python3", "-c", METRICS).stdout)

    tokens = [t.strip() for t in os.environ.get("E2E_GATEWAY_TOKENS", "").splitlines() if t.strip()]
    held = podman_exec(c, "cat", TOKEN_FILE, check=False)
    if held.returncode == 0 and held.stdout.strip():
        tokens.append(held.stdout.strip())
    if not tokens or any(len(t) < MIN_TOKEN for t in tokens):
        print(f"CANNOT READ: no token (or one shorter than {MIN_TOKEN}) to look for")
        return 2
    found = [f"{kind} ({path})" for kind, path in files.items() if any(t in path.read_text() for t in tokens)]

    lines = journal.count("\n")
    _, problems = hygiene(files["journal"], [])
    rc, unexpected = hygiene(files["journal"], args.allow)
    print(f"{c}: {lines} journal lines, {len(problems)} WARN/ERROR, {len(problems) - len(unexpected)} allowed, "
          f"{len(unexpected)} unexpected; {len(set(tokens))} token(s) looked for in "
          f"{' and '.join(str(p) for p in files.values())}: {'FOUND in ' + ', '.join(found) if found else 'absent'}")
    for pattern in args.allow:
        hits = [line for line in problems if re.search(pattern, line)]
        print(f"  allowed {pattern!r}: {len(hits)} line(s)" + (f", e.g. {hits[0][:220]}" if hits else ""))
    for line in unexpected:
        print(f"  UNEXPECTED: {line[:400]}")
    return 1 if found or rc != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
