"""How the stateful targets read one fuzz input: a sequence of records, and a seeded rng.

A record is one tag byte, a big-endian u16 length and that many body bytes (the last
record's body may be cut short by the end of the input). The tag tells the target what to
do with the body (deliver it as a datagram, advance the clock, ...). `join` builds inputs
for the seed corpus and the regression tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MAX_RECORDS = 48


def records(data: bytes, limit: int = MAX_RECORDS) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    offset = 0
    while offset + 3 <= len(data) and len(out) < limit:
        tag = data[offset]
        size = int.from_bytes(data[offset + 1 : offset + 3], "big")
        out.append((tag, data[offset + 3 : offset + 3 + size]))
        offset += 3 + size
    return out


def join(items: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for tag, body in items:
        if not 0 <= tag <= 255 or len(body) > 0xFFFF:
            raise ValueError("a record is a tag byte and at most 65535 bytes")
        out += bytes((tag,)) + len(body).to_bytes(2, "big") + body
    return bytes(out)


class Rng:
    """Deterministic bytes (SHA-256 in counter mode): the same input always meets the same
    transaction ids, keys and indices, so a saved input reproduces."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self._counter += 1
            out += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
        return out[:n]
