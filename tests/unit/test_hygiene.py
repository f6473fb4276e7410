"""The log gate the integration tests and the container scenarios share."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import hygiene

HUMAN = """2026-01-01T00:00:00.000Z  INFO gateway_pkg.app: started
2026-01-01T00:00:01.000Z  WARN gateway_pkg.tunnel.udp: UDP port 52625 is taken for IPv4
2026-01-01T00:00:02.000Z ERROR gateway_pkg.portal: portal refused the token
a continuation line that says WARN in the middle
"""


def test_warn_and_error_lines_of_both_formats_are_found() -> None:
    assert [line.split()[1] for line in hygiene.problem_lines(HUMAN)] == ["WARN", "ERROR"]
    json_lines = "\n".join(json.dumps({"level": level, "message": level.lower()}) for level in ("INFO", "WARN"))
    assert hygiene.problem_lines(json_lines + "\n{not json\n") == [json.dumps({"level": "WARN", "message": "warn"})]


def test_only_announced_lines_are_allowed_and_a_traceback_never_is() -> None:
    gate = hygiene.LogGate()
    assert len(gate.unexpected(HUMAN)) == 2
    gate.allow(r"UDP port \d+ is taken")
    assert [line.split()[1] for line in gate.unexpected(HUMAN)] == ["ERROR"]
    gate.allow("Traceback", ".*")
    assert gate.unexpected("Traceback (most recent call last):\n") == ["Traceback (most recent call last):"]


def test_the_script_form_fails_on_an_unexpected_line(tmp_path: Path) -> None:
    journal = tmp_path / "journal.txt"
    journal.write_text(HUMAN)
    script = Path(hygiene.__file__)
    run = [sys.executable, str(script), "logs", str(journal)]
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and done.stdout.count("unexpected:") == 2
    done = subprocess.run([*run, "UDP port", "refused the token"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


def test_udp_error_deltas_sum_both_families() -> None:
    before = {"UdpRcvbufErrors": 1, "Udp6RcvbufErrors": 0, "UdpInErrors": 1}
    after = {"UdpRcvbufErrors": 3, "Udp6RcvbufErrors": 2, "UdpInErrors": 5}
    assert hygiene.udp_errors(before, after) == {"InErrors": 4, "RcvbufErrors": 4, "SndbufErrors": 0}
