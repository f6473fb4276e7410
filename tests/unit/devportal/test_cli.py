"""The dev portal's command line: relays, the TURN secret, one clear error line."""

from __future__ import annotations

import pytest

from gateway_pkg.devportal import cli

BASE = ["--gateway-token", "gw", "--admin-token", "admin"]


def run(capsys, argv):
    status = cli.main(argv)
    out = capsys.readouterr()
    return status, out.err


def secret_file(tmp_path, text="s3cret-for-turn\n"):
    path = tmp_path / "turn-secret"
    path.write_text(text)
    return str(path)


def test_relays_and_secret_reach_the_settings(tmp_path):
    options = cli.parse_options([*BASE, "--turn-secret-file", secret_file(tmp_path),
                                 "--relay", "198.18.9.1:3478,[fd00:9::1]:3478", "--relay", "198.18.9.2:3479",
                                 "--relay-ttl", "120"])
    settings = options.settings
    assert settings.turn_secret == "s3cret-for-turn" and settings.relay_ttl == 120
    assert settings.relays == [("198.18.9.1:3478", "[fd00:9::1]:3478"), ("198.18.9.2:3479",)]
    assert "s3cret" not in repr(settings)


def test_defaults_have_no_relays_and_90_days():
    settings = cli.parse_options(BASE).settings
    assert settings.relays == [] and settings.turn_secret is None and settings.relay_ttl == 90 * 24 * 3600


def test_secret_file_without_relays_is_fine(tmp_path):
    settings = cli.parse_options([*BASE, "--turn-secret-file", secret_file(tmp_path)]).settings
    assert settings.turn_secret == "s3cret-for-turn" and settings.relays == []


@pytest.mark.parametrize(("extra", "message"), [
    (["--relay", "198.18.9.1:3478"], "--relay needs --turn-secret-file"),
    (["--relay", "relay.test:3478", "--turn-secret-file", "SECRET"], "--relay: relay address needs an IP address"),
    (["--relay", "fd00::1:3478", "--turn-secret-file", "SECRET"], "[IPv6]:PORT"),
    (["--relay", "1.1.1.1:1,2.2.2.2:1", "--turn-secret-file", "SECRET"], "at most one IPv4 and one IPv6"),
    (["--turn-secret-file", "/nonexistent/turn-secret"], "cannot read --turn-secret-file"),
    (["--turn-secret-file", "EMPTY"], "must hold the secret on one line"),
    (["--relay-ttl", "0"], "--relay-ttl must be a positive"),
    (["--relay-ttl", "soon"], "--relay-ttl"),
])
def test_relay_mistakes_exit_2_with_one_line(capsys, tmp_path, extra, message):
    good, empty = secret_file(tmp_path), str(tmp_path / "empty")
    (tmp_path / "empty").write_text("\n")
    argv = [*BASE, *[good if a == "SECRET" else empty if a == "EMPTY" else a for a in extra]]
    status, err = run(capsys, argv)
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("firezone-dev-portal: ") and message in err, err
    assert "s3cret" not in err and "Traceback" not in err
