#!/usr/bin/env python3
"""Generate the variable reference of each role from meta/argument_specs.yml + defaults.

Writes one Markdown table per role between the markers
    <!-- BEGIN GENERATED VARIABLES: <role> -->  and  <!-- END GENERATED VARIABLES: <role> -->
in the role's own README (roles/<role>/README.md), or with --doc in one given document for
all roles. With --check it changes nothing and exits 1 if a document is out of date (for
`make lint`).
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


class MarkersMissing(Exception):
    pass


def render(document: str, roles: list[Path]) -> str:
    for role in roles:
        begin = f"<!-- BEGIN GENERATED VARIABLES: {role.name} -->"
        end = f"<!-- END GENERATED VARIABLES: {role.name} -->"
        if begin not in document or end not in document:
            raise MarkersMissing(f"markers for {role.name} not found; add:\n{begin}\n{end}")
        head, rest = document.split(begin, 1)
        _, tail = rest.split(end, 1)
        document = f"{head}{begin}\n{role_table(role)}\n{end}{tail}"
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
            wanted = render(current, doc_roles)
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
