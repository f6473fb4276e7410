"""`firezone-gateway-init`: forwarding sysctls and the FORWARD/MASQUERADE rules, idempotently.

Run as root before the gateway (systemd `ExecStartPre=+`), so rules come back after a
reboot or a firewall reload. Follows upstream's init script
(../shared/reference/firezone-gateway-facts.md §3.2): FORWARD accepts for tun-firezone
inserted at position 1, MASQUERADE limited to the tunnel source ranges, with iptables and
ip6tables (the nft backend on Debian 12), each rule checked before added. INPUT accepts for the
TUN DNS server (UDP and TCP port 53535 on tun-firezone) are inserted at position 1 too, so a
host firewall with a default deny does not drop the clients' SRV/TXT queries.

`--remove` (uninstall) deletes every rule the gateway ever added, whatever the egress
interfaces are now: it lists FORWARD, INPUT and nat POSTROUTING with `-S` and deletes the lines
that are exactly ours (the two tun-firezone FORWARD accepts, the two INPUT accepts of port 53535;
a MASQUERADE of a tunnel range out of any interface), and every `ip rule` (IPv4 and IPv6) that
looks up the gateway's routing table.
Rules of others (Docker, ufw, an admin's accept) are left alone.

`--write-id` (hosts baked without an ID: the role's `firezone_gateway_enroll: false`) writes
FIREZONE_ID_PATH (/var/lib/firezone/gateway_id) at first start when it is absent and
FIREZONE_ID is unset: `systemd-id128 --app-specific=753b38f9f96947ef8083802d5909a372 machine-id`
(upstream 1.4.18's derivation), root:firezone 0640. The write is atomic (a temporary file in
the same directory, fsync, a hard link that never replaces a file, fsync of the directory), so
a full disk or a crash leaves either the whole ID or no file. A failure (ENOSPC, EROFS, EACCES)
is one line on stderr and exit 1. An existing file is never rewritten: a valid one is kept, an
empty or garbled one is refused (exit 1) instead of being replaced by a new ID, since a new ID
makes the portal see a new gateway.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import hmac
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

from gateway_pkg.errors import ConfigError
from gateway_pkg.logs import command_line
from gateway_pkg.netconst import ROUTE_TABLE, SYSCTLS, TUN_DNS_PORT, TUN_NAME, TUNNEL_V4, TUNNEL_V6

PROG = "firezone-gateway-init"

Runner = Callable[[list[str]], int]
"""Runs a command, returns its exit status (injectable: the unit tests pass a fake)."""
Reader = Callable[[list[str]], str]
"""Runs a read-only command, returns its stdout; raises SetupError when it fails."""


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
        # The TUN DNS server. `-m udp`/`-m tcp` spelled out: `-S` prints them, and `is_ours`
        # compares with what `-S` prints.
        rules += [Rule("filter", "INPUT", ("-i", tun, "-p", proto, "-m", proto, "--dport", str(TUN_DNS_PORT),
                                           "-j", "ACCEPT"), True)
                  for proto in ("udp", "tcp")]
        rules += [Rule("nat", "POSTROUTING", ("-s", source, "-o", iface, "-j", "MASQUERADE"), False)
                  for iface in egress]
        result[tool] = rules
    return result


def _run(argv: list[str]) -> int:
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False).returncode


def apply_rules(egress: Sequence[str], runner: Runner = _run) -> list[str]:
    """Add the missing rules. Returns what changed, for the log."""
    changed: list[str] = []
    for tool, rules in rules_for(egress).items():
        if shutil.which(tool) is None and runner is _run:
            raise SetupError(f"{tool} is not installed; install the iptables package")
        for rule in rules:
            base = [tool, "-w", "-t", rule.table]
            if runner([*base, "-C", rule.chain, *rule.spec]) == 0:
                continue
            action = ["-I", rule.chain, "1"] if rule.insert_first else ["-A", rule.chain]
            if runner([*base, *action, *rule.spec]) != 0:
                raise SetupError(f"{tool} could not add a rule to {rule.table}/{rule.chain} (need root?)")
            changed.append(f"{tool} -t {rule.table} {' '.join(action)} {' '.join(rule.spec)}")
    return changed


def _read(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        raise SetupError(f"{' '.join(argv)}: {why}")
    return done.stdout


# The chains the gateway adds to.
_CHAINS: Final = (("filter", "FORWARD"), ("filter", "INPUT"), ("nat", "POSTROUTING"))
_ANY_IFACE: Final = "\0"  # stands for the `-o` interface in the MASQUERADE template


def is_ours(tool: str, table: str, chain: str, spec: Sequence[str], tun: str = TUN_NAME) -> bool:
    """Whether a rule (as `iptables -S` prints it, without `-A CHAIN`) is one the gateway adds.

    Compared with what `rules_for` adds, exactly, so an admin's `-i tun-firezone -o eth0 -j
    ACCEPT` or Docker's MASQUERADE are not ours; the MASQUERADE `-o` interface may be any,
    so rules for an interface that is gone (or no longer the default route's) are found too.
    """
    spec = tuple(spec)
    for rule in rules_for([_ANY_IFACE], tun)[tool]:
        if (rule.table, rule.chain) != (table, chain) or len(rule.spec) != len(spec):
            continue
        if all(want in (got, _ANY_IFACE) for want, got in zip(rule.spec, spec, strict=True)):
            return True
    return False


def owned_rules(tool: str, table: str, chain: str, listing: str) -> list[tuple[str, ...]]:
    """The gateway's rules in the output of `<tool> -t <table> -S <chain>`, in order."""
    found: list[tuple[str, ...]] = []
    for line in listing.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            continue  # an odd quote in someone else's comment: not ours
        if words[:2] == ["-A", chain] and is_ours(tool, table, chain, words[2:]):
            found.append(tuple(words[2:]))
    return found


@dataclass
class Removal:
    """What `remove_rules` did: removed (or would remove), could not check, failed."""

    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _ip_rules(family: str, read: Reader) -> list[dict[str, object]]:
    answer = read(["ip", "-j", family, "rule", "list", "table", str(ROUTE_TABLE)])
    try:
        rules = json.loads(answer or "[]")
    except ValueError as exc:
        raise SetupError(f"ip {family} rule list: unreadable answer ({exc})") from None
    return [rule for rule in rules if isinstance(rule, dict)] if isinstance(rules, list) else []


def remove_rules(runner: Runner = _run, reader: Reader = _read, *, dry_run: bool = False) -> Removal:
    """Delete every FORWARD/MASQUERADE rule and ip rule of the gateway (or list them: dry_run).

    Goes on after a failure, so one broken table does not keep the others' rules; the caller
    reports `errors`. A missing iptables/ip6tables/ip binary is a warning: nothing to check.
    """
    result = Removal()
    verb = "would remove" if dry_run else "removed"
    for tool in ("iptables", "ip6tables"):
        if reader is _read and shutil.which(tool) is None:
            result.warnings.append(f"{tool} is not installed: its rules (if any) were not checked")
            continue
        for table, chain in _CHAINS:
            base = [tool, "-w", "-t", table]
            try:
                ours = owned_rules(tool, table, chain, reader([*base, "-S", chain]))
            except SetupError as exc:
                result.errors.append(str(exc))
                continue
            for spec in ours:
                shown = f"{tool} -t {table} -D {chain} {' '.join(spec)}"
                if not dry_run and runner([*base, "-D", chain, *spec]) != 0:
                    result.errors.append(f"{tool} could not delete a rule: {shown}")
                    break
                result.removed.append(f"{verb}: {shown}")
    if reader is _read and shutil.which("ip") is None:
        result.warnings.append("ip (iproute2) is not installed: ip rules (if any) were not checked")
        return result
    for family in ("-4", "-6"):
        try:
            rules = _ip_rules(family, reader)
            if dry_run:
                result.removed += [f"{verb}: {_ip_rule_del(family, rule)}" for rule in rules]
                continue
            # One at a time, listing again after each: until none is left (bounded).
            for _ in range(100):
                if not rules:
                    break
                argv = _ip_rule_del(family, rules[0]).split()
                if runner(argv) != 0:
                    raise SetupError(f"could not delete an ip rule: {' '.join(argv)}")
                result.removed.append(f"{verb}: {' '.join(argv)}")
                rules = _ip_rules(family, reader)
            if rules:
                raise SetupError(f"ip {family} rules for table {ROUTE_TABLE} keep coming back; some are left")
        except SetupError as exc:
            result.errors.append(str(exc))
    return result


def _ip_rule_del(family: str, rule: dict[str, object]) -> str:
    priority = rule.get("priority")
    selector = f" priority {priority}" if isinstance(priority, int) else ""
    return f"ip {family} rule del{selector} table {ROUTE_TABLE}"


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


# upstream 1.4.18: FIREZONE_ID = `systemd-id128 --app-specific=<this> machine-id`
ID_APP = "753b38f9f96947ef8083802d5909a372"
DEFAULT_ID_PATH = "/var/lib/firezone/gateway_id"
MACHINE_ID_PATH = "/etc/machine-id"
ID_GROUP = "firezone"


def app_specific_id(machine_id: str, app: str = ID_APP) -> str:
    """sd_id128_get_machine_app_specific(): HMAC-SHA256 keyed with the machine ID over the
    application ID, cut to 128 bits and stamped as a version 4 UUID; 32 hex digits as
    `systemd-id128` prints it. ValueError when an ID is not 32 hex digits."""
    key, message = bytes.fromhex(machine_id.strip()), bytes.fromhex(app)
    if len(key) != 16 or len(message) != 16:
        raise ValueError("an ID128 is 32 hex digits")
    out = bytearray(hmac.new(key, message, hashlib.sha256).digest()[:16])
    out[6] = (out[6] & 0x0F) | 0x40
    out[8] = (out[8] & 0x3F) | 0x80
    return out.hex()


def derive_gateway_id(machine_id_path: str = MACHINE_ID_PATH) -> str:
    try:
        machine_id = Path(machine_id_path).read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        raise SetupError(f"cannot read {machine_id_path} to derive FIREZONE_ID: {_reason(exc)}") from None
    try:
        return app_specific_id(machine_id)
    except ValueError:
        raise SetupError(f"{machine_id_path} holds no machine ID yet ({machine_id[:40]!r}): cannot derive "
                         "FIREZONE_ID; start again once systemd has initialized it") from None


def _reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def _id_group() -> int | None:
    import grp

    try:
        return grp.getgrnam(ID_GROUP).gr_gid
    except KeyError:
        return None


def write_id_file(path: Path, text: str, gid: int | None) -> bool:
    """Write `text` + newline to `path` atomically, never replacing a file already there.

    Returns False when a file appeared at `path` meanwhile (it is then left as it is).
    Raises OSError; nothing of the attempt is left behind then."""
    if not path.parent.is_dir():  # as the role makes it: root:firezone 0750
        path.parent.mkdir(mode=0o750)
        if gid is not None and os.geteuid() == 0:
            os.chown(path.parent, 0, gid)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            data = (text + "\n").encode()
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fchmod(fd, 0o640)
            if gid is not None and os.geteuid() == 0:
                os.fchown(fd, 0, gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # unlike rename, never replaces a file someone wrote meanwhile
        except FileExistsError:
            return False
        # The ID is in place (its data synced); syncing the directory makes the name durable.
        with contextlib.suppress(OSError):
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def read_id_file(path: Path) -> str | None:
    """The ID in `path`, None when there is no file; SetupError for an unreadable, empty or
    garbled one (the gateway refuses those too: gateway_pkg.config.parse_id_file)."""
    from gateway_pkg.config import parse_id_file

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SetupError(f"cannot read FIREZONE_ID from {path}: {_reason(exc)}") from None
    try:
        return parse_id_file(data, str(path))
    except ConfigError as exc:
        raise SetupError(f"{exc}; left as it is") from None


def ensure_gateway_id(path: Path, derive: Callable[[], str] = derive_gateway_id,
                      gid: Callable[[], int | None] = _id_group) -> tuple[str, bool]:
    """The ID in `path`, written first when the file is absent. Returns (ID, written)."""
    existing = read_id_file(path)
    if existing is not None:
        return existing, False
    new = derive()
    try:
        written = write_id_file(path, new, gid())
    except OSError as exc:
        raise SetupError(f"cannot write FIREZONE_ID to {path}: {_reason(exc)}; nothing was written "
                         "(the gateway cannot start without it)") from None
    if not written:  # someone wrote it meanwhile: theirs stands
        existing = read_id_file(path)
        if existing is None:
            raise SetupError(f"cannot write FIREZONE_ID to {path}: the file came and went while writing it")
        return existing, False
    return new, True


def _say(message: str, level: str = "INFO", *, err: bool = False) -> None:
    """One line of output: `firezone-gateway-init: ...`, or JSON with FIREZONE_LOG_FORMAT=json
    (the unit's EnvironmentFile sets it for this ExecStartPre too); warnings say so."""
    if level == "WARN":
        message = f"warning: {message}"
    print(command_line(PROG, message, level), file=sys.stderr if err else sys.stdout)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _say(message, "ERROR", err=True)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog=PROG, description="Set forwarding sysctls and NAT rules for firezone-gateway.")
    parser.add_argument("--egress-interface", action="append", default=[],
                        help="interface to masquerade out of (repeatable; default: those of the default routes)")
    parser.add_argument("--no-sysctl", action="store_true",
                        help="only verify the sysctls (where /proc/sys is read-only, e.g. containers)")
    parser.add_argument("--remove", action="store_true",
                        help="delete every rule and ip rule the gateway added, for any interface (uninstall)")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --remove: only print what would be removed")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a sysctl is not as needed")
    parser.add_argument("--write-id", action="store_true",
                        help="when FIREZONE_ID is unset and the ID file is absent, write it (derived from "
                             "/etc/machine-id as upstream); refuse an empty or garbled ID file")
    parser.add_argument("--id-path", default=os.environ.get("FIREZONE_ID_PATH") or DEFAULT_ID_PATH,
                        help=f"with --write-id: the ID file (env FIREZONE_ID_PATH; default {DEFAULT_ID_PATH})")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.dry_run and not args.remove:
        parser.error("--dry-run only goes with --remove")
    if args.remove:
        return _remove(dry_run=args.dry_run)
    if args.write_id and not os.environ.get("FIREZONE_ID", "").strip():
        try:
            gateway_id, written = ensure_gateway_id(Path(args.id_path))
        except SetupError as exc:
            _say(str(exc), "ERROR", err=True)
            return 1
        if written:
            _say(f"wrote FIREZONE_ID {gateway_id} to {args.id_path} (derived from {MACHINE_ID_PATH})", "INFO")
    egress = args.egress_interface or default_route_interfaces()
    try:
        wrong = apply_sysctls(write=not args.no_sysctl)
        for key in wrong:
            _say(f"sysctl {key} is not {SYSCTLS[key]}; forwarding may not work", "WARN", err=True)
        if wrong and args.strict:
            return 1
        if not egress:
            _say("no default route: no MASQUERADE rule added (pass --egress-interface)", "WARN", err=True)
        for line in apply_rules(egress):
            _say(line)
    except SetupError as exc:
        _say(str(exc), "ERROR", err=True)
        return 1
    return 0


def _remove(*, dry_run: bool) -> int:
    if os.geteuid() != 0 and not dry_run:
        _say("--remove needs root (it deletes iptables rules and ip rules)", "ERROR", err=True)
        return 1
    result = remove_rules(dry_run=dry_run)
    for line in result.removed:
        _say(line)
    if not result.removed:
        _say("nothing to remove: no rule of the gateway is left")
    for line in result.warnings:
        _say(line, "WARN", err=True)
    for line in result.errors:
        _say(line, "ERROR", err=True)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
