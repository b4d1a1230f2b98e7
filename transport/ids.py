"""Sortable ids: a prefix plus a ULID (48-bit ms time, 80 random bits, Crockford base32).

Ids made by one generator sort in creation order even within one millisecond
(the random part is incremented), so `job_...` ids list in enqueue order.
"""
from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def crockford32(n: int, length: int) -> str:
    """`n` as `length` Crockford base32 digits (big-endian), as ULIDs spell it."""
    out = []
    for _ in range(length):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


class IdGenerator:
    """Monotonic ULIDs for one process."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._last_ms = -1
        self._last_rand = 0

    def ulid(self) -> str:
        ms = int(self._clock() * 1000)
        if ms <= self._last_ms:
            ms = self._last_ms
            rand = self._last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # leave room to increment
        self._last_ms, self._last_rand = ms, rand
        return crockford32(ms, 10) + crockford32(rand, 16)

    def new(self, prefix: str) -> str:
        return f"{prefix}_{self.ulid()}"
