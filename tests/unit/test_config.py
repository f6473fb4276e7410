import hashlib

import pytest

from gateway_pkg import config
from gateway_pkg.errors import ConfigError

BASE = {"FIREZONE_TOKEN": "tok-123", "FIREZONE_ID": "gw-1"}


def load(**overrides):
    env = dict(BASE)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return config.load(env)


def test_defaults_match_upstream():
    cfg = load()
    assert cfg.portal.api_url == "wss://api.firezone.dev"
    assert str(cfg.health_check_addr) == "0.0.0.0:8080"
    assert cfg.log.level == "info" and cfg.log.format == "human"
    assert cfg.portal.portal_version == "1.4.17"
    assert cfg.portal.max_reconnect_elapsed == 900
    assert cfg.portal.heartbeat_interval == 30
    assert cfg.dataplane.udp_port == 52625 and cfg.dataplane.timers.rekey_after_time == 120


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://portal.example", "wss://portal.example"),
        ("http://127.0.0.1:8081", "ws://127.0.0.1:8081"),
        ("wss://portal.example/prefix/", "wss://portal.example/prefix/"),
        ("WS://[::1]:8081/x?y=1#z", "ws://[::1]:8081/x"),
    ],
)
def test_api_url_schemes_are_rewritten(raw, expected):
    assert load(FIREZONE_API_URL=raw).portal.api_url == expected


@pytest.mark.parametrize("raw", ["ftp://x", "portal.example", "wss://", "https://h:notaport", "wss://u:p@h"])
def test_bad_api_url_is_one_line_config_error(raw):
    with pytest.raises(ConfigError) as err:
        load(FIREZONE_API_URL=raw)
    assert err.value.exit_status == 2
    assert "FIREZONE_API_URL" in str(err.value) and "\n" not in str(err.value)


def test_invalid_scheme_message_names_the_scheme():
    with pytest.raises(ConfigError, match="invalid scheme `ftp`; only http"):
        load(FIREZONE_API_URL="ftp://x")


def test_missing_token_names_the_variable_and_the_credential():
    with pytest.raises(ConfigError) as err:
        load(FIREZONE_TOKEN=None)
    assert "FIREZONE_TOKEN" in str(err.value) and "LoadCredential" in str(err.value)


def test_token_from_systemd_credential_is_trimmed(tmp_path):
    (tmp_path / "FIREZONE_TOKEN").write_text("  cred-token \n")
    cfg = load(FIREZONE_TOKEN=None, CREDENTIALS_DIRECTORY=str(tmp_path))
    assert cfg.token.reveal() == "cred-token"


def test_env_token_wins_over_credential(tmp_path):
    (tmp_path / "FIREZONE_TOKEN").write_text("cred")
    assert load(CREDENTIALS_DIRECTORY=str(tmp_path)).token.reveal() == "tok-123"


def test_empty_credential_is_missing_token(tmp_path):
    (tmp_path / "FIREZONE_TOKEN").write_text("  \n")
    with pytest.raises(ConfigError, match="FIREZONE_TOKEN is required"):
        load(FIREZONE_TOKEN=None, CREDENTIALS_DIRECTORY=str(tmp_path))


def test_token_never_shows_in_repr():
    cfg = load()
    assert "tok-123" not in repr(cfg) and "tok-123" not in str(cfg.token)


def test_id_from_file_is_plain_text(tmp_path):
    path = tmp_path / "gateway_id"
    path.write_text("a" * 64 + "\n")
    assert load(FIREZONE_ID=None, FIREZONE_ID_PATH=str(path)).firezone_id == "a" * 64


def test_missing_id_says_how_to_generate(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(FIREZONE_ID=None, FIREZONE_ID_PATH=str(tmp_path / "absent"))
    assert err.value.exit_status == 2
    assert "/dev/urandom" in str(err.value)


def test_empty_id_is_an_error():
    with pytest.raises(ConfigError, match="FIREZONE_ID is empty"):
        load(FIREZONE_ID="  ")


def test_external_id_hashes_uuids_only():
    uid = "4a8b7e3c-1f2d-4c5b-9a6e-0d1c2b3a4f5e"
    assert config.external_id_for(uid) == hashlib.sha256(uid.encode()).hexdigest()
    assert config.external_id_for("f" * 64) == "f" * 64
    assert config.external_id_for("my-gateway") == "my-gateway"


@pytest.mark.parametrize("raw", ["localhost:8080", "1.2.3.4", "1.2.3.4:99999", ":80", "1.2.3.4:x"])
def test_bad_health_address(raw):
    with pytest.raises(ConfigError, match="HEALTH_CHECK_ADDR"):
        load(HEALTH_CHECK_ADDR=raw)


def test_ipv6_health_address():
    addr = load(HEALTH_CHECK_ADDR="[::1]:9000").health_check_addr
    assert (addr.host, addr.port) == ("::1", 9000)


@pytest.mark.parametrize(("raw", "level"), [("info", "info"), ("DEBUG", "debug"), ("gateway=trace,warn", "warn"),
                                            ("", "info"), ("warning", "warn")])
def test_rust_log_compatibility(raw, level):
    assert load(RUST_LOG=raw).log.level == level


def test_bad_rust_log_and_format():
    with pytest.raises(ConfigError, match="RUST_LOG"):
        load(RUST_LOG="loud")
    with pytest.raises(ConfigError, match="FIREZONE_LOG_FORMAT"):
        load(FIREZONE_LOG_FORMAT="xml")


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("true", True), ("yes", True), ("0", False),
                                            ("false", False), ("off", False), ("", False)])
def test_boolean_env_follows_clap_falsey_rules(raw, value):
    assert load(FIREZONE_NO_TELEMETRY=raw).flags.no_telemetry is value


def test_portal_version_must_be_semver():
    with pytest.raises(ConfigError, match="FIREZONE_PORTAL_VERSION"):
        load(FIREZONE_PORTAL_VERSION="latest")


def test_rekey_knob_shortens_both_rekey_and_reject_times():
    timers = load(FIREZONE_WG_REKEY_AFTER_TIME="3").dataplane.timers
    assert (timers.rekey_after_time, timers.reject_after_time) == (3, 6)


@pytest.mark.parametrize("key", ["FIREZONE_WG_REKEY_AFTER_TIME", "FIREZONE_HEARTBEAT_INTERVAL",
                                 "FIREZONE_MAX_RECONNECT_SECONDS", "FIREZONE_FEATURE_FLAGS_INTERVAL"])
def test_positive_seconds_reject_zero_and_words(key):
    for raw in ("0", "-1", "soon", "nan"):
        with pytest.raises(ConfigError, match=key):
            load(**{key: raw})
