"""`firezone-dev-portal`: run the development portal.

Tokens come from files or flags (files keep them out of `ps`); the admin token may also
come from DEV_PORTAL_ADMIN_TOKEN.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from gateway_pkg import __version__, logs
from gateway_pkg.errors import ConfigError
from gateway_pkg.settings import Invalid, parse_health_addr

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


def main(argv: Sequence[str] | None = None) -> int:
    from gateway_pkg.devportal.server import DevPortal, Settings, run_forever

    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
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
        logs.setup(level, "human", [*tokens, admin])
        portal = DevPortal(Settings(gateway_tokens=tokens, admin_token=admin,
                                    reply_timeout=args.reply_timeout, gateway_udp_port=args.gateway_udp_port))
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
