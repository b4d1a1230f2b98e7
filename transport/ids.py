"""Sortable ids: a prefix plus a ULID (48-bit ms time, 80 random bits, Crockford base32).

Ids made by one generator sort in creation order even within one millisecond
(the random part is incremented), so `job_...` ids list in enqueue order.
"""
from __future__ import annotations

import base64
import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: base64.b32encode's digits (RFC 4648) to Crockford's: one C pass instead of a loop per digit.
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode("ascii"))


def crockford32(n: int, length: int) -> str:
    """The low 5 × `length` bits of `n` as `length` Crockford base32 digits (big-endian), as ULIDs spell it."""
    bits = 5 * length
    pad = -bits % 40  # b32encode takes whole 5-byte groups
    raw = ((n & ((1 << bits) - 1)) << pad).to_bytes((bits + pad) // 8, "big")
    return base64.b32encode(raw)[:length].translate(_FROM_RFC4648).decode("ascii")


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
