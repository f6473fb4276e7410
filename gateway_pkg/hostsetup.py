"""`firezone-gateway-init`: forwarding sysctls and the FORWARD/MASQUERADE rules, idempotently.

Run as root before the gateway (systemd `ExecStartPre=+`), so rules come back after a
reboot or a firewall reload. Follows upstream's init script (facts §3.2): FORWARD accepts
for tun-firezone inserted at position 1, MASQUERADE limited to the tunnel source ranges,
with iptables and ip6tables (the nft backend on Debian 12), each rule checked before added.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from gateway_pkg.netconst import SYSCTLS, TUN_NAME, TUNNEL_V4, TUNNEL_V6

PROG = "firezone-gateway-init"

Runner = Callable[[list[str]], int]


class SetupError(Exception):
    pass


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    spec: tuple[str, ...]
    insert_first: bool


def rules_for(egress: Sequence[str], tun: str = TUN_NAME) -> dict[str, list[Rule]]:
    """The rules per tool (iptables for IPv4, ip6tables for IPv6)."""
    result: dict[str, list[Rule]] = {}
    for tool, source in (("iptables", TUNNEL_V4), ("ip6tables", TUNNEL_V6)):
        rules = [
            Rule("filter", "FORWARD", ("-i", tun, "-j", "ACCEPT"), True),
            Rule("filter", "FORWARD", ("-o", tun, "-j", "ACCEPT"), True),
        ]
        rules += [Rule("nat", "POSTROUTING", ("-s", source, "-o", iface, "-j", "MASQUERADE"), False)
                  for iface in egress]
        result[tool] = rules
    return result


def _run(argv: list[str]) -> int:
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False).returncode


def apply_rules(egress: Sequence[str], runner: Runner = _run, *, remove: bool = False) -> list[str]:
    """Add missing rules (or delete present ones). Returns what changed, for the log."""
    changed: list[str] = []
    for tool, rules in rules_for(egress).items():
        if shutil.which(tool) is None and runner is _run:
            raise SetupError(f"{tool} is not installed; install the iptables package")
        for rule in rules:
            base = [tool, "-w", "-t", rule.table]
            present = runner([*base, "-C", rule.chain, *rule.spec]) == 0
            if remove:
                while present:
                    if runner([*base, "-D", rule.chain, *rule.spec]) != 0:
                        raise SetupError(f"{tool} could not delete a rule in {rule.table}/{rule.chain}")
                    changed.append(f"{tool} -t {rule.table} -D {rule.chain} {' '.join(rule.spec)}")
                    present = runner([*base, "-C", rule.chain, *rule.spec]) == 0
                continue
            if present:
                continue
            action = ["-I", rule.chain, "1"] if rule.insert_first else ["-A", rule.chain]
            if runner([*base, *action, *rule.spec]) != 0:
                raise SetupError(f"{tool} could not add a rule to {rule.table}/{rule.chain} (need root?)")
            changed.append(f"{tool} -t {rule.table} {' '.join(action)} {' '.join(rule.spec)}")
    return changed


def default_route_interfaces(runner: Callable[[list[str]], str] | None = None) -> list[str]:
    """Interfaces of the IPv4 and IPv6 default routes, in order, without duplicates."""

    def ip_json(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.stdout if done.returncode == 0 else "[]"

    read = runner or ip_json
    found: list[str] = []
    for family in ("-4", "-6"):
        try:
            routes = json.loads(read(["ip", "-j", family, "route", "show", "default"]) or "[]")
        except ValueError:
            continue
        for route in routes:
            dev = route.get("dev") if isinstance(route, dict) else None
            if isinstance(dev, str) and dev not in found:
                found.append(dev)
    return found


def sysctl_path(key: str, root: Path = Path("/proc/sys")) -> Path:
    return root.joinpath(*key.split("."))


def apply_sysctls(*, write: bool, root: Path = Path("/proc/sys")) -> list[str]:
    """Write each sysctl (or only read it back). Returns the keys that are not as wanted."""
    wrong: list[str] = []
    for key, wanted in SYSCTLS.items():
        path = sysctl_path(key, root)
        try:
            current = path.read_text().strip()
        except OSError:
            wrong.append(key)
            continue
        if current == wanted:
            continue
        if write:
            try:
                path.write_text(wanted + "\n")
                continue
            except OSError:
                pass  # read-only /proc/sys (containers): reported below
        wrong.append(key)
    return wrong


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog=PROG, description="Set forwarding sysctls and NAT rules for firezone-gateway.")
    parser.add_argument("--egress-interface", action="append", default=[],
                        help="interface to masquerade out of (repeatable; default: those of the default routes)")
    parser.add_argument("--no-sysctl", action="store_true",
                        help="only verify the sysctls (where /proc/sys is read-only, e.g. containers)")
    parser.add_argument("--remove", action="store_true", help="delete the rules instead (uninstall)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a sysctl is not as needed")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    egress = args.egress_interface or default_route_interfaces()
    try:
        if not args.remove:
            wrong = apply_sysctls(write=not args.no_sysctl)
            for key in wrong:
                print(f"{PROG}: warning: sysctl {key} is not {SYSCTLS[key]}; forwarding may not work", file=sys.stderr)
            if wrong and args.strict:
                return 1
            if not egress:
                print(f"{PROG}: warning: no default route: no MASQUERADE rule added "
                      "(pass --egress-interface)", file=sys.stderr)
        for line in apply_rules(egress, remove=args.remove):
            print(f"{PROG}: {line}")
    except SetupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
