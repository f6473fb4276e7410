"""`firezone-dev-portal`: run the development portal.

Tokens come from files or flags (files keep them out of `ps`); the admin token may also
come from DEV_PORTAL_ADMIN_TOKEN. The TURN secret comes from a file only. See docs/devportal.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gateway_pkg import __version__, logs
from gateway_pkg.devportal.relays import GATEWAY_TTL, InvalidRelay, parse_relay_arg
from gateway_pkg.errors import ConfigError
from gateway_pkg.settings import Invalid, parse_health_addr

if TYPE_CHECKING:
    from gateway_pkg.devportal.server import Settings

PROG = "firezone-dev-portal"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Development portal speaking the Firezone gateway protocol.")
    add = parser.add_argument
    add("--listen", default="127.0.0.1:8081", help="IP:PORT to listen on (default 127.0.0.1:8081)")
    add("--gateway-token", action="append", default=[], help="accepted gateway token (repeatable)")
    add("--gateway-token-file", action="append", default=[], help="file with accepted gateway tokens, one per line")
    add("--admin-token", help="admin API bearer token (or DEV_PORTAL_ADMIN_TOKEN)")
    add("--admin-token-file", help="file holding the admin API bearer token")
    add("--gateway-udp-port", type=int, default=52625, help="UDP port clients are told to reach gateways on")
    add("--reply-timeout", type=float, default=15.0, help="seconds POST /v1/flows waits for the gateway's reply")
    add("--relay", action="append", default=[], metavar="ADDRS",
        help="a TURN relay: IP:PORT and/or [IPv6]:PORT, comma-separated (repeatable: one flag per relay)")
    add("--turn-secret-file", metavar="PATH", help="file holding the relays' static-auth-secret (coturn)")
    add("--relay-ttl", type=int, default=GATEWAY_TTL, metavar="SECONDS",
        help=f"lifetime of minted relay credentials (default {GATEWAY_TTL}: 90 days)")
    add("--log-level", default="info", help="trace, debug, info, warn, error")
    add("-V", "--version", action="version", version=f"{PROG} {__version__}")
    return parser


def _read_tokens(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _listen(text: str) -> tuple[str, int]:
    try:
        address = parse_health_addr(text.strip())
    except Invalid:
        raise ConfigError(f"--listen needs IP:PORT, got {text!r}") from None
    return address.host, address.port


def _read_secret(path: str) -> str:
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read --turn-secret-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--turn-secret-file {path} is not UTF-8 text") from None
    if not secret or "\n" in secret:
        raise ConfigError(f"--turn-secret-file {path} must hold the secret on one line")
    return secret


def _relays(args: argparse.Namespace) -> tuple[str | None, list[tuple[str, ...]]]:
    try:
        relays = [parse_relay_arg(text) for text in args.relay]
    except InvalidRelay as exc:
        raise ConfigError(f"--relay: {exc}") from None
    if relays and not args.turn_secret_file:
        raise ConfigError("--relay needs --turn-secret-file (the relays' static-auth-secret)")
    if args.relay_ttl < 1:
        raise ConfigError(f"--relay-ttl must be a positive number of seconds, got {args.relay_ttl}")
    return (_read_secret(args.turn_secret_file) if args.turn_secret_file else None), relays


@dataclass
class Options:
    host: str
    port: int
    level: str
    settings: Settings


def parse_options(argv: Sequence[str]) -> Options:
    """The command line → what `main` runs with; ConfigError for a usage mistake."""
    from gateway_pkg.devportal.server import Settings

    args = build_parser().parse_args(argv)
    host, port = _listen(args.listen)
    tokens = list(args.gateway_token)
    for path in args.gateway_token_file:
        tokens += _read_tokens(path)
    if not tokens:
        raise ConfigError("at least one gateway token is needed (--gateway-token-file or --gateway-token)")
    admin = args.admin_token or os.environ.get("DEV_PORTAL_ADMIN_TOKEN")
    if args.admin_token_file:
        found = _read_tokens(args.admin_token_file)
        admin = found[0] if found else None
    if not admin:
        raise ConfigError("an admin token is needed (--admin-token-file, --admin-token or DEV_PORTAL_ADMIN_TOKEN)")
    level = args.log_level.lower()
    if level not in ("trace", "debug", "info", "warn", "error"):
        raise ConfigError(f"--log-level must be one of trace, debug, info, warn, error, got {level!r}")
    secret, relays = _relays(args)
    settings = Settings(gateway_tokens=tokens, admin_token=admin, reply_timeout=args.reply_timeout,
                        gateway_udp_port=args.gateway_udp_port, turn_secret=secret, relays=relays,
                        relay_ttl=args.relay_ttl)
    return Options(host, port, level, settings)


def main(argv: Sequence[str] | None = None) -> int:
    from gateway_pkg.devportal.server import DevPortal, run_forever

    try:
        options = parse_options(sys.argv[1:] if argv is None else argv)
        settings, host, port = options.settings, options.host, options.port
        secrets = [*settings.gateway_tokens, settings.admin_token]
        logs.setup(options.level, "human", secrets + ([settings.turn_secret] if settings.turn_secret else []))
        portal = DevPortal(settings)
        try:
            asyncio.run(run_forever(portal, host, port))
        except OSError as exc:
            print(f"{PROG}: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
            return 1
        return 0
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
