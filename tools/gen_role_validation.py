#!/usr/bin/env python3
"""Generate the role's preflight rules for the gateway's settings from gateway_pkg/settings.py.

Writes roles/firezone_gateway/vars/settings_rules.yml: for every setting of the table but the
token, a regular expression and the sentence preflight prints when a value breaks it; the role
variables that templates/gateway-env.j2 writes, with the variable each becomes; the names the
role writes itself (refused in firezone_gateway_extra_env); the feature flag names.

The rules are derived from each setting's kind (its parser); a kind this tool has no rule for
is an error, so a new kind cannot slip past preflight. --check (run by tools/check_facts.py,
i.e. `make lint`) writes nothing and exits 1 when
- the file differs from what this tool writes;
- a rule accepts a sample value the gateway's own parser refuses, or refuses one it accepts
  (except the documented cases where the role is stricter, e.g. line breaks: the env file has
  one line per variable; those are checked too, so the list cannot go stale);
- templates/gateway-env.j2 writes a name the gateway does not read, or not the role variable
  this tool maps it to.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_PY = "gateway_pkg/settings.py"
ROLE = "roles/firezone_gateway"
TARGET = f"{ROLE}/vars/settings_rules.yml"
TEMPLATE = f"{ROLE}/templates/gateway-env.j2"
DEFAULTS = f"{ROLE}/defaults/main.yml"
TOKEN = "FIREZONE_TOKEN"  # noqa: S105 - the name of the setting, not a token
FLAG_PREFIX = "FZFF_"
FLAGS_VARIABLE = "firezone_gateway_feature_flags"

# What templates/gateway-env.j2 writes: env name -> (role variable, the expression the
# template passes). Where the expression is the variable itself its value is checked against
# the rule; FIREZONE_ID is checked too (the effective ID is the variable when it is set).
ROLE_VARIABLES: dict[str, tuple[str, str]] = {
    "FIREZONE_ID": ("firezone_gateway_id", "firezone_gateway_effective_id"),
    "FIREZONE_NAME": ("firezone_gateway_name", "firezone_gateway_name"),
    "FIREZONE_API_URL": ("firezone_gateway_api_url", "firezone_gateway_api_url"),
    "RUST_LOG": ("firezone_gateway_log_level", "firezone_gateway_log_level"),
    "FIREZONE_LOG_FORMAT": ("firezone_gateway_log_format", "firezone_gateway_log_format"),
    "HEALTH_CHECK_ADDR": ("firezone_gateway_health_check_addr", "firezone_gateway_health_check_addr"),
    "FIREZONE_NO_TELEMETRY": ("firezone_gateway_no_telemetry", "'true'"),
    "FIREZONE_FLOW_LOGS": ("firezone_gateway_flow_logs", "'true'"),
    "FIREZONE_METRICS_PER_CLIENT": ("firezone_gateway_metrics_per_client", "'true'"),
    "FIREZONE_FEATURE_FLAGS_URL": ("firezone_gateway_feature_flags_url", "firezone_gateway_feature_flags_url"),
    "FIREZONE_FEATURE_FLAGS_INTERVAL": ("firezone_gateway_feature_flags_interval",
                                        "firezone_gateway_feature_flags_interval"),
}
VALUE_CHECKED_INDIRECT = {"FIREZONE_ID"}

# --- regular expression pieces ------------------------------------------------------------
# Every rule is anchored (^...\Z) and line breaks never match: the env file holds one line
# per variable. `\s` without \r and \n stands for the whitespace Python's str.strip() removes.
WS = r"[^\S\r\n]"
ANY = r"[^\r\n]"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9][0-9]|[0-9])"
IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_H = r"[0-9A-Fa-f]{1,4}"


def _ipv6() -> str:
    """Every textual IPv6 form Python's ipaddress accepts: 8 hextets, or 6 and an IPv4 tail,
    with at most one `::` standing for one or more zero hextets."""
    full: list[str] = [rf"(?:{_H}:){{7}}{_H}"]
    tail: list[str] = [rf"(?:{_H}:){{6}}"]  # each followed by the IPv4 address
    for hextets, alternatives, ends_with_v4 in ((8, full, False), (6, tail, True)):
        for left in range(hextets):  # hextets left of `::`; right ones: 0 .. hextets-1-left
            head = {0: "::", 1: rf"{_H}::"}.get(left, rf"{_H}(?::{_H}){{{left - 1}}}::")
            room = hextets - 1 - left
            if ends_with_v4:
                alternatives.append(head + (rf"(?:{_H}:){{0,{room}}}" if room else ""))
            else:
                more = rf"(?::{_H}){{0,{room - 1}}}" if room > 1 else ""
                alternatives.append(head + (rf"(?:{_H}{more})?" if room else ""))
    return rf"(?:{'|'.join(full)}|(?:{'|'.join(tail)}){IPV4})"


# A zone (`%eth0`): the role allows the characters of interface names.
IPV6 = rf"{_ipv6()}(?:%[0-9A-Za-z_.\-]+)?"
IP = rf"(?:{IPV4}|{IPV6})"
# 0..65535 and 1..65535, leading zeros allowed (the parser reads digits with int()).
_UPTO_65535 = r"6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}"
PORT0 = rf"0*(?:{_UPTO_65535}|0)"
PORT1 = rf"0*(?:{_UPTO_65535})"
# A URL's host name: RFC 3986 reg-name characters (unreserved, pct-encoded, sub-delims).
_REG_NAME = r"[A-Za-z0-9\-._~%!$&'()*+,;=]+"
_DECIMAL = r"\+?(?:[0-9]{1,15}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})"


def ci(word: str) -> str:
    """`word` in any ASCII case, without a case-insensitive flag (str.lower() is ASCII here)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def _either(words: Iterable[str]) -> str:
    return "(?:" + "|".join(ci(w) for w in words) + ")"


