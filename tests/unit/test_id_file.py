"""The FIREZONE_ID file: read by the gateway, written once by `firezone-gateway-init --write-id`.

An empty or garbled file is never taken as an ID, and never replaced by a new one: both the
gateway (exit 2) and init (exit 1) refuse it with one line naming the file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway_pkg import config, hostsetup
from gateway_pkg.errors import ConfigError

GOOD = "6784996d3c8f460ead86da3fcbbbe88a"


@pytest.mark.parametrize(("data", "expected"), [
    (GOOD.encode() + b"\n", GOOD),
    (b"  " + GOOD.encode() + b"  \r\n", GOOD),
    (b'{"id": "4a8b7e3c-1f2d-4c5b-9a6e-0d1c2b3a4f5e"}', "4a8b7e3c-1f2d-4c5b-9a6e-0d1c2b3a4f5e"),  # upstream's form
    ("gateway-é".encode(), "gateway-é"),
])
def test_a_valid_id_file_is_read(data, expected):
    assert config.parse_id_file(data, "/x/gateway_id") == expected


@pytest.mark.parametrize(("data", "why"), [
    (b"", "is empty"),
    (b" \n\t\n", "is empty"),
    (b"\0" * 33, "garbled (control characters)"),  # blocks of NUL after a crash
    (b"6784996d\0\0\0\0", "garbled (control characters)"),
    (b"\xff\xfe6784", "garbled (not UTF-8"),
    (b"6784996d\n3c8f460e\n", "on a single line"),
    (b'{"id": "6784', 'JSON without an "id" string'),  # a JSON write cut short
    (b'{"name": "x"}', 'JSON without an "id" string'),
    (b'{"id": ""}', 'JSON without an "id" string'),
])
def test_an_empty_or_garbled_id_file_is_refused_with_the_path_and_a_fix(data, why):
    with pytest.raises(ConfigError) as err:
        config.parse_id_file(data, "/x/gateway_id")
    message = str(err.value)
    assert why in message and "/x/gateway_id" in message and "\n" not in message
    assert "or set FIREZONE_ID" in message  # what to do
    assert err.value.exit_status == 2


def test_the_gateway_refuses_an_empty_id_file_instead_of_asking_for_a_new_id(tmp_path):
    path = tmp_path / "gateway_id"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="is empty") as err:
        config.read_firezone_id(None, str(path))
    assert "/dev/urandom" not in str(err.value)  # not "generate one": the host had an ID
    assert path.read_bytes() == b""


def test_the_env_id_wins_over_a_garbled_file(tmp_path):
    path = tmp_path / "gateway_id"
    path.write_bytes(b"\0\0\0")
    assert config.read_firezone_id("from-env", str(path)) == "from-env"


def test_app_specific_id_is_systemds_derivation():
    # sd_id128_get_machine_app_specific: HMAC-SHA256(machine ID, app ID), v4 UUID bits.
    derived = hostsetup.app_specific_id("3d1219c7c4c5404aaa1f6d2a48adfda4")
    assert derived == "6784996d3c8f460ead86da3fcbbbe88a"
    assert derived[12] == "4" and derived[16] in "89ab"
    with pytest.raises(ValueError):
        hostsetup.app_specific_id("uninitialized")


@pytest.mark.skipif(shutil.which("systemd-id128") is None or not Path("/etc/machine-id").is_file(),
                    reason="systemd-id128 or /etc/machine-id is missing")
def test_app_specific_id_matches_systemd_id128_on_this_host():
    want = subprocess.run(["systemd-id128", f"--app-specific={hostsetup.ID_APP}", "machine-id"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert hostsetup.derive_gateway_id() == want


@pytest.mark.parametrize("content", ["", "uninitialized\n"])
def test_an_uninitialized_machine_id_is_a_clear_error(tmp_path, content):
    machine_id = tmp_path / "machine-id"
    machine_id.write_text(content)
    with pytest.raises(hostsetup.SetupError, match="holds no machine ID yet"):
        hostsetup.derive_gateway_id(str(machine_id))


def test_first_start_writes_the_id_once_and_never_rewrites_it(tmp_path):
    path = tmp_path / "firezone" / "gateway_id"
    assert hostsetup.ensure_gateway_id(path, lambda: GOOD, lambda: None) == (GOOD, True)
    assert path.read_text() == GOOD + "\n"
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.parent.stat().st_mode & 0o777 == 0o750
    before = path.stat()
    assert hostsetup.ensure_gateway_id(path, lambda: "another-id", lambda: None) == (GOOD, False)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in path.parent.iterdir()) == ["gateway_id"]  # no temporary file left


@pytest.mark.parametrize("data", [b"", b"\0" * 33, b"6784996d\n3c8f"])
def test_init_refuses_an_empty_or_garbled_file_and_leaves_it(tmp_path, data):
    path = tmp_path / "gateway_id"
    path.write_bytes(data)
    with pytest.raises(hostsetup.SetupError, match="left as it is") as err:
        hostsetup.ensure_gateway_id(path, lambda: pytest.fail("derived a new ID"), lambda: None)
    assert str(path) in str(err.value)
    assert path.read_bytes() == data


def test_a_file_written_meanwhile_is_kept(tmp_path):
    path = tmp_path / "gateway_id"

    def racing_derive() -> str:
        path.write_text("theirs\n")  # another writer wins between our read and our link
        return GOOD

    assert hostsetup.ensure_gateway_id(path, racing_derive, lambda: None) == ("theirs", False)
    assert path.read_text() == "theirs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway_id"]


def test_init_writes_nothing_when_firezone_id_is_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FIREZONE_ID", "from-env")
    monkeypatch.setattr(hostsetup, "apply_sysctls", lambda write: [])
    monkeypatch.setattr(hostsetup, "apply_rules", lambda egress: [])
    path = tmp_path / "gateway_id"
    assert hostsetup.main(["--write-id", "--id-path", str(path), "--egress-interface", "eth0"]) == 0
    assert not path.exists()
    assert capsys.readouterr().err == ""


def test_init_without_write_id_leaves_the_id_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("FIREZONE_ID", raising=False)
    monkeypatch.setattr(hostsetup, "apply_sysctls", lambda write: [])
    monkeypatch.setattr(hostsetup, "apply_rules", lambda egress: [])
    path = tmp_path / "gateway_id"
    assert hostsetup.main(["--id-path", str(path), "--egress-interface", "eth0"]) == 0
    assert not path.exists()


def test_init_reports_a_failed_write_in_one_line_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FIREZONE_ID", raising=False)
    monkeypatch.setattr(hostsetup, "apply_rules", lambda egress: pytest.fail("went on after the failure"))
    path = tmp_path / "missing-parent" / "firezone" / "gateway_id"
    assert hostsetup.main(["--write-id", "--id-path", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "(ENOENT)" in err
    assert not path.parent.exists()
    assert os.listdir(tmp_path) == []
