#!/usr/bin/env python3
"""Generate the variable reference of each role from meta/argument_specs.yml + defaults.

Writes one Markdown table per role between the markers
    <!-- BEGIN GENERATED VARIABLES: <role> -->  and  <!-- END GENERATED VARIABLES: <role> -->
in the role's own README (roles/<role>/README.md), or with --doc in one given document for
all roles. A role with generated preflight rules (vars/settings_rules.yml, written by
tools/gen_role_validation.py) also gets their tables between
    <!-- BEGIN GENERATED RULES: <role> -->  and  <!-- END GENERATED RULES: <role> -->
(required in the role's README, filled where present with --doc). With --check it changes
nothing and exits 1 if a document is out of date (for `make lint`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

_MARKUP = re.compile(r"[CIV]\(([^)]*)\)")


def _text(description: Any) -> str:
    parts = description if isinstance(description, list) else [description or ""]
    text = " ".join(" ".join(str(p).split()) for p in parts)
    return _MARKUP.sub(r"`\1`", text).replace("|", "\\|")


def _default(value: Any) -> str:
    shown = (value if value else '""') if isinstance(value, str) else json.dumps(value)
    return "`" + shown.replace("|", "\\|") + "`"


def role_table(role_dir: Path) -> str:
    specs = yaml.safe_load((role_dir / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    defaults_path = role_dir / "defaults" / "main.yml"
    defaults = yaml.safe_load(defaults_path.read_text(encoding="utf-8")) if defaults_path.is_file() else {}
    defaults = defaults or {}
    entry_points: dict[str, Any] = specs["argument_specs"]
    options: dict[str, dict[str, Any]] = {}
    used_in: dict[str, list[str]] = {}
    for entry, spec in entry_points.items():
        for name, option in ((spec or {}).get("options") or {}).items():
            options.setdefault(name, option or {})
            used_in.setdefault(name, []).append(entry)
    lines = [
        f"Entry points: {', '.join(f'`{e}`' for e in entry_points)}.",
        "",
        "| Variable | Type | Default | Entry points | Description |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(options, key=lambda n: (not options[n].get("required", False), n)):
        option = options[name]
        type_ = option.get("type", "")
        if option.get("elements"):
            type_ += f" of {option['elements']}"
        default = "**required**" if option.get("required") else _default(defaults.get(name))
        description = _text(option.get("description"))
        if option.get("choices"):
            description += " Choices: " + ", ".join(f"`{c}`" for c in option["choices"]) + "."
        entries = ", ".join(used_in[name])
        lines.append(f"| `{name}` | {type_} | {default} | {entries} | {description} |")
    return "\n".join(lines)


RULES_FILE = "vars/settings_rules.yml"


def _suffixed(data: dict[str, Any], suffix: str) -> Any:
    return next((value for key, value in data.items() if key.endswith(suffix)), None) or {}


def rules_table(role_dir: Path) -> str | None:
    """The preflight rules of the settings that reach the gateway, or None without a rules file."""
    path = role_dir / RULES_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rules: dict[str, dict[str, str]] = _suffixed(data, "_settings_rules")
    owned: dict[str, str] = _suffixed(data, "_settings_owned")
    flags: list[str] = _suffixed(data, "_feature_flag_names")
    lines = ["| Variable | Written as | The value |", "|---|---|---|"]
    for item in _suffixed(data, "_settings_vars"):
        rule = rules[item["env"]]["rule"]
        lines.append(f"| `{item['var']}` | `{item['env']}` | {_text(rule)} |")
    lines += ["", f"Names `{role_dir.name}_extra_env` may set, each value checked by its rule. Any other name,"
              " `FIREZONE_TOKEN` and the names above are refused.", "",
              "| Name | The value |", "|---|---|"]
    lines += [f"| `{env}` | {_text(rule['rule'])} |" for env, rule in rules.items() if env not in owned]
    if flags:
        lines += ["", f"Keys `{role_dir.name}_feature_flags` may have: " + ", ".join(f"`{f}`" for f in flags)
                  + "; each value `true` or `false`."]
    return "\n".join(lines)


class MarkersMissing(Exception):
    pass


def _fill(document: str, kind: str, role: str, table: str, *, required: bool) -> str:
    begin = f"<!-- BEGIN GENERATED {kind}: {role} -->"
    end = f"<!-- END GENERATED {kind}: {role} -->"
    if begin not in document or end not in document:
        if required:
            raise MarkersMissing(f"markers for {role} not found; add:\n{begin}\n{end}")
        return document
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def render(document: str, roles: list[Path], *, rules_required: bool = False) -> str:
    for role in roles:
        document = _fill(document, "VARIABLES", role.name, role_table(role), required=True)
        rules = rules_table(role)
        if rules is not None:
            document = _fill(document, "RULES", role.name, rules, required=rules_required)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--doc", type=Path, default=None,
                        help="one document for all roles (default: each role's own README.md)")
    parser.add_argument("--roles", type=Path, default=Path("roles"))
    parser.add_argument("--check", action="store_true", help="exit 1 if a document is out of date")
    args = parser.parse_args(argv)
    if not args.roles.is_dir():
        print(f"gen_role_docs: {args.roles} is not a directory", file=sys.stderr)
        return 2
    roles = sorted(p for p in args.roles.iterdir() if (p / "meta" / "argument_specs.yml").is_file())
    targets = [(args.doc, roles)] if args.doc else [(role / "README.md", [role]) for role in roles]
    status = 0
    for doc, doc_roles in targets:
        try:
            current = doc.read_text(encoding="utf-8")
            wanted = render(current, doc_roles, rules_required=args.doc is None)
        except (OSError, MarkersMissing) as exc:
            print(f"gen_role_docs: {doc}: {exc}", file=sys.stderr)
            status = 1
            continue
        if wanted == current:
            continue
        if args.check:
            print(f"{doc} is out of date: run tools/gen_role_docs.py (make docs-ansible)")
            status = 1
        else:
            doc.write_text(wanted, encoding="utf-8")
            print(f"updated {doc}")
    return status


if __name__ == "__main__":
    sys.exit(main())
