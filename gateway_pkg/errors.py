"""Errors that end the process with a documented exit status and one clear line."""


class GatewayError(Exception):
    """Base for errors that carry their own exit status and a user-facing message."""

    exit_status = 1


class ConfigError(GatewayError):
    """A local usage or configuration mistake found before connecting (exit 2)."""

    exit_status = 2


class RuntimeFailure(GatewayError):
    """A failure at run time: missing capability, portal refusal, TUN unavailable (exit 1)."""

    exit_status = 1
