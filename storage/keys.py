"""Byte-sortable LMDB keys.

Every index key sorts so that "the next thing to do" is one cursor seek:

- ``pending``:  queue NUL priority(1) seq(8)       -> job_id
- ``due``:      due_at(8) job_id                    -> b""   (scheduled and retrying jobs)
- ``leases``:   lease_expires_at(8) job_id          -> b""   (active jobs)
- ``expiry``:   expire_at(8) job_id                 -> b""   (TTL of not-yet-started jobs)
- ``dedupe_at``: stored_at(8) request_id            -> b""   (age order of dedupe records)
- ``errors``:   job_id NUL attempt(4)               -> error record

Queue names are ASCII without NUL (transport/ops.py), so NUL ends the queue
part and every queue's keys form one contiguous range.
"""
from __future__ import annotations

import struct

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")

PRIORITY_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}
RANK_PRIORITY = {v: k for k, v in PRIORITY_RANK.items()}

# Named databases inside the one LMDB environment.
DB_NAMES = (b"meta", b"jobs", b"pending", b"due", b"leases", b"expiry", b"unique", b"queues",
            b"dedupe", b"dedupe_at", b"errors", b"workers", b"batches")


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


def pending_key(queue: str, priority: str, seq: int) -> bytes:
    return queue.encode() + b"\x00" + bytes((PRIORITY_RANK[priority],)) + _U64.pack(seq)


def pending_prefix(queue: str) -> bytes:
    return queue.encode() + b"\x00"


def parse_pending(key: bytes) -> tuple[int, int]:
    """(priority rank, seq) of a pending key."""
    return key[-9], _U64.unpack(key[-8:])[0]


def time_key(at_ms: int, ident: str) -> bytes:
    return _U64.pack(max(0, at_ms)) + ident.encode()


def parse_time_key(key: bytes) -> tuple[int, str]:
    return _U64.unpack(key[:8])[0], key[8:].decode()


def unique_key(queue: str, key: str) -> bytes:
    return queue.encode() + b"\x00" + key.encode()


def error_key(job_id: str, attempt: int) -> bytes:
    return job_id.encode() + b"\x00" + _U32.pack(attempt)


def error_prefix(job_id: str) -> bytes:
    return job_id.encode() + b"\x00"
