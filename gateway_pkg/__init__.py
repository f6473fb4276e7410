"""firezone-gateway: a Python re-implementation of the Firezone Gateway."""

__version__ = "0.1.0"