def _one_of(words: Iterable[str]) -> str:
    words = list(words)
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]


@dataclass(frozen=True)
class Rule:
    """What preflight checks a raw value against: a pattern body (unanchored) and a sentence
    completing "<ENV NAME> ...". `stricter`: values the gateway accepts and the role refuses,
    with the reason (checked against the parser, so the list stays true)."""

    rule_id: str
    body: str
    text: str
    samples: tuple[str, ...] = ()
    stricter: tuple[tuple[str, str], ...] = ()


_SECONDS_SAMPLES = ("0", "0.0", "1", "30", "0.5", ".5", "5.", "+3", "300", "86400", "-1", "-0.5", "abc", "1,5",
                    "inf", "nan", "-inf", "1e400", "", " 7 ", "00", "0.000", "12345678901234")
_SECONDS_STRICTER = (("1e3", "no exponents"), ("1_000", "no digit separators"),
                     ("1234567890123456", "at most 15 digits before the point"),
                     ("0.1234567891", "at most 9 digits after the point"))


def rule_for(settings: ModuleType, setting: Any) -> Rule:
    """The rule of a setting's kind; LookupError names the kind when there is none."""
    kind = setting.kind
    parse: Callable[[str], Any] = kind.parse
    name = getattr(parse, "__qualname__", repr(parse))
    closure = inspect.getclosurevars(parse).nonlocals if inspect.isfunction(parse) else {}
    levels = tuple(settings.LOG_LEVELS)
    if name == "_text":
        return Rule("text", rf"{ANY}*", "must be text on one line",
                    samples=("x", "a b", "/etc/hosts", "0", "false", "yes", "ünïcode"))
    if name == "env_flag":
        return Rule("boolean", rf"{ANY}*",
                    "must be one line: empty, 0, n, no, f, false or off (any case) mean false, anything else true",
                    samples=("true", "1", "yes", "no", "off", "OFF", "anything"))
    if name == "normalize_api_url":
        body = (rf"(?:{ci('https')}|{ci('http')}|{ci('wss')}|{ci('ws')})://"
                rf"(?:\[{IPV6}\]|{_REG_NAME})(?::(?:{PORT0})?)?(?:[/?#]{ANY}*)?")
        return Rule("url", body,
                    "must be an http://, https://, ws:// or wss:// URL with a host name (an IPv6 address "
                    "in brackets), an optional port 0-65535 and no user name or password",
                    samples=("wss://api.firezone.dev", "ws://10.89.61.10:8081", "WS://H:0080/x?y#z", "https://h/p",
                             "ws://[::1]:8081", "ws://[fe80::1%25eth0]/", "ws://h:", "ws://h:65535", "ws://h:65536",
                             "ws://h:-1", "ws://h:x", "ws://h:1:2", "ftp://h", "wss://", "ws:///p", "ws:h",
                             "//h", "h", "ws://user:pw@h", "ws://u@h", "ws://[1.2.3.4]/", "ws://[::1", "ws://::1]",
                             "ws://[zz]/", "http://a_b.example", "ws://h/a b"),
                    stricter=(("ws://ho st", "host names are RFC 3986 names, no spaces"),
                              ("ws://@h", "no `@` at all in the host part"),
                              ("ws://[::1]80", "nothing between `]` and the port"),
                              ("wss://bücher.example", "ASCII host names (use the xn-- form)")))
    if name == "_http_url":
        return Rule("http_url", rf"https?://{ANY}*", "must be empty or an http:// or https:// URL",
                    samples=("http://h/decide", "https://h", "HTTP://h", "ws://h", "h", "http:/h"))
    if name == "parse_health_addr":
        return Rule("host_port", rf"(?:{IP}|\[{IP}\]):{PORT0}",
                    "must be IP:PORT, an IPv4 or IPv6 address (optionally in brackets) and a port 0-65535, "
                    "e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080",
                    samples=("127.0.0.1:8080", "0.0.0.0:8080", "[::1]:8080", "::1:8080", "[::]:0", "1.2.3.4:65535",
                             "1.2.3.4:65536", "1.2.3.4:", ":8080", "localhost:8080", "1.2.3.4", "[1.2.3.4]:80",
                             "01.2.3.4:80", "256.1.1.1:80", "[::1:80", "fe80::1%eth0:80", "1.2.3.4:0080",
                             "1:2:3:4:5:6:7:8:80", "1::2::3:80", "::ffff:1.2.3.4:80", "1.2.3.4:8 0"),
                    stricter=(("[fe80::1%a b]:80", "zone names are interface names"),))
    if name == "parse_log_level":
        bare, targeted = _either((*levels, "warning")), _either((*levels, "off"))
        directive = rf"{WS}*(?:[^,=\r\n]*={targeted}|{bare})?{WS}*"
        return Rule("log_level", rf"{directive}(?:,{directive})*",
                    f"must be a log level ({_one_of(levels)}), or directives such as "
                    "info,gateway_pkg.portal=debug whose bare entry is the level",
                    samples=("info", "INFO", "warning", "warn", "debug", "trace", "error", "off", "loud",
                             "gateway=debug,info", "a=off", "a=warning", "a=b=info", "info,", ",", "info, debug",
                             "=info", "a = info", "a=info x", "in fo", "info;debug", "x=", "info,x"))
    if name == "_portal_version":
        return Rule("version", r"[0-9]+\.[0-9]+\.[0-9]+", "must be three numbers with dots, like 1.4.17",
                    samples=("1.4.17", "1.4", "1.4.17.1", "v1.4.17", "1..4", "01.002.3", "a.b.c"))
    if name == "parse_nameservers":
        item = rf"\[{IP}\](?::{PORT1})?|{IPV4}(?::{PORT1})?|{IPV6}"
        entry = rf"{WS}*(?:{item})?{WS}*"
        return Rule("nameservers", rf"{entry}(?:,{entry})*",
                    "must be a comma-separated list of IP addresses, each optionally with a port 1-65535 "
                    "(IPv6 with a port in brackets, e.g. [::1]:5353)",
                    samples=("192.0.2.1", "192.0.2.1, 127.0.0.5:5353", "[::1]:5353", "2001:db8::1", "[::1]",
                             "::1:53", "1.2.3.4:0", "1.2.3.4:65536", "[::1]:", "host", "1.2.3.4,,5.6.7.8",
                             "[1.2.3.4]:53", "1.2.3.4:x", "[::1]:0"),
                    stricter=(("[::1]53", "a port after `]` needs its colon"),))
    if name == "port_number":
        return Rule("port", PORT0, "must be a port number 0-65535",
                    samples=(*(str(n) for n in (0, 1, 80, 52625, 65535, 65536, 99999, -1)), "00080", "8o", "1.5"))
    if name == "_positive_int":
        return Rule("count", r"0*[1-9][0-9]*", "must be a positive integer",
                    samples=("1", "10000", "0", "00", "007", "-1", "1.0", "x", "1e3"))
    if name == "_override":
        return Rule("override", _either(("true", "false")), "must be true or false",
                    samples=("true", "false", "TRUE", "False", "yes", "1", "0", "on"))
    if name == "_choice.<locals>.parse" and "choices" in closure:
        choices = tuple(closure["choices"])
        return Rule("choice", _either(choices), f"must be {_one_of(choices)}",
                    samples=(*choices, *(c.upper() for c in choices), "xml", "humans"))
    if name == "_seconds.<locals>.parse" and set(closure) >= {"minimum", "positive"}:
        if closure["minimum"] != 0:
            raise LookupError(f"{setting.env}: seconds with minimum {closure['minimum']} (only 0 has a rule)")
        if closure["positive"]:
            return Rule("positive_seconds", rf"(?=[^1-9\r\n]*[1-9]){_DECIMAL}",
                        "must be a positive number of seconds, a plain decimal like 300 or 0.5",
                        samples=_SECONDS_SAMPLES, stricter=_SECONDS_STRICTER)
        return Rule("seconds", _DECIMAL, "must be a number of seconds >= 0, a plain decimal like 30 or 0.5",
                    samples=_SECONDS_SAMPLES,
                    stricter=(*_SECONDS_STRICTER, ("-0", "no sign but +")))
    if name == "_optional_seconds":
        return Rule("optional_seconds", rf"(?:(?=[^1-9\r\n]*[1-9]){_DECIMAL})?",
                    "must be empty or a positive number of seconds, a plain decimal like 120 or 0.5",
                    samples=_SECONDS_SAMPLES, stricter=_SECONDS_STRICTER)
    raise LookupError(f"{setting.env} has kind {kind.name!r} (parser {name}), which tools/gen_role_validation.py "
                      "has no rule for: add one there")


