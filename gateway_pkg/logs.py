"""Log output: upstream-like human lines or JSON lines, with secrets scrubbed.

The token travels in the portal URL's query string, and library loggers (websockets at
DEBUG) print request lines, so redaction sits on the handler: it sees every record from
every logger, ours or not.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import TextIO

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_LEVEL_NAMES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: " INFO",
    logging.WARNING: " WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "ERROR",
}
_QUERY_SECRET = re.compile(r"(?i)(token=)[^&\s\"']+")
_HEADER_SECRET = re.compile(r"(?i)((?:x-authorization|authorization):\s*)(?:Bearer\s+)?\S+")
REDACTED = "<redacted>"
# Literal replacement of a very short secret would mangle ordinary words in every line; such
# a value is still scrubbed where it matters, in URL queries and auth headers, by pattern.
MIN_LITERAL_SECRET = 8


class SecretScrubber(logging.Filter):
    """Replaces known secrets and token-looking query values in every formatted record."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self._secrets = [s for s in (secrets or []) if len(s) >= MIN_LITERAL_SECRET]

    def add_secret(self, secret: str) -> None:
        if len(secret) >= MIN_LITERAL_SECRET:
            self._secrets.append(secret)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _QUERY_SECRET.sub(r"\1" + REDACTED, text)
        return _HEADER_SECRET.sub(r"\1" + REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = self.scrub(record.getMessage())
        record.msg, record.args = message, None
        if record.exc_info:
            # Exception text can quote URLs; render it now so it is scrubbed too.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.scrub(formatted)
            record.exc_info = None
        return True


def _fields(record: logging.LogRecord) -> dict[str, object]:
    extra = getattr(record, "fields", None)
    return dict(extra) if isinstance(extra, dict) else {}


class HumanFormatter(logging.Formatter):
    """`2025-09-23T10:00:00.123Z  INFO target: message key=value`, like upstream."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        millis = int(record.msecs)
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        line = f"{stamp}.{millis:03d}Z {level} {record.name}: {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, object] = {
            "timestamp": f"{stamp}.{int(record.msecs):03d}Z",
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname).strip(),
            "target": record.name,
            "message": record.getMessage(),
        }
        # Numbers and booleans stay JSON numbers and booleans (flow-log byte counts); the rest is text.
        doc.update({k: v if v is None or isinstance(v, int | float) else str(v) for k, v in _fields(record).items()})
        if record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, separators=(",", ":"))


def command_line(prog: str, message: str, level: str = "INFO",
                 environ: Mapping[str, str] | None = None) -> str:
    """One line a command prints itself (a fatal error, what firezone-gateway-init did): plain
    `prog: message`, or with FIREZONE_LOG_FORMAT=json a JSON object like the log lines, so that
    every line of the unit's journal parses as JSON."""
    env = os.environ if environ is None else environ
    if env.get("FIREZONE_LOG_FORMAT", "").strip().lower() != "json":
        return f"{prog}: {message}"
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    return json.dumps({"timestamp": f"{stamp}.{int(now * 1000) % 1000:03d}Z", "level": level, "target": prog,
                       "message": message}, separators=(",", ":"))


def setup(level: str, log_format: str, secrets: list[str], stream: TextIO | None = None) -> SecretScrubber:
    """Route every logger to one stdout handler that scrubs secrets. Returns the scrubber."""
    handler = logging.StreamHandler(stream or sys.stdout)
    scrubber = SecretScrubber(secrets)
    handler.addFilter(scrubber)
    handler.setFormatter(JsonFormatter() if log_format == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # Noisy libraries stay at WARN unless the user asked for trace, as upstream's prefix does.
    if level != "trace":
        for name in ("websockets", "pyroute2", "asyncio", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return scrubber
