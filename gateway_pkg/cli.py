"""`firezone-gateway`'s command line: argv and the environment → `Config` → exit status.

The flags are generated from the settings table (`gateway_pkg.settings`), one per setting
but the token. Every user mistake ends with one line on stderr: exit 2 for configuration,
1 for runtime failures; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from gateway_pkg import __version__
from gateway_pkg import config as config_mod
from gateway_pkg.errors import ConfigError, GatewayError, RuntimeFailure
from gateway_pkg.logs import command_line
from gateway_pkg.settings import SETTINGS, Setting

PROG = "firezone-gateway"
CAP_NET_ADMIN = 12


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print usage plus the error; one line is what a log shows well.
        raise ConfigError(message)


def _dest(setting: Setting) -> str:
    return setting.env.lower()


def _help(setting: Setting) -> str:
    if setting.advanced:
        return argparse.SUPPRESS
    default = f"; default {setting.default}" if setting.default and not setting.switch else ""
    return f"{setting.help} [{setting.env}{default}]".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Firezone Gateway (Python). Every option is also an environment variable (in "
        "brackets); the token is read only from FIREZONE_TOKEN or the systemd credential FIREZONE_TOKEN. "
        "Reference: docs/configuration.md.",
    )
    for setting in SETTINGS:
        if setting.flag is None:
            continue
        names = [setting.short, setting.flag] if setting.short else [setting.flag]
        if setting.switch:
            parser.add_argument(*names, dest=_dest(setting), action="store_true", help=_help(setting))
        else:
            parser.add_argument(*names, dest=_dest(setting), metavar=setting.kind.name.upper().replace(" ", "_"),
                                help=_help(setting))
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    return parser


def parse_environment(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """Fold flags into a copy of the environment: a flag wins over its env var."""
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        # Never echo the unexpected words: upstream takes the token positionally, so they
        # may well be a token, and this line ends up in logs.
        raise ConfigError(
            f"unexpected argument(s) ({len(extra)}); the token is not accepted on the command line "
            "(it would be visible in ps): set FIREZONE_TOKEN or the systemd credential"
        )
    env = dict(environ)
    for setting in SETTINGS:
        if setting.flag is None:
            continue
        value = getattr(args, _dest(setting))
        if setting.switch:
            if value:
                env[setting.env] = "true"
        elif value is not None:
            env[setting.env] = value
    return env


def has_cap_net_admin(status_path: str = "/proc/self/status") -> bool:
    try:
        with open(status_path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        return False
    return False


def check_permissions() -> None:
    if os.geteuid() == 0 or has_cap_net_admin():
        return
    raise RuntimeFailure(
        f"{PROG} needs to run as root or with the CAP_NET_ADMIN capability: under systemd use "
        "AmbientCapabilities=CAP_NET_ADMIN, otherwise `setcap cap_net_admin+ep` on the "
        "launcher (or pass --no-check to skip this check)"
    )


def main(argv: Sequence[str], environ: Mapping[str, str], *, run: Callable[[config_mod.Config], None]) -> int:
    """Parse, check, `run(config)`; returns the exit status (the wiring root passes `run`)."""
    try:
        config = config_mod.load(parse_environment(argv, environ))
        if not config.no_check:
            check_permissions()
        run(config)
        return 0
    except GatewayError as exc:
        print(command_line(PROG, str(exc), "ERROR", environ), file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # a bug: still one line for the user, the traceback at debug level
        import logging

        logging.getLogger("gateway_pkg").debug("internal error", exc_info=True)
        print(command_line(PROG, f"internal error: {type(exc).__name__}: {exc} (RUST_LOG=debug shows the traceback)",
                           "ERROR", environ), file=sys.stderr)
        return 1
