#!/usr/bin/env python3
"""Check that each role's defaults/main.yml and meta/argument_specs.yml agree.

For every role under roles/ (or the role directories given as arguments):
- every key in defaults/main.yml is an option of some entry point ("extra in defaults");
- every option that is not required has a default ("missing from defaults");
- a required option has no default (it would never be required);
- every option has a type and a description;
- each default has the type its option declares (templated "{{ ... }}" strings are not
  checked: they are only known at run time), is one of its choices, and equals the option's
  own `default:` if it declares one;
- an option declared in several entry points is declared the same way.

Exit status 0 when all roles agree, 1 otherwise (one line per problem on stdout).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

# Types of the Ansible argument spec and the Python types a YAML default may have for them.
_TYPE_CHECKS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "path": (str,),
    "raw": (object,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def _is_templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _type_ok(value: Any, spec_type: str) -> bool:
    if _is_templated(value):
        return True
    allowed = _TYPE_CHECKS.get(spec_type)
    if allowed is None:
        return False
    # bool is a subclass of int in Python; YAML `true` is not an int default.
    if spec_type in ("int", "float") and isinstance(value, bool):
        return False
    return isinstance(value, allowed)


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def check_role(role_dir: Path) -> list[str]:
    """Return the problems found in one role, each prefixed with the role name."""
    name = role_dir.name
    problems: list[str] = []
    defaults_path = role_dir / "defaults" / "main.yml"
    specs_path = role_dir / "meta" / "argument_specs.yml"
    if not specs_path.is_file():
        return [f"{name}: no meta/argument_specs.yml"]
    defaults = (_load_yaml(defaults_path) if defaults_path.is_file() else None) or {}
    if not isinstance(defaults, dict):
        return [f"{name}: defaults/main.yml is not a mapping"]
    specs_doc = _load_yaml(specs_path) or {}
    entry_points = specs_doc.get("argument_specs") if isinstance(specs_doc, dict) else None
    if not isinstance(entry_points, dict) or not entry_points:
        return [f"{name}: meta/argument_specs.yml has no argument_specs entry points"]

    options: dict[str, dict[str, Any]] = {}
    for entry, spec in entry_points.items():
        entry_options = (spec or {}).get("options") or {}
        for option, option_spec in entry_options.items():
            option_spec = option_spec or {}
            if option in options and options[option] != option_spec:
                problems.append(f"{name}: option {option} is declared differently in entry point {entry}")
            options.setdefault(option, option_spec)

    for key in sorted(set(defaults) - set(options)):
        problems.append(f"{name}: {key} is in defaults/main.yml but in no argument_specs entry point")

    for option, spec in sorted(options.items()):
        spec_type = spec.get("type")
        if not spec_type:
            problems.append(f"{name}: option {option} has no type")
        elif spec_type not in _TYPE_CHECKS:
            problems.append(f"{name}: option {option} has unknown type {spec_type}")
        if not spec.get("description"):
            problems.append(f"{name}: option {option} has no description")
        required = bool(spec.get("required", False))
        if option not in defaults:
            if not required:
                problems.append(f"{name}: option {option} is not required but missing from defaults/main.yml")
            continue
        if required:
            problems.append(f"{name}: option {option} is required but has a default")
        value = defaults[option]
        if spec_type in _TYPE_CHECKS and not _type_ok(value, spec_type):
            problems.append(
                f"{name}: default of {option} is {type(value).__name__} {value!r}, argument_specs says {spec_type}"
            )
        elements = spec.get("elements")
        if spec_type == "list" and elements and isinstance(value, list):
            bad = [item for item in value if not _type_ok(item, elements)]
            if bad:
                problems.append(f"{name}: default of {option} has elements {bad!r} that are not {elements}")
        choices = spec.get("choices")
        if choices is not None and not _is_templated(value) and value not in choices:
            problems.append(f"{name}: default of {option} is {value!r}, not one of {choices}")
        if "default" in spec and spec["default"] != value:
            problems.append(
                f"{name}: option {option} declares default {spec['default']!r}, defaults/main.yml has {value!r}"
            )
    return problems


def find_roles(roots: list[Path]) -> list[Path]:
    roles: list[Path] = []
    for root in roots:
        if (root / "meta").is_dir() or (root / "defaults").is_dir():
            roles.append(root)
        else:
            roles.extend(sorted(p for p in root.iterdir() if p.is_dir()))
    return roles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        default=[Path("roles")],
        help="role directories, or directories of roles (default: roles)",
    )
    args = parser.parse_args(argv)
    roles = find_roles(args.paths)
    if not roles:
        print("no roles found", file=sys.stderr)
        return 1
    problems = [problem for role in roles for problem in check_role(role)]
    for problem in problems:
        print(problem)
    if not problems:
        print(f"argument_specs agree with defaults in {len(roles)} role(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