# Values every rule is tried with, besides its own samples and the setting's default.
GENERIC_SAMPLES = ("", " ", "\t", "0", "1", "-1", "x", "loud", "true", "FALSE", "info", "human", "json",
                   "127.0.0.1:8080", "[::1]:8080", "wss://api.firezone.dev", "http://h/decide", "1.4.17",
                   "192.0.2.1", "300", "0.5", "65536", " info ", "a,b", "ü", "a\nb", "info\n", "\r", "1 2")


def _accepts(setting: Any, value: str) -> bool:
    try:
        setting.parse(value)
    except Exception:  # a parser's ValueError outside Invalid is a refusal too
        return False
    return True


def pattern(setting: Any, rule: Rule) -> str:
    """The anchored pattern for a setting: surrounding whitespace is stripped by the gateway,
    and an empty value means the default (which must itself be valid)."""
    optional = "?" if _accepts(setting, "") else ""
    return rf"^{WS}*(?:{rule.body}){optional}{WS}*\Z"


def disagreements(setting: Any, rule: Rule, compiled: re.Pattern[str]) -> list[str]:
    problems: list[str] = []
    stricter = dict(rule.stricter)
    for value in dict.fromkeys((*GENERIC_SAMPLES, *rule.samples, setting.default, *stricter)):
        ours, theirs = compiled.match(value) is not None, _accepts(setting, value)
        if "\r" in value or "\n" in value:
            if ours:
                problems.append(f"{setting.env}: the rule accepts {value!r}, which has a line break")
        elif value in stricter:
            if not theirs:
                problems.append(f"{setting.env}: the gateway refuses {value!r}; drop it from the rule's "
                                "stricter cases")
            elif ours:
                problems.append(f"{setting.env}: the rule accepts {value!r}, listed as refused ({stricter[value]})")
        elif ours and not theirs:
            problems.append(f"{setting.env}: the rule accepts {value!r}, which the gateway refuses")
        elif theirs and not ours:
            problems.append(f"{setting.env}: the rule refuses {value!r}, which the gateway accepts")
    return problems


