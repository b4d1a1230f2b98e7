"""Byte-sortable LMDB keys.

Every index key sorts so that "the next thing to do" is one cursor seek:

- ``pending``:  queue NUL priority(1) seq(8)       -> job_id
- ``due``:      due_at(8) job_id                    -> b""   (scheduled and retrying jobs)
- ``leases``:   lease_expires_at(8) job_id          -> b""   (active jobs)
- ``expiry``:   expire_at(8) job_id                 -> b""   (TTL of not-yet-started jobs)
- ``dedupe_at``: stored_at(8) request_id            -> b""   (age order of dedupe records)
- ``errors``:   job_id NUL attempt(4)               -> error record
- ``by_queue``: queue NUL state(1) job_id           -> b""   (jobs that wait or finished: every
  state but pending and active, which have the two indexes above; `dead` jobs of a queue are one
  contiguous range, and so are the targets of clear_queue / drain_queue / delete_queue)
- ``done``:     finished_at(8) job_id               -> b""   (completed and cancelled jobs, for retention)
- ``schedule_due``: next_fire_at(8) name            -> b""   (cron schedules, next fire first)
- ``throttled``: queue                              -> b""   (queues with a throttle, for the lifecycle)
- ``schedules``: name -> schedule record; ``workers``: worker_id -> worker record
- ``prices``:   provider NUL model                  -> price record (USD per million tokens)
- ``usage``:    job_id NUL n(4)                     -> usage record of the job's n-th metered attempt
  (outlives the job: retention and delete_job leave it, so rollups can be rebuilt from LMDB)
- ``usage_seq``: seq(8)                             -> usage key (one entry per usage record, at the
  sequence number of its last write: the usage actor reads the records written after its position)
- ``budgets``:  budget_id                           -> budget record (limits, window, spend counters)
- ``budget_scope``: scope NUL target                -> ids of the budgets of that scope (storage/budgets.py)
- ``budget_held``: budget_id NUL job_id             -> b""   (jobs held by that budget)
- ``budget_resume``: reset_at(8) budget_id          -> b""   (budgets with held jobs, by window end)
- ``hold_due``: hold_until(8) job_id                -> b""   (held jobs with a hold time-out)
- ``audit``:    seq(8)                              -> audit record (storage/audit.py)
- ``audit_by_job`` / ``audit_by_budget``: id NUL seq(8) -> b""
- ``iterations``: job_id NUL n(4)                   -> record of the agent job's n-th iteration (storage/agents.py)
- ``tokens``:   token_id                            -> API token record: name, role, SHA-256 of the secret (storage/tokens.py)

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
            b"dedupe", b"dedupe_at", b"errors", b"workers", b"batches", b"by_queue", b"done", b"schedules",
            b"schedule_due", b"throttled", b"prices", b"usage", b"usage_seq", b"budgets", b"budget_scope",
            b"budget_held", b"budget_resume", b"hold_due", b"audit", b"audit_by_job", b"audit_by_budget", b"iterations",
            b"tokens")

#: One byte per state in `by_queue` keys (STATES order of storage/states.py).
STATE_CODE = {"scheduled": 1, "pending": 2, "active": 3, "completed": 4, "retrying": 5, "dead": 6,
              "cancelled": 7, "held": 8}
CODE_STATE = {v: k for k, v in STATE_CODE.items()}


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


def by_queue_key(queue: str, state: str, job_id: str) -> bytes:
    return queue.encode() + b"\x00" + bytes((STATE_CODE[state],)) + job_id.encode()


def by_queue_prefix(queue: str, state: str | None = None) -> bytes:
    """Every `by_queue` key of a queue, or of one state of it."""
    prefix = queue.encode() + b"\x00"
    return prefix if state is None else prefix + bytes((STATE_CODE[state],))


def parse_by_queue(key: bytes) -> tuple[str, str, str]:
    """(queue, state, job_id) of a `by_queue` key."""
    queue, _, rest = key.partition(b"\x00")
    return queue.decode(), CODE_STATE[rest[0]], rest[1:].decode()


def price_key(provider: str, model: str) -> bytes:
    return provider.encode() + b"\x00" + model.encode()


def usage_key(job_id: str, n: int) -> bytes:
    return job_id.encode() + b"\x00" + _U32.pack(n)


def parse_usage_key(key: bytes) -> tuple[str, int]:
    """(job_id, n) of a `usage` key."""
    return bytes(key[:-5]).decode(), _U32.unpack(key[-4:])[0]


def budget_held_key(budget_id: str, job_id: str) -> bytes:
    return budget_id.encode() + b"\x00" + job_id.encode()


def budget_held_prefix(budget_id: str) -> bytes:
    return budget_id.encode() + b"\x00"


def seq_index_key(ident: str, seq: int) -> bytes:
    return ident.encode() + b"\x00" + _U64.pack(seq)


def seq_index_prefix(ident: str) -> bytes:
    return ident.encode() + b"\x00"


def iteration_key(job_id: str, n: int) -> bytes:
    return job_id.encode() + b"\x00" + _U32.pack(n)


def iteration_prefix(job_id: str) -> bytes:
    return job_id.encode() + b"\x00"
