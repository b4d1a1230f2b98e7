"""Point reads from LMDB for the gateway and lifecycle (read-only transactions)."""
from __future__ import annotations

import hashlib
import heapq
import struct

from jobbie.transport.codec import decode_trusted

from . import agents, audit, budgets, holds, tokens
from . import keys as K
from .machine import applied_index
from .queues import window_reopens_at
from .states import DEAD, STATES
from .tick import SWEEP_AT
from .usage import READERS as usage_reads

#: Job ids list_workers shows per worker (the `active` count is exact).
WORKER_JOBS_SHOWN = 100

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
    job["audit"] = audit.for_job(txn, dbs, job_id)
    return job


def list_queues(txn, dbs) -> list[dict]:
    out = []
    for _, raw in txn.cursor(db=dbs["queues"]):
        rec = decode_trusted(raw)
        row = {"name": rec["name"], "paused": rec["paused"]}
        for state in STATES:
            row[state] = rec["counts"].get(state, 0)
        row["max_concurrency"] = rec.get("max_concurrency")
        row["throttle"] = rec.get("throttle")
        out.append(row)
    return out


def next_deadline(txn, dbs, dedupe_ttl_ms: int, completed_retention_ms: int | None = None,
                  worker_retention_ms: int | None = None) -> int | None:
    """The earliest time (state-clock ms) at which a `tick` has work to do, or None.

    Heads of the time indexes (due jobs, leases, TTLs, cron schedules), the oldest
    dedupe record + its TTL, the oldest finished job + the retention (when one is
    given: the lifecycle passes the value it puts in its ticks), the next sweep of
    the worker records (when a worker retention is given and there are workers),
    and the moment a used-up throttle window of a queue with pending jobs ends.
    """
    times = []
    for name in ("due", "leases", "expiry", "schedule_due", "hold_due", "budget_resume"):
        cur = txn.cursor(db=dbs[name])
        if cur.first():
            times.append(K.parse_time_key(cur.key())[0])
    cur = txn.cursor(db=dbs["dedupe_at"])
    if cur.first():
        times.append(K.parse_time_key(cur.key())[0] + dedupe_ttl_ms)
    if completed_retention_ms:
        cur = txn.cursor(db=dbs["done"])
        if cur.first():
            times.append(K.parse_time_key(cur.key())[0] + completed_retention_ms)
    if worker_retention_ms and txn.cursor(db=dbs["workers"]).first():
        raw = txn.get(SWEEP_AT, db=dbs["meta"])
        times.append(0 if raw is None else K.read_u64(raw))
    for name in txn.cursor(db=dbs["throttled"]).iternext(keys=True, values=False):
        raw = txn.get(name, db=dbs["queues"])
        at = None if raw is None else window_reopens_at(decode_trusted(raw))
        if at is not None:
            times.append(at)
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


def read_list_workers(txn, dbs, args):
    limit, after = args.get("limit", 1000), args.get("after")
    workers = {}
    cur = txn.cursor(db=dbs["workers"])
    found = cur.set_range(after.encode()) if after else cur.first()
    more = False
    while found:
        if after is None or bytes(cur.key()) != after.encode():
            if len(workers) >= limit:
                more = True
                break
            rec = decode_trusted(cur.value())
            workers[rec["worker_id"]] = {"worker_id": rec["worker_id"], "hostname": rec.get("hostname"),
                                         "last_seen_at": rec["last_seen_at"], "active": 0, "jobs": []}
        found = cur.next()
    if workers:
        # Who holds what: one pass over the active jobs (the leases index).
        for key in txn.cursor(db=dbs["leases"]).iternext(keys=True, values=False):
            raw = txn.get(K.parse_time_key(key)[1].encode(), db=dbs["jobs"])
            job = decode_trusted(raw) if raw is not None else None
            row = workers.get(job.get("worker_id")) if job else None
            if row is not None:
                row["active"] += 1
                if len(row["jobs"]) < WORKER_JOBS_SHOWN:
                    row["jobs"].append(job["id"])
    rows = list(workers.values())
    for row in rows:
        row["jobs"].sort()
    return {"workers": rows, "cursor": rows[-1]["worker_id"] if more and rows else None}


def _dead_ids(txn, dbs, queue: str, after: str | None):
    """The queue's dead job ids after `after`, in id order (a cursor over by_queue)."""
    prefix = K.by_queue_prefix(queue, DEAD)
    cur = txn.cursor(db=dbs["by_queue"])
    if not cur.set_range(prefix + (after.encode() if after else b"")):
        return
    for key in cur.iternext(keys=True, values=False):
        if not key.startswith(prefix):
            return
        job_id = bytes(key[len(prefix):]).decode()
        if job_id != after:
            yield job_id


def read_list_dead(txn, dbs, args):
    limit, after, queue = args.get("limit", 50), args.get("after"), args.get("queue")
    if queue is not None:
        ids = _dead_ids(txn, dbs, queue, after)
    else:
        # Every queue with dead jobs, merged by job id (one seek per queue).
        streams = []
        for _, raw in txn.cursor(db=dbs["queues"]):
            rec = decode_trusted(raw)
            if rec["counts"].get(DEAD):
                streams.append(_dead_ids(txn, dbs, rec["name"], after))
        ids = heapq.merge(*streams)
    jobs, more = [], False
    for job_id in ids:
        if len(jobs) >= limit:
            more = True
            break
        job = decode_trusted(txn.get(job_id.encode(), db=dbs["jobs"]))
        jobs.append({"job_id": job_id, "queue": job["queue"], "priority": job["priority"],
                     "attempt": job["attempt"], "max_retries": job["max_retries"],
                     "last_error": job.get("last_error"), "failed_at": job.get("failed_at"),
                     "dead_at": job.get("finished_at"), "created_at": job["created_at"], "tags": job["tags"]})
    return {"jobs": jobs, "cursor": jobs[-1]["job_id"] if more else None}


def read_list_schedules(txn, dbs, args):
    return {"schedules": [decode_trusted(raw) for _, raw in txn.cursor(db=dbs["schedules"])]}


def read_digest(txn, dbs, args):
    """A hash of every key and value of every named database, read in one transaction.

    The state machine is deterministic, so two replicas at the same `applied_index` must give the
    same digest; different ones at the same index mean the replicas diverged. It reads the whole
    store (about a second per million jobs), so it is an operator's tool, not a health probe.
    """
    total = hashlib.blake2b(digest_size=16)
    per_db = {}
    for raw_name in K.DB_NAMES:
        name = raw_name.decode()
        h = hashlib.blake2b(digest_size=16)
        entries = 0
        for key, value in txn.cursor(db=dbs[name]):
            h.update(struct.pack(">II", len(key), len(value)))
            h.update(key)
            h.update(value)
            entries += 1
        per_db[name] = {"entries": entries, "digest": h.hexdigest()}
        total.update(struct.pack(">I", len(raw_name)) + raw_name + h.digest())
    return {"applied_index": applied_index(txn, dbs), "digest": total.hexdigest(), "dbs": per_db}


READERS = {
    **usage_reads,
    **audit.READERS,
    **budgets.READERS,
    **holds.READERS,
    **tokens.READERS,
    **agents.READERS,
    "get_job": read_get_job,
    "list_queues": read_list_queues,
    "list_workers": read_list_workers,
    "list_dead": read_list_dead,
    "list_schedules": read_list_schedules,
    "digest": read_digest,
}
