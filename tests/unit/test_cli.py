import pytest

from gateway_pkg import cli


def must_not_run(config):
    raise AssertionError(f"the gateway started with {config}")


def run_main(capsys, env, argv=(), run=must_not_run):
    status = cli.main(list(argv), env, run=run)
    return status, capsys.readouterr()


def test_missing_token_exits_2_with_one_line(capsys, tmp_path):
    status, out = run_main(capsys, {"FIREZONE_ID_PATH": str(tmp_path / "x")})
    assert status == 2
    assert out.err.count("\n") == 1 and "FIREZONE_TOKEN" in out.err and "Traceback" not in out.err


def test_with_json_logs_the_error_line_is_json_too(capsys, tmp_path):
    import json

    status, out = run_main(capsys, {"FIREZONE_ID_PATH": str(tmp_path / "x"), "FIREZONE_LOG_FORMAT": "json"})
    assert status == 2 and out.err.count("\n") == 1
    doc = json.loads(out.err)
    assert doc["level"] == "ERROR" and doc["target"] == "firezone-gateway" and "FIREZONE_TOKEN" in doc["message"]


def test_positional_token_is_refused_without_echo(capsys):
    status, out = run_main(capsys, {"FIREZONE_ID": "x"}, ["super-secret-token"])
    assert status == 2
    assert "super-secret-token" not in out.err + out.out
    assert "not accepted on the command line" in out.err


def test_unknown_flag_is_config_error(capsys):
    status, out = run_main(capsys, {"FIREZONE_TOKEN": "t", "FIREZONE_ID": "x"}, ["--log-format", "xml"])
    assert status == 2 and out.err.startswith("firezone-gateway: ")


def test_flags_override_env(monkeypatch):
    env = cli.parse_environment(["-u", "https://flag.example", "--no-telemetry"],
                                {"FIREZONE_API_URL": "https://env.example"})
    assert env["FIREZONE_API_URL"] == "https://flag.example"
    assert env["FIREZONE_NO_TELEMETRY"] == "true"


def test_cap_net_admin_detection(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000001000\n")
    assert cli.has_cap_net_admin(str(status))
    status.write_text("Name:\tx\nCapEff:\t0000000000000400\n")
    assert not cli.has_cap_net_admin(str(status))


def test_missing_capability_is_runtime_failure_naming_cap(monkeypatch):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(cli, "has_cap_net_admin", lambda: False)
    with pytest.raises(cli.RuntimeFailure) as err:
        cli.check_permissions()
    assert err.value.exit_status == 1 and "CAP_NET_ADMIN" in str(err.value)


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as done:
        cli.build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert "firezone-gateway" in capsys.readouterr().out


@pytest.mark.parametrize(("env", "argv", "needle"), [
    ({}, ["--dns-max-ttl", "abc"], "FIREZONE_DNS_MAX_TTL"),
    ({}, ["--udp-port", "99999"], "FIREZONE_UDP_PORT"),
    ({"FZFF_GATEWAY_USERSPACE_DNS_A_AAAA_RECORDS": "maybe"}, [], "FZFF_GATEWAY_USERSPACE_DNS_A_AAAA_RECORDS"),
    ({"FIREZONE_FEATURE_FLAGS_URL": "ftp://x"}, [], "FIREZONE_FEATURE_FLAGS_URL"),
])
def test_data_plane_and_dns_mistakes_exit_2_before_anything_runs(capsys, env, argv, needle):
    status, out = run_main(capsys, {"FIREZONE_TOKEN": "t", "FIREZONE_ID": "x", **env}, argv)
    assert status == 2 and needle in out.err and out.err.count("\n") == 1


def test_a_valid_configuration_runs_and_exits_0(capsys):
    seen = []
    argv = ["--no-check", "--udp-port", "40000", "--dns-max-ttl", "60", "--userspace-dns", "true"]
    status, out = run_main(capsys, {"FIREZONE_TOKEN": "t", "FIREZONE_ID": "x"}, argv, run=seen.append)
    assert status == 0 and out.err == ""
    (config,) = seen
    assert config.dataplane.udp_port == 40000 and config.dns.max_ttl == 60
    assert config.flags.userspace_dns_override is True and config.no_check


def test_runtime_failure_while_running_exits_1_with_one_line(capsys):
    def fail(config):
        raise cli.RuntimeFailure("portal rejected the token")

    status, out = run_main(capsys, {"FIREZONE_TOKEN": "t", "FIREZONE_ID": "x", "FIREZONE_NO_CHECK": "1"}, run=fail)
    assert status == 1 and out.err == "firezone-gateway: portal rejected the token\n"


def test_a_bug_is_one_line_not_a_traceback(capsys):
    def crash(config):
        raise KeyError("oops")

    status, out = run_main(capsys, {"FIREZONE_TOKEN": "t", "FIREZONE_ID": "x", "FIREZONE_NO_CHECK": "1"}, run=crash)
    assert status == 1 and out.err.count("\n") == 1 and "internal error" in out.err and "Traceback" not in out.err


def test_help_lists_every_documented_setting_but_the_token(capsys):
    from gateway_pkg.settings import SETTINGS

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for setting in SETTINGS:
        if setting.flag and not setting.advanced:
            assert setting.flag in text and setting.env in text
    assert "--token" not in text.replace("--token-in-header", "")
