"""Does a domain name belong to a DNS resource's address pattern?

Upstream (`dns.rs::is_subdomain` and its `pattern` crate) matches resource addresses as
globs over the name with dots as separators, case-insensitively:
- `?` matches exactly one character inside a label;
- `*` matches any run of characters inside a label (never a dot);
- a label that is exactly `**` matches any number of whole labels, including none;
- a pattern starting with `*.` also matches the bare parent: `*.corp.example` matches
  `corp.example` and `app.corp.example` (but not `a.b.corp.example`; use `**.corp.example`);
- everything else is literal. A trailing dot on either side is ignored.

`domain_matches(pattern, domain)` is the API; compiled patterns are cached, since the same
few resource addresses are checked on every AssignedIps.
"""

from __future__ import annotations

import functools
import re


def _label_regex(label: str) -> str:
    if label == "**":
        raise AssertionError("handled by the caller")
    out = []
    for ch in label:
        if ch == "*":
            out.append(r"[^.]*")
        elif ch == "?":
            out.append(r"[^.]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    labels = pattern.lower().rstrip(".").split(".")
    parts: list[str] = []
    for i, label in enumerate(labels):
        last = i == len(labels) - 1
        if label == "**":
            # Zero or more whole labels, each followed by its dot (or the end of the name).
            parts.append(r"(?:[^.]+\.)*" if not last else r"(?:[^.]+(?:\.[^.]+)*)?")
        else:
            parts.append(_label_regex(label) + ("" if last else r"\."))
    body = "".join(parts)
    if len(labels) > 1 and labels[0] == "*":
        # `*.x` also matches `x` itself (upstream's special case).
        rest = "".join(parts[1:])
        body = f"(?:{body}|{rest})"
    return re.compile(body)


def domain_matches(pattern: str, domain: str) -> bool:
    """True when `domain` is covered by the DNS resource address `pattern`."""
    name = domain.lower().rstrip(".")
    if not name or not pattern:
        return False
    return _compile(pattern).fullmatch(name) is not None
