"""`firezone-gateway`: flags and env vars → Config → permission check → run.

Every user mistake ends with one line on stderr: exit 2 for configuration, 1 for runtime.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from gateway_pkg import __version__
from gateway_pkg.errors import ConfigError, GatewayError, RuntimeFailure

if TYPE_CHECKING:
    from gateway_pkg.config import Config
    from gateway_pkg.interfaces import DataPlane

PROG = "firezone-gateway"
CAP_NET_ADMIN = 12

# flag → (env var, value when the flag is a switch)
_SWITCHES = {
    "no_telemetry": "FIREZONE_NO_TELEMETRY",
    "no_check": "FIREZONE_NO_CHECK",
    "token_in_header": "FIREZONE_TOKEN_IN_HEADER",
}
_VALUES = {
    "api_url": "FIREZONE_API_URL",
    "firezone_id": "FIREZONE_ID",
    "firezone_name": "FIREZONE_NAME",
    "health_check_addr": "HEALTH_CHECK_ADDR",
    "log_level": "RUST_LOG",
    "log_format": "FIREZONE_LOG_FORMAT",
    "portal_version": "FIREZONE_PORTAL_VERSION",
    "feature_flags_url": "FIREZONE_FEATURE_FLAGS_URL",
    "feature_flags_interval": "FIREZONE_FEATURE_FLAGS_INTERVAL",
    "feature_flags_api_key": "FIREZONE_FEATURE_FLAGS_API_KEY",
    "udp_port": "FIREZONE_UDP_PORT",
    "dns_nameservers": "FIREZONE_DNS_NAMESERVERS",
    "dns_resolv_conf": "FIREZONE_DNS_RESOLV_CONF",
    "dns_hosts_file": "FIREZONE_DNS_HOSTS_FILE",
    "dns_cache_size": "FIREZONE_DNS_CACHE_SIZE",
    "dns_min_ttl": "FIREZONE_DNS_MIN_TTL",
    "dns_max_ttl": "FIREZONE_DNS_MAX_TTL",
    "dns_max_stale": "FIREZONE_DNS_MAX_STALE",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print usage plus the error; one line is what a log shows well.
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Firezone Gateway (Python). Every option is also an environment variable; "
        "the token is read only from FIREZONE_TOKEN or the systemd credential FIREZONE_TOKEN.",
    )
    add = parser.add_argument
    add("-u", "--api-url", help="portal URL (FIREZONE_API_URL, default wss://api.firezone.dev)")
    add("-i", "--firezone-id", help="stable gateway ID (FIREZONE_ID, else /var/lib/firezone/gateway_id)")
    add("-n", "--firezone-name", help="gateway name (FIREZONE_NAME, default: hostname)")
    add("--health-check-addr", help="IP:PORT of /healthz /readyz /metrics (HEALTH_CHECK_ADDR, default 0.0.0.0:8080)")
    add("--log-level", help="log level (RUST_LOG: trace, debug, info, warn, error; default info)")
    add("--log-format", choices=["human", "json"], help="FIREZONE_LOG_FORMAT (default human)")
    add("--no-telemetry", action="store_true", help="FIREZONE_NO_TELEMETRY: no feature-flag fetching")
    add("--no-check", action="store_true", help="skip the root/CAP_NET_ADMIN check")
    add("--token-in-header", action="store_true",
        help="FIREZONE_TOKEN_IN_HEADER: send the token as x-authorization instead of in the URL")
    add("--portal-version", help="version announced in the User-Agent (FIREZONE_PORTAL_VERSION, default 1.4.17)")
    add("--feature-flags-url", help="PostHog-compatible /decide URL (FIREZONE_FEATURE_FLAGS_URL)")
    add("--feature-flags-interval", help="seconds between flag fetches (FIREZONE_FEATURE_FLAGS_INTERVAL, default 300)")
    add("--feature-flags-api-key", help="api_key sent to /decide (FIREZONE_FEATURE_FLAGS_API_KEY)")
    add("--udp-port", help="WireGuard UDP port (FIREZONE_UDP_PORT, default 52625; ephemeral if taken)")
    add("--dns-nameservers", help="ip[:port],... instead of resolv.conf's (FIREZONE_DNS_NAMESERVERS)")
    add("--dns-resolv-conf", help="resolver configuration (FIREZONE_DNS_RESOLV_CONF, default /etc/resolv.conf)")
    add("--dns-hosts-file", help="hosts file consulted first (FIREZONE_DNS_HOSTS_FILE, default /etc/hosts)")
    add("--dns-cache-size", help="names kept in the DNS cache (FIREZONE_DNS_CACHE_SIZE, default 10000)")
    add("--dns-min-ttl", help="lower TTL clamp in seconds (FIREZONE_DNS_MIN_TTL, default 0)")
    add("--dns-max-ttl", help="upper TTL clamp in seconds (FIREZONE_DNS_MAX_TTL, default 86400)")
    add("--dns-max-stale", help="oldest stale answer served in seconds (FIREZONE_DNS_MAX_STALE, default 86400)")
    add("-V", "--version", action="version", version=f"{PROG} {__version__}")
    return parser


def parse_environment(argv: Sequence[str], environ: dict[str, str]) -> dict[str, str]:
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
    for attr, key in _VALUES.items():
        value = getattr(args, attr)
        if value is not None:
            env[key] = value
    for attr, key in _SWITCHES.items():
        if getattr(args, attr):
            env[key] = "true"
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


def main(argv: Sequence[str] | None = None) -> int:
    from gateway_pkg import config as config_mod

    try:
        env = parse_environment(sys.argv[1:] if argv is None else argv, dict(os.environ))
        config = config_mod.load(env)
        # Built before the permission check so that every configuration mistake exits 2.
        dataplane_factory = dataplane_factory_for(config)
        if not config.no_check:
            check_permissions()
        return _run(config, dataplane_factory)
    except GatewayError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # a bug: still one line for the user, the traceback at debug level
        import logging

        logging.getLogger("gateway_pkg").debug("internal error", exc_info=True)
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (RUST_LOG=debug shows the traceback)",
              file=sys.stderr)
        return 1


def _run(config: Config, dataplane_factory: Callable[[bytes], DataPlane]) -> int:
    from gateway_pkg import app, logs
    from gateway_pkg.wireguard.keys import generate_private_key

    logs.setup(config.log_level, config.log_format, [config.token.reveal()])
    private_key = generate_private_key()  # a new static key per process start, as upstream
    try:
        app.run(config, dataplane_factory(private_key), private_key)
    except GatewayError as exc:
        import logging

        logging.getLogger("gateway_pkg").error("Failed to start Gateway: %s", exc)
        raise
    return 0


def _udp_port(raw: str | None) -> int:
    if not raw:
        return 52625
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ConfigError(f"FIREZONE_UDP_PORT must be a port number, got {raw!r}")
    return int(raw)


def dataplane_factory_for(config: Config) -> Callable[[bytes], DataPlane]:
    """Validate the data-plane and DNS settings now; build the data plane once keys exist."""
    from gateway_pkg.config import env_flag
    from gateway_pkg.controlonly import ControlOnlyDataPlane
    from gateway_pkg.dns.flags import FeatureFlags
    from gateway_pkg.dns.resolver import build_resolver
    from gateway_pkg.dns.settings import DnsSettings
    from gateway_pkg.tunnel.dataplane import DataPlaneSettings, TunnelDataPlane, parse_timers

    env = config.environ
    if env_flag(env.get("FIREZONE_NO_DATAPLANE")):
        return lambda _key: ControlOnlyDataPlane()
    dns_settings = DnsSettings.from_env(env)
    settings = DataPlaneSettings(udp_port=_udp_port(env.get("FIREZONE_UDP_PORT")), timers=parse_timers(env),
                                 flags_distinct_id=config.firezone_id)

    def build(private_key: bytes) -> DataPlane:
        flags = FeatureFlags(dns_settings)
        return TunnelDataPlane(private_key, build_resolver(dns_settings, flags), flags, settings)

    return build


if __name__ == "__main__":
    sys.exit(main())