# --- the template ----------------------------------------------------------------------------
_ENV_CALL = re.compile(r"env\(\s*(?P<args>[^)]*?)\s*\)\s*}}")
_LITERAL = re.compile(r"^'(?P<name>[A-Z][A-Z0-9_]*)'\s*,\s*(?P<expr>.+)$")


def check_template(template: str, settings_by_env: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    written: dict[str, str] = {}
    for call in _ENV_CALL.finditer(template):
        args = call.group("args")
        literal = _LITERAL.match(args)
        if literal:
            written[literal.group("name")] = literal.group("expr").strip()
        elif args.startswith(f"'{FLAG_PREFIX}' ~ flag"):
            pass  # the feature flags loop: FZFF_<flag>
        elif args == "name, value":
            pass  # the firezone_gateway_extra_env loop
        else:
            problems.append(f"{TEMPLATE}: cannot tell which variable env({args}) writes")
    for name, expr in written.items():
        if name not in settings_by_env:
            problems.append(f"{TEMPLATE}: writes {name}, which the gateway does not read ({SETTINGS_PY})")
        elif name not in ROLE_VARIABLES:
            problems.append(f"{TEMPLATE}: writes {name}; add it to ROLE_VARIABLES in tools/gen_role_validation.py")
        elif ROLE_VARIABLES[name][1] != expr:
            problems.append(f"{TEMPLATE}: writes {name} from {expr}, tools/gen_role_validation.py expects "
                            f"{ROLE_VARIABLES[name][1]}")
    for name, (variable, _) in ROLE_VARIABLES.items():
        if name not in written:
            problems.append(f"{TEMPLATE}: does not write {name} (tools/gen_role_validation.py ROLE_VARIABLES)")
        if variable not in defaults:
            problems.append(f"{DEFAULTS}: has no {variable} (tools/gen_role_validation.py ROLE_VARIABLES)")
    if "firezone_gateway_extra_env" not in template or FLAGS_VARIABLE not in template:
        problems.append(f"{TEMPLATE}: no longer writes firezone_gateway_extra_env or {FLAGS_VARIABLE}")
    return problems


# --- rendering -------------------------------------------------------------------------------
def _dq(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _scalar(value: str, indent: int, *, words: bool, first: int) -> str:
    """A double-quoted YAML scalar in lines of at most 120 characters, the first starting at
    column `first`, the others at `indent`: prose folds at spaces (a line break reads as a
    space), patterns continue after an escaped line break (which reads as nothing)."""
    quoted = _dq(value)
    if first + len(quoted) <= 120:
        return quoted
    widths = [120 - first - 1, 120 - indent - 1]  # room for the opening quote / the closing one or `\`
    lines: list[str] = [""]
    pieces = [_dq(word)[1:-1] for word in value.split(" ")] if words else [_dq(c)[1:-1] for c in value]
    for piece in pieces:
        width = widths[0] if len(lines) == 1 else widths[1]
        glue = " " if words and lines[-1] else ""
        # A continuation line must not start with a space: YAML would drop it.
        if lines[-1] and len(lines[-1]) + len(glue) + len(piece) > width and piece != " ":
            lines.append(piece)
        else:
            lines[-1] += glue + piece
    separator = "\n" if words else "\\\n"
    return '"' + (separator + " " * indent).join(lines) + '"'


@dataclass(frozen=True)
class Table:
    rules: dict[str, dict[str, str]]
    variables: list[dict[str, str]]
    owned: dict[str, str]
    flags: list[str]


def build(settings: ModuleType) -> tuple[Table, list[str]]:
    problems: list[str] = []
    rules: dict[str, dict[str, str]] = {}
    for setting in settings.SETTINGS:
        if setting.env == TOKEN:
            continue
        try:
            rule = rule_for(settings, setting)
        except LookupError as exc:
            problems.append(f"{SETTINGS_PY}: {exc}")
            continue
        if not _accepts(setting, setting.default):
            problems.append(f"{SETTINGS_PY}: {setting.env} refuses its own default {setting.default!r}")
        text = pattern(setting, rule)
        compiled = re.compile(text)
        problems += disagreements(setting, rule, compiled)
        rules[setting.env] = {"kind": rule.rule_id, "rule": rule.text, "pattern": text}
    variables = [{"var": var, "env": env} for env, (var, expr) in ROLE_VARIABLES.items()
                 if env in rules and (var == expr or env in VALUE_CHECKED_INDIRECT)]
    flags = [env.removeprefix(FLAG_PREFIX).lower() for env in rules if env.startswith(FLAG_PREFIX)]
    owned = {env: var for env, (var, _) in ROLE_VARIABLES.items()}
    owned |= {env: FLAGS_VARIABLE for env in rules if env.startswith(FLAG_PREFIX)}
    return Table(rules, variables, owned, flags), problems


HEADER = """\
---
# Generated by tools/gen_role_validation.py from gateway_pkg/settings.py: do not edit.
# `make lint` (tools/check_facts.py) fails when this file is out of date or when a rule
# disagrees with the gateway's own parser. Preflight (tasks/preflight.yml) loads it.
"""


def render(table: Table) -> str:
    out = [HEADER, "# Every setting the gateway reads but the token: the rule a value must match (a",
           "# Python regular expression) and the sentence preflight prints, after the variable name.",
           "__firezone_gateway_settings_rules:"]
    for env, rule in table.rules.items():
        out += [f"  {env}:", f"    kind: {rule['kind']}", f"    rule: {_scalar(rule['rule'], 6, words=True, first=11)}",
                f"    pattern: {_scalar(rule['pattern'], 6, words=False, first=14)}"]
    out += ["", "# The role variables templates/gateway-env.j2 writes, with the setting each becomes.",
            "__firezone_gateway_settings_vars:"]
    out += [f"  - {{var: {v['var']}, env: {v['env']}}}" for v in table.variables]
    out += ["", "# Names the role writes itself, with the variable to set instead: refused in",
            "# firezone_gateway_extra_env.", "__firezone_gateway_settings_owned:"]
    out += [f"  {env}: {var}" for env, var in table.owned.items()]
    out += ["", f"# The keys {FLAGS_VARIABLE} may have (the {FLAG_PREFIX} settings, lower case, no prefix).",
            "__firezone_gateway_feature_flag_names:"]
    out += [f"  - {flag}" for flag in table.flags]
    return "\n".join(out) + "\n"


def load_settings(root: Path) -> ModuleType:
    """gateway_pkg/settings.py of `root` (its `gateway_pkg.errors` import resolves on sys.path)."""
    if str(root) not in sys.path:
        sys.path.append(str(root))
    spec = importlib.util.spec_from_file_location("_checked_settings", root / SETTINGS_PY)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(root / SETTINGS_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def generate(root: Path) -> tuple[str, list[str]]:
    """The wanted file and the problems found on the way (kinds, parsers, template)."""
    settings = load_settings(root)
    table, problems = build(settings)
    defaults = yaml.safe_load((root / DEFAULTS).read_text(encoding="utf-8")) or {}
    template = (root / TEMPLATE).read_text(encoding="utf-8")
    problems += check_template(template, {s.env: s for s in settings.SETTINGS}, defaults)
    text = render(table)
    loaded = yaml.safe_load(text)
    if loaded["__firezone_gateway_settings_rules"] != table.rules:
        problems.append("tools/gen_role_validation.py: the rendered YAML does not read back as written")
    return text, problems


def check(root: Path) -> list[str]:
    """Every problem, one line each; [] when the rules file is current and agrees."""
    try:
        wanted, problems = generate(root)
    except (OSError, SyntaxError, yaml.YAMLError, ImportError) as exc:
        return [f"{TARGET}: cannot check ({exc})"]
    target = root / TARGET
    current = target.read_text(encoding="utf-8") if target.is_file() else None
    if current != wanted:
        problems.insert(0, f"{TARGET} is out of date: run tools/gen_role_validation.py")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository (default: the one this script is in)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if out of date or disagreeing")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.root)
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    wanted, problems = generate(args.root)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    target = args.root / TARGET
    if not target.is_file() or target.read_text(encoding="utf-8") != wanted:
        target.write_text(wanted, encoding="utf-8")
        print(f"updated {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
