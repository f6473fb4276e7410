"""tools/gen_role_validation.py: the role's preflight rules come from the gateway's settings table."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_pkg import settings as table
from gateway_pkg.settings import Kind, Setting

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("gen_role_validation", REPO / "tools" / "gen_role_validation.py")
assert _spec is not None and _spec.loader is not None
gen = importlib.util.module_from_spec(_spec)
sys.modules["gen_role_validation"] = gen
_spec.loader.exec_module(gen)

# The rules as the tool makes them from the live table (the file's currency is tested apart).
RULES = yaml.safe_load(gen.render(gen.build(table)[0]))


def test_the_rules_file_is_current() -> None:
    assert gen.check(REPO) == []
    assert gen.main(["--check"]) == 0


def test_the_table_makes_no_problems() -> None:
    assert gen.build(table)[1] == []


def test_every_setting_but_the_token_has_a_rule() -> None:
    rules = RULES["__firezone_gateway_settings_rules"]
    assert set(rules) == {s.env for s in table.SETTINGS} - {"FIREZONE_TOKEN"}
    owned = RULES["__firezone_gateway_settings_owned"]
    assert owned["RUST_LOG"] == "firezone_gateway_log_level"
    assert owned["FZFF_GATEWAY_USERSPACE_DNS_A_AAAA_RECORDS"] == "firezone_gateway_feature_flags"
    assert {"var": "firezone_gateway_api_url", "env": "FIREZONE_API_URL"} in RULES["__firezone_gateway_settings_vars"]
    assert RULES["__firezone_gateway_feature_flag_names"] == ["gateway_userspace_dns_a_aaaa_records"]


# Characters and pieces the parsers care about, so random values hit the interesting cases.
_PIECES = st.sampled_from([*"0123456789abcdefABCDEF:.[]%/@?#,=+-_ \t", "ws://", "wss://", "http://", "https://",
                           "::", "1.2.3.4", "info", "warning", "off", "human", "json", "true", "false", "e", "inf",
                           "65535", "65536", "eth0", "é", "\x0b", "\xa0", "\n"])


@pytest.mark.parametrize("env", sorted(RULES["__firezone_gateway_settings_rules"]))
@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(_PIECES, max_size=10))
def test_a_rule_never_accepts_what_the_gateway_refuses(env: str, pieces: list[str]) -> None:
    value = "".join(pieces)
    rule = RULES["__firezone_gateway_settings_rules"][env]
    if re.match(rule["pattern"], value):
        table.BY_ENV[env].parse(value)  # raises ConfigError if the gateway refuses it
        assert "\n" not in value and "\r" not in value


@pytest.mark.parametrize(("env", "value"), [
    ("RUST_LOG", "info,gateway_pkg.portal=debug"), ("RUST_LOG", "WARNING"), ("FIREZONE_API_URL", "ws://[::1]:8081/x"),
    ("HEALTH_CHECK_ADDR", "[fe80::1%eth0]:8080"), ("FIREZONE_DNS_NAMESERVERS", "192.0.2.1, [2001:db8::1]:5353"),
    ("FIREZONE_UDP_PORT", "00080"), ("FIREZONE_DNS_MIN_TTL", "+0.5"), ("FIREZONE_WG_REKEY_AFTER_TIME", ""),
])
def test_values_the_gateway_accepts_pass(env: str, value: str) -> None:
    table.BY_ENV[env].parse(value)
    assert re.match(RULES["__firezone_gateway_settings_rules"][env]["pattern"], value)


def test_every_port_agrees_with_the_parser() -> None:
    pattern = re.compile(RULES["__firezone_gateway_settings_rules"]["FIREZONE_UDP_PORT"]["pattern"])
    assert [n for n in range(70000) if (pattern.match(str(n)) is not None) != (n <= 65535)] == []


def _fake_table(*rows: Setting) -> SimpleNamespace:
    return SimpleNamespace(SETTINGS=rows, LOG_LEVELS=table.LOG_LEVELS)


def test_a_kind_without_a_rule_is_an_error() -> None:
    def parse_color(raw: str) -> str:
        return raw

    row = Setting("FIREZONE_COLOR", "color", Kind("color", parse_color), "blue", "A color.")
    _, problems = gen.build(_fake_table(row))
    assert problems == ["gateway_pkg/settings.py: FIREZONE_COLOR has kind 'color' (parser "
                        "test_a_kind_without_a_rule_is_an_error.<locals>.parse_color), which "
                        "tools/gen_role_validation.py has no rule for: add one there"]


def test_a_parser_that_changes_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The gateway starts refusing port 0: the rule, unchanged, now accepts what it refuses.
    def strict_port(raw: str) -> int:
        return table.port_number(raw, minimum=1)

    monkeypatch.setattr(strict_port, "__qualname__", "port_number")
    row = Setting("FIREZONE_UDP_PORT", "dataplane.udp_port", Kind("port", strict_port), "52625", "Port.")
    _, problems = gen.build(_fake_table(row))
    assert "FIREZONE_UDP_PORT: the rule accepts '0', which the gateway refuses" in problems


def test_a_stricter_case_must_stay_true(monkeypatch: pytest.MonkeyPatch) -> None:
    rule = gen.Rule("text", r"[a-z]*", "must be lower case", stricter=(("ABC", "lower case only"),
                                                                      ("1e3", "claimed, but the gateway refuses it")))
    row = Setting("FIREZONE_LOWER", "lower", Kind("lower", lambda raw: raw if not raw.startswith("1") else 1 / 0),
                  "", "Lower.")
    compiled = re.compile(gen.pattern(row, rule))
    problems = gen.disagreements(row, rule, compiled)
    assert "FIREZONE_LOWER: the gateway refuses '1e3'; drop it from the rule's stricter cases" in problems
    assert not any("'ABC'" in p for p in problems)


def test_the_template_must_write_what_the_map_says() -> None:
    by_env = {s.env: s for s in table.SETTINGS}
    defaults = yaml.safe_load((REPO / gen.DEFAULTS).read_text())
    template = (REPO / gen.TEMPLATE).read_text()
    assert gen.check_template(template, by_env, defaults) == []
    bad = template.replace("{{ env('RUST_LOG', firezone_gateway_log_level) }}",
                           "{{ env('RUST_LOG', firezone_gateway_log_level) }}\n{{ env('FIREZONE_COLOUR', 'red') }}")
    assert gen.check_template(bad, by_env, defaults) == [
        f"{gen.TEMPLATE}: writes FIREZONE_COLOUR, which the gateway does not read (gateway_pkg/settings.py)"]


def test_check_and_write_a_stale_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for rel in ("gateway_pkg/settings.py", gen.DEFAULTS, gen.TEMPLATE, gen.TARGET):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    target = tmp_path / gen.TARGET
    target.write_text(target.read_text().replace("must be a port number 0-65535", "must be a port"))
    assert gen.main(["--check", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == [f"{gen.TARGET} is out of date: run tools/gen_role_validation.py"]
    assert gen.main(["--root", str(tmp_path)]) == 0
    assert target.read_text() == gen.generate(REPO)[0]
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0


def test_long_values_stay_within_the_line_length() -> None:
    assert max(len(line) for line in gen.generate(REPO)[0].splitlines()) <= 120
