"""molecule/shared/proc_secrets.py, the Molecule secret reader, against processes this test starts.

It must report a token planted in a process's environment or argv (exit 1, naming the place,
never the value), pass a clean process (exit 0), and fail loudly (exit 2) when it cannot read:
a process that is gone, a zombie (empty environ), an empty token. The container side (podman
top, host PIDs, cgroups) is proven by `proc_secrets.py --self-test` in the default scenario.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SPEC = importlib.util.spec_from_file_location("proc_secrets", ROOT / "molecule/shared/proc_secrets.py")
assert SPEC and SPEC.loader
proc_secrets = importlib.util.module_from_spec(SPEC)
sys.modules["proc_secrets"] = proc_secrets
SPEC.loader.exec_module(proc_secrets)

TOKEN = "unit-test-token-4f1e9b7a2c"  # a throwaway value planted on purpose
WAIT = [sys.executable, "-c", "import sys; sys.stdin.read()"]


@pytest.fixture
def start(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Starts processes that wait on stdin; ends each by closing its stdin (and by its PID)."""
    monkeypatch.setenv("E2E_TOKEN_UNDER_TEST", TOKEN)
    started: list[subprocess.Popen] = []

    def _start(argv: list[str] = WAIT, **env: str) -> subprocess.Popen:
        clean = {k: v for k, v in os.environ.items() if k != "E2E_TOKEN_UNDER_TEST"}
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, env={**clean, **env})
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def reader(capsys: pytest.CaptureFixture, *pids: int) -> tuple[int, str]:
    argv = [a for pid in pids for a in ("--pid", str(pid))] + ["--token-env", "E2E_TOKEN_UNDER_TEST"]
    rc = proc_secrets.main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_token_in_the_environment_is_reported(start, capsys) -> None:
    proc = start(INNOCENT="x", SOME_SETTING=f"prefix-{TOKEN}-suffix")
    rc, out = reader(capsys, proc.pid)
    assert rc == proc_secrets.FOUND
    assert "TOKEN FOUND" in out and "environ: variable SOME_SETTING holds the token" in out
    assert TOKEN not in out


def test_firezone_token_variable_is_reported_whatever_its_value(start, capsys) -> None:
    proc = start(FIREZONE_TOKEN="something-else-entirely")
    rc, out = reader(capsys, proc.pid)
    assert rc == proc_secrets.FOUND
    assert "variable FIREZONE_TOKEN is set" in out


def test_token_in_argv_is_reported(start, capsys) -> None:
    proc = start([*WAIT, "--token", TOKEN], PATH=os.environ.get("PATH", ""))
    rc, out = reader(capsys, proc.pid)
    assert rc == proc_secrets.FOUND
    assert "cmdline: argument 4 holds the token" in out
    assert TOKEN not in out


def test_clean_process_passes_and_names_what_it_read(start, capsys) -> None:
    proc = start(PATH=os.environ.get("PATH", ""), FIREZONE_ID="abc")
    rc, out = reader(capsys, proc.pid)
    assert rc == 0, out
    assert "FIREZONE_ID" in out and "no token" in out


def test_one_dirty_process_among_clean_ones_fails(start, capsys) -> None:
    clean = start(PATH="/usr/bin")
    dirty = start(PLANTED=TOKEN)
    rc, out = reader(capsys, clean.pid, dirty.pid)
    assert rc == proc_secrets.FOUND
    assert f"pid {dirty.pid}: environ: variable PLANTED" in out


def test_a_process_that_is_gone_cannot_be_read(start, capsys) -> None:
    proc = start(PLANTED=TOKEN)
    proc.kill()
    proc.wait(timeout=10)
    rc, out = reader(capsys, proc.pid)
    assert rc == proc_secrets.UNREADABLE
    assert "CANNOT READ" in out


def test_a_zombie_cannot_be_read(start, capsys) -> None:
    proc = start(PLANTED=TOKEN)
    proc.kill()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    rc, out = reader(capsys, proc.pid)
    assert rc == proc_secrets.UNREADABLE  # the kernel answers ESRCH (or an empty environ)
    assert "CANNOT READ" in out


def test_an_unreadable_environ_is_a_failure_not_a_pass(start, capsys, monkeypatch) -> None:
    """What the old in-container check did with "Permission denied": here it is exit 2."""
    proc = start(PLANTED=TOKEN)
    real_open = open

    def denied(path, *args, **kwargs):
        if str(path).endswith("/environ"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    rc, out = reader(capsys, proc.pid)
    assert rc == proc_secrets.UNREADABLE
    assert "Permission denied" in out


def test_an_empty_token_cannot_be_looked_for(start, capsys, monkeypatch) -> None:
    proc = start(PLANTED=TOKEN)
    monkeypatch.setenv("E2E_TOKEN_UNDER_TEST", "")
    rc, out = reader(capsys, proc.pid)
    assert rc == proc_secrets.UNREADABLE
    assert "empty" in out
