#!/usr/bin/env python3
"""Check that the facts the YAML and shell files share with gateway_pkg/netconst.py agree with it.

gateway_pkg/netconst.py is the one place the gateway's network facts are written. Outside
Python they are repeated where a file cannot import them; this check proves the copies equal:

- roles/firezone_gateway/vars/main.yml: `__firezone_gateway_sysctls` == SYSCTLS (every key,
  same values), `__firezone_gateway_tun_name` == TUN_NAME, `__firezone_gateway_tunnel_v4`/`_v6`
  == TUNNEL_V4/TUNNEL_V6, `__firezone_gateway_route_table` == ROUTE_TABLE, and, where present,
  `__firezone_gateway_udp_port` == DEFAULT_UDP_PORT;
- the role's tasks, handlers and templates do not hard-code the route table, the tunnel
  ranges or the UDP port (they use the variables above);
- roles/firezone_gateway/defaults/main.yml: `firezone_gateway_version` == gateway_pkg.__version__;
- every `--sysctl KEY=VALUE` in molecule/*/molecule.yml and tools/smoke_*.sh names a key of
  SYSCTLS with its value, and a file that passes any passes all of them (the role's verify
  mode needs every one inside a container);
- scripts/container_demo.py takes SYSCTLS from gateway_pkg.netconst instead of a copy;
- roles/firezone_gateway/vars/settings_rules.yml, the rules preflight checks the gateway's
  settings with, is what tools/gen_role_validation.py generates from gateway_pkg/settings.py,
  and each rule agrees with the gateway's own parser (see that tool).

Exit status 0 when everything agrees, 1 otherwise, with one line per mismatch on stdout naming
the file and the key. --root checks another tree (the tests use a tampered copy).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

NETCONST = "gateway_pkg/netconst.py"
ROLE = "roles/firezone_gateway"
VARS = f"{ROLE}/vars/main.yml"
DEFAULTS = f"{ROLE}/defaults/main.yml"
DEMO = "scripts/container_demo.py"
SYSCTL_FILES = ("molecule/*/molecule.yml", "tools/smoke_*.sh")
# `--sysctl=KEY=VALUE`, `--sysctl KEY=VALUE` (optionally quoted), `"--sysctl", "KEY=VALUE"`.
_SYSCTL_OPTION = re.compile(r"""--sysctl(?:=|\s+["']?|["']\s*,\s*["'])([A-Za-z0-9_.\-/]+)=([^\s"'\\]*)""")


def load_netconst(root: Path) -> ModuleType:
    """gateway_pkg/netconst.py of `root`, loaded on its own (it imports only the stdlib)."""
    spec = importlib.util.spec_from_file_location("_checked_netconst", root / NETCONST)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(root / NETCONST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def package_version(root: Path) -> str | None:
    tree = ast.parse((root / "gateway_pkg" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__version__"
                                                 for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    return None


def _yaml(root: Path, rel: str) -> dict[str, Any]:
    data = yaml.safe_load((root / rel).read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def check_role_vars(root: Path, net: ModuleType) -> list[str]:
    problems: list[str] = []
    role_vars = _yaml(root, VARS)
    wanted: dict[str, Any] = {
        "__firezone_gateway_tun_name": net.TUN_NAME,
        "__firezone_gateway_tunnel_v4": net.TUNNEL_V4,
        "__firezone_gateway_tunnel_v6": net.TUNNEL_V6,
        "__firezone_gateway_route_table": net.ROUTE_TABLE,
    }
    names = {"__firezone_gateway_tun_name": "TUN_NAME", "__firezone_gateway_tunnel_v4": "TUNNEL_V4",
             "__firezone_gateway_tunnel_v6": "TUNNEL_V6", "__firezone_gateway_route_table": "ROUTE_TABLE"}
    if "__firezone_gateway_udp_port" in role_vars:
        wanted["__firezone_gateway_udp_port"] = net.DEFAULT_UDP_PORT
        names["__firezone_gateway_udp_port"] = "DEFAULT_UDP_PORT"
    for key, value in wanted.items():
        if key not in role_vars:
            problems.append(f"{VARS}: {key} is missing ({NETCONST} {names[key]} = {value!r})")
        elif role_vars[key] != value:
            problems.append(f"{VARS}: {key} is {role_vars[key]!r}, {NETCONST} {names[key]} is {value!r}")
    sysctls = role_vars.get("__firezone_gateway_sysctls")
    if not isinstance(sysctls, dict):
        return [*problems, f"{VARS}: __firezone_gateway_sysctls is missing or not a mapping"]
    for key, value in net.SYSCTLS.items():
        if key not in sysctls:
            problems.append(f"{VARS}: __firezone_gateway_sysctls lacks {key} ({NETCONST} SYSCTLS has {value!r})")
        elif str(sysctls[key]) != value:
            problems.append(f"{VARS}: __firezone_gateway_sysctls {key} is {sysctls[key]!r}, "
                            f"{NETCONST} SYSCTLS has {value!r}")
    for key in sorted(set(sysctls) - set(net.SYSCTLS)):
        problems.append(f"{VARS}: __firezone_gateway_sysctls {key} is not in {NETCONST} SYSCTLS")
    return problems


def check_role_literals(root: Path, net: ModuleType) -> list[str]:
    """Tasks, handlers and templates use the variables, not copies of the values."""
    literals = {
        str(net.ROUTE_TABLE): "ROUTE_TABLE (use __firezone_gateway_route_table)",
        hex(net.ROUTE_TABLE): "ROUTE_TABLE (use __firezone_gateway_route_table)",
        net.TUNNEL_V4: "TUNNEL_V4 (use __firezone_gateway_tunnel_v4)",
        net.TUNNEL_V6: "TUNNEL_V6 (use __firezone_gateway_tunnel_v6)",
        str(net.DEFAULT_UDP_PORT): "DEFAULT_UDP_PORT (add __firezone_gateway_udp_port to vars/main.yml)",
    }
    problems: list[str] = []
    for sub in ("tasks", "handlers", "templates"):
        for path in sorted((root / ROLE / sub).rglob("*")):
            if not path.is_file():
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for literal, what in literals.items():
                    if re.search(rf"(?<![\w.:/]){re.escape(literal)}(?![\w.:/])", line, re.IGNORECASE):
                        problems.append(f"{path.relative_to(root)}:{number}: hard-coded {literal}, "
                                        f"{NETCONST} {what}")
    return problems


def check_version(root: Path) -> list[str]:
    version = package_version(root)
    default = _yaml(root, DEFAULTS).get("firezone_gateway_version")
    if version is None:
        return ["gateway_pkg/__init__.py: no __version__ string"]
    if default != version:
        return [f"{DEFAULTS}: firezone_gateway_version is {default!r}, gateway_pkg.__version__ is {version!r}"]
    return []


def check_sysctl_options(root: Path, net: ModuleType) -> list[str]:
    problems: list[str] = []
    for pattern in SYSCTL_FILES:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root)
            passed: dict[str, str] = {}
            for key, value in _SYSCTL_OPTION.findall(path.read_text(encoding="utf-8")):
                if key not in net.SYSCTLS:
                    problems.append(f"{rel}: --sysctl {key} is not in {NETCONST} SYSCTLS")
                elif value != net.SYSCTLS[key]:
                    problems.append(f"{rel}: --sysctl {key}={value}, {NETCONST} SYSCTLS has {net.SYSCTLS[key]!r}")
                passed[key] = value
            if passed:
                problems += [f"{rel}: --sysctl {key}={value} is missing ({NETCONST} SYSCTLS)"
                             for key, value in net.SYSCTLS.items() if key not in passed]
    return problems


def check_demo(root: Path) -> list[str]:
    path = root / DEMO
    if not path.is_file():
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = any(isinstance(node, ast.ImportFrom) and node.module == "gateway_pkg.netconst"
                   and any(alias.name == "SYSCTLS" and alias.asname in (None, "SYSCTLS") for alias in node.names)
                   for node in ast.walk(tree))
    assigned = any(isinstance(node, ast.Assign | ast.AnnAssign)
                   and any(isinstance(t, ast.Name) and t.id == "SYSCTLS"
                           for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))
                   for node in ast.walk(tree))
    problems = []
    if not imported or assigned:
        problems.append(f"{DEMO}: SYSCTLS must be imported from gateway_pkg.netconst, not written out")
    problems += [f"{DEMO}: --sysctl {key}={value} written out; build it from gateway_pkg.netconst SYSCTLS"
                 for key, value in _SYSCTL_OPTION.findall(path.read_text(encoding="utf-8"))]
    return problems


def _rules_tool() -> ModuleType:
    """tools/gen_role_validation.py, next to this file (it checks `root`, wherever that is)."""
    spec = importlib.util.spec_from_file_location("_gen_role_validation", Path(__file__).with_name(
        "gen_role_validation.py"))
    if spec is None or spec.loader is None:
        raise FileNotFoundError("tools/gen_role_validation.py")
    tool = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    if not hasattr(tool, "check"):
        spec.loader.exec_module(tool)  # registered first: its dataclasses look their module up
    return tool


def check_settings_rules(root: Path) -> list[str]:
    """The role's settings rules agree with gateway_pkg/settings.py (tools/gen_role_validation.py)."""
    problems: list[str] = _rules_tool().check(root)
    return problems


def check(root: Path) -> list[str]:
    try:
        net = load_netconst(root)
    except (OSError, SyntaxError) as exc:
        return [f"{NETCONST}: cannot be loaded ({exc})"]
    problems: list[str] = []
    for step in (lambda: check_role_vars(root, net), lambda: check_role_literals(root, net),
                 lambda: check_version(root), lambda: check_sysctl_options(root, net), lambda: check_demo(root),
                 lambda: check_settings_rules(root)):
        try:
            problems += step()
        except (OSError, yaml.YAMLError, SyntaxError) as exc:
            problems.append(f"cannot check: {exc}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository to check (default: the one this script is in)")
    args = parser.parse_args(argv)
    problems = check(args.root)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"role, Molecule, smoke and demo facts agree with {NETCONST}; the role's settings rules with "
              "gateway_pkg/settings.py")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
