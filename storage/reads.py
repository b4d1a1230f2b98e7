"""Point reads from LMDB for the gateway and lifecycle (read-only transactions)."""
from __future__ import annotations

from jobbie.transport.codec import decode_trusted

from . import keys as K
from .machine import applied_index
from .states import STATES

#: Fields the state machine keeps for itself and get_job does not show.
_PRIVATE = ("seq", "batch_counted")


def get_job(txn, dbs, job_id: str) -> dict | None:
    raw = txn.get(job_id.encode(), db=dbs["jobs"])
    if raw is None:
        return None
    job = decode_trusted(raw)
    for name in _PRIVATE:
        job.pop(name, None)
    errors = []
    cur = txn.cursor(db=dbs["errors"])
    prefix = K.error_prefix(job_id)
    if cur.set_range(prefix):
        for key, value in cur:
            if not key.startswith(prefix):
                break
            errors.append(decode_trusted(value))
    job["errors"] = errors
    return job


def list_queues(txn, dbs) -> list[dict]:
    out = []
    for _, raw in txn.cursor(db=dbs["queues"]):
        rec = decode_trusted(raw)
        row = {"name": rec["name"], "paused": rec["paused"]}
        for state in STATES:
            row[state] = rec["counts"].get(state, 0)
        out.append(row)
    return out


def next_deadline(txn, dbs, dedupe_ttl_ms: int) -> int | None:
    """The earliest time (state-clock ms) at which a `tick` has work to do, or None."""
    times = []
    for name in ("due", "leases", "expiry"):
        cur = txn.cursor(db=dbs[name])
        if cur.first():
            times.append(K.parse_time_key(cur.key())[0])
    cur = txn.cursor(db=dbs["dedupe_at"])
    if cur.first():
        times.append(K.parse_time_key(cur.key())[0] + dedupe_ttl_ms)
    return min(times) if times else None


def status(txn, dbs) -> dict:
    return {"applied_index": applied_index(txn, dbs)}


# ----------------------------------------------------------------- read ops
# One function per `read` op of transport/ops.py: (txn, dbs, args) -> the `ok` map,
# or None for "not found". The gateway dispatches through READERS.

def read_get_job(txn, dbs, args):
    return get_job(txn, dbs, args["job_id"])


def read_list_queues(txn, dbs, args):
    return {"queues": list_queues(txn, dbs)}


READERS = {
    "get_job": read_get_job,
    "list_queues": read_list_queues,
}
