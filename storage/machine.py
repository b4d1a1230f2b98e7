"""The pure state machine: raft entries in, LMDB changes and per-op results out.

It owns every lifecycle rule (priorities, delays, leases, retries with backoff,
dead letters, uniqueness, TTL expiry, cancellation, batches) and keeps these
promises:

- Deterministic. It reads no clock and no randomness: ids and `now` travel in
  each op; the state clock is the largest `now` seen, so time never runs
  backwards between nodes. It iterates LMDB key order, never a Python set, and
  reads no node-local configuration.
- Exactly once per index. An entry is applied in one write transaction that
  also stores its raft index; an entry at or below the stored index is a no-op,
  which is what makes journal replay after a restart safe.
- Total. A refused op is a returned `{"err": ...}` result; each op runs in a
  nested transaction, so one that is refused (or hits a bug) leaves nothing
  behind and cannot sink the rest of its batch. Only storage faults
  (`lmdb.Error`) escape; the raft shell crashes the process on them and replay
  recovers.
"""
from __future__ import annotations

import hashlib
import logging

import lmdb

from jobbie.transport.codec import decode_trusted, encode
from jobbie.transport.errors import InvariantViolation, check, error_result

from . import keys as K
from .states import (ACTIVE, CANCELLED, COMPLETED, DEAD, HELD, PENDING, RETRYING, SCHEDULED, STATES,
                     TERMINAL, allowed)

log = logging.getLogger("jobbie.machine")

#: How long a request_id is remembered (replicated rule, same on every node).
DEDUPE_TTL_MS = 5 * 60_000
#: Errors kept per job; older attempts' records are dropped.
ERRORS_KEPT = 50

ENTRY_VERSION = 1


class Changes:
    """What an applied entry changed, for the gateway (long-poll wake-ups) and the mirror."""

    __slots__ = ("woken", "jobs")

    def __init__(self):
        self.woken: dict[str, int] = {}
        self.jobs: list[str] = []

    def wake(self, queue: str, n: int = 1):
        self.woken[queue] = self.woken.get(queue, 0) + n


def _ok(**fields):
    return {"ok": fields}


def fingerprint(op_name: str, args: dict) -> bytes:
    body = {k: v for k, v in args.items() if k != "request_id"}
    return hashlib.blake2b(encode([op_name, body]), digest_size=8).digest()


def backoff_ms(backoff: dict | None, attempt: int) -> int:
    """Delay before the next attempt after attempt number `attempt` (1-based) failed."""
    b = backoff or {"strategy": "exponential", "base_ms": 1000, "max_ms": 600_000}
    strategy, base, cap = b["strategy"], b["base_ms"], b["max_ms"]
    if strategy == "none":
        return 0
    if strategy == "fixed":
        delay = base
    elif strategy == "linear":
        delay = base * attempt
    else:
        delay = base * (2 ** min(attempt - 1, 40))
    return min(delay, cap)


class Apply:
    """One op's view of the store: its transaction, the state clock and helpers."""

    def __init__(self, txn, dbs, now: int, changes: Changes):
        self.txn = txn
        self.db = dbs
        self.now = now
        self.changes = changes

    # ---------------------------------------------------------------- records
    def get(self, db, key: bytes):
        raw = self.txn.get(key, db=self.db[db])
        return None if raw is None else decode_trusted(raw)

    def put(self, db, key: bytes, value):
        self.txn.put(key, encode(value), db=self.db[db])

    def job(self, job_id: str):
        return self.get("jobs", job_id.encode())

    def save_job(self, job):
        job["updated_at"] = self.now
        self.put("jobs", job["id"].encode(), job)
        self.changes.jobs.append(job["id"])

    def meta_int(self, name: bytes, default: int = 0) -> int:
        raw = self.txn.get(name, db=self.db["meta"])
        return default if raw is None else K.read_u64(raw)

    def set_meta_int(self, name: bytes, value: int):
        self.txn.put(name, K.u64(value), db=self.db["meta"])

    def next_seq(self) -> int:
        seq = self.meta_int(b"seq") + 1
        self.set_meta_int(b"seq", seq)
        return seq

    def queue(self, name: str) -> dict:
        rec = self.get("queues", name.encode())
        if rec is None:
            rec = {"name": name, "paused": False, "counts": {s: 0 for s in STATES}}
        return rec

    def count(self, queue: str, state: str | None, delta: int):
        if state is None:
            return
        rec = self.queue(queue)
        rec["counts"][state] = rec["counts"].get(state, 0) + delta
        check(rec["counts"][state] >= 0, f"negative {state} count for queue {queue}")
        self.put("queues", queue.encode(), rec)

    # ---------------------------------------------------------------- indexes
    def _index_for(self, job) -> tuple[str, bytes] | None:
        state = job["state"]
        if state == PENDING:
            return "pending", K.pending_key(job["queue"], job["priority"], job["seq"])
        if state in (SCHEDULED, RETRYING):
            return "due", K.time_key(job["run_at"], job["id"])
        if state == ACTIVE:
            return "leases", K.time_key(job["lease_expires_at"], job["id"])
        return None

    def unindex(self, job):
        idx = self._index_for(job)
        if idx is not None:
            found = self.txn.delete(idx[1], db=self.db[idx[0]])
            check(found, f"job {job['id']} in state {job['state']} was missing from its {idx[0]} index")

    def index(self, job):
        idx = self._index_for(job)
        if idx is not None:
            value = job["id"].encode() if idx[0] == "pending" else b""
            self.txn.put(idx[1], value, db=self.db[idx[0]])

    def move(self, job, state: str, event: str):
        """Change a job's state: check the table, keep indexes and counts in step."""
        src = job["state"]
        check(allowed(src, state), f"job {job['id']}: {src} -> {state} is not a legal move ({event})")
        self.unindex(job)
        self.count(job["queue"], src, -1)
        job["state"] = state
        if state == PENDING:
            job["seq"] = self.next_seq()
            self.changes.wake(job["queue"])
        self.index(job)
        self.count(job["queue"], state, +1)
        if state in TERMINAL:
            self.drop_expiry(job)
            self.release_unique(job)
            self.finish_batch_member(job, succeeded=state == COMPLETED)

    def drop_expiry(self, job):
        if job.get("expire_at") is not None:
            self.txn.delete(K.time_key(job["expire_at"], job["id"]), db=self.db["expiry"])

    def release_unique(self, job, deleting: bool = False):
        if job.get("unique_key") is None:
            return
        if job.get("unique_period_ms") is not None and not deleting:
            return  # a period lock outlives the job on purpose, but not its deletion
        ukey = K.unique_key(job["queue"], job["unique_key"])
        lock = self.get("unique", ukey)
        if lock is not None and lock[0] == job["id"]:
            self.txn.delete(ukey, db=self.db["unique"])

    def finish_batch_member(self, job, succeeded: bool):
        batch_id = job.get("batch_id")
        if batch_id is None or job.get("batch_counted"):
            return
        job["batch_counted"] = True
        batch = self.get("batches", batch_id.encode())
        if batch is None:
            return
        batch["finished"] += 1
        batch["succeeded" if succeeded else "failed"] += 1
        self.put("batches", batch_id.encode(), batch)
        if batch["finished"] == batch["total"]:
            self.fire_batch_callback(batch)

    def fire_batch_callback(self, batch):
        if batch.get("callback_queue") is None:
            return
        payload = {"batch_id": batch["id"], "total": batch["total"], "succeeded": batch["succeeded"],
                   "failed": batch["failed"], "payload": batch.get("callback_payload")}
        self.create_job(batch["callback_job_id"], {"queue": batch["callback_queue"], "payload": payload,
                                                   "priority": "normal", "max_retries": 3})

    def record_error(self, job, message: str, backtrace: str | None = None):
        rec = {"attempt": job["attempt"], "error": message, "at": self.now, "worker_id": job.get("worker_id")}
        if backtrace:
            rec["backtrace"] = backtrace
        self.put("errors", K.error_key(job["id"], job["attempt"]), rec)
        old = job["attempt"] - ERRORS_KEPT
        if old >= 0:
            self.txn.delete(K.error_key(job["id"], old), db=self.db["errors"])
        job["last_error"] = message
        job["failed_at"] = self.now

    def record_usage(self, job, usage: dict | None):
        if not usage:
            return
        entries = [u for u in job.get("usage") or [] if u.get("attempt") != job["attempt"]]
        entries.append(dict(usage, attempt=job["attempt"]))
        job["usage"] = entries
        total = {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        for u in entries:
            total["input_tokens"] += u.get("input_tokens") or 0
            total["output_tokens"] += u.get("output_tokens") or 0
            total["cost_usd"] += u.get("cost_usd") or 0.0
        job["usage_total"] = total

    # ---------------------------------------------------------------- creation
    def unique_holder(self, queue: str, unique_key: str) -> str | None:
        """The live job holding (queue, key), if any."""
        lock = self.get("unique", K.unique_key(queue, unique_key))
        if lock is None:
            return None
        holder, until = lock
        job = self.job(holder)
        if job is None:
            return None
        if until is not None:
            return holder if until > self.now else None
        return None if job["state"] in TERMINAL else holder

    def create_job(self, job_id: str, args: dict, batch_id: str | None = None) -> dict:
        now = self.now
        check(self.txn.get(job_id.encode(), db=self.db["jobs"]) is None, f"job id {job_id} reused")
        run_at = args.get("run_at")
        if run_at is None and args.get("delay_ms"):
            run_at = now + args["delay_ms"]
        if args.get("hold"):
            state = HELD
        elif run_at is not None and run_at > now:
            state = SCHEDULED
        else:
            state = PENDING
        expire_at = now + args["expire_after_ms"] if args.get("expire_after_ms") else None
        job = {
            "id": job_id, "queue": args["queue"], "payload": args.get("payload"),
            "priority": args.get("priority", "normal"), "state": None, "attempt": 0,
            "max_retries": args.get("max_retries", 3), "backoff": args.get("backoff"),
            "run_at": run_at if run_at is not None else now, "expire_at": expire_at,
            "unique_key": args.get("unique_key"), "unique_period_ms": args.get("unique_period_ms"),
            "tags": args.get("tags") or {}, "batch_id": batch_id, "worker_id": None, "hostname": None,
            "lease_ms": None, "lease_expires_at": None, "progress": None, "checkpoint": None,
            "result": None, "created_at": now, "updated_at": now, "started_at": None,
            "completed_at": None, "failed_at": None, "last_error": None, "seq": 0,
            "cancel_requested": False, "hold_reason": args.get("hold_reason"), "agent": args.get("agent"),
            "usage": [], "usage_total": None,
        }
        job["state"] = None
        self.move(job, state, "enqueue")
        if expire_at is not None:
            self.txn.put(K.time_key(expire_at, job_id), b"", db=self.db["expiry"])
        if job["unique_key"] is not None:
            until = now + job["unique_period_ms"] if job["unique_period_ms"] else None
            self.put("unique", K.unique_key(job["queue"], job["unique_key"]), [job_id, until])
        self.save_job(job)
        return job


# =================================================================== op handlers
# Each handler checks everything before its first write and returns one result.

def handle_enqueue(a: Apply, args: dict, ids: list) -> dict:
    if args.get("unique_key") is not None:
        holder = a.unique_holder(args["queue"], args["unique_key"])
        if holder is not None:
            return _ok(job_id=holder, state=a.job(holder)["state"], unique_existing=True)
    job = a.create_job(ids[0], args)
    return _ok(job_id=job["id"], state=job["state"], unique_existing=False)


def handle_enqueue_batch(a: Apply, args: dict, ids: list) -> dict:
    jobs = args["jobs"]
    batch = args.get("batch")
    check(len(ids) == len(jobs) + (2 if batch else 0), "enqueue_batch carries the wrong number of ids")
    batch_id = ids[len(jobs)] if batch else None
    job_ids, created = [], 0
    for job_args, job_id in zip(jobs, ids):
        holder = None
        if job_args.get("unique_key") is not None:
            holder = a.unique_holder(job_args["queue"], job_args["unique_key"])
        if holder is not None:
            job_ids.append(holder)
            continue
        a.create_job(job_id, job_args, batch_id=batch_id)
        job_ids.append(job_id)
        created += 1
    if batch:
        rec = {"id": batch_id, "total": created, "finished": 0, "succeeded": 0, "failed": 0,
               "callback_queue": batch["callback_queue"], "callback_payload": batch.get("callback_payload"),
               "callback_job_id": ids[len(jobs) + 1], "created_at": a.now}
        a.put("batches", batch_id.encode(), rec)
        if created == 0:
            a.fire_batch_callback(rec)
    return _ok(job_ids=job_ids, batch_id=batch_id)


def handle_fetch(a: Apply, args: dict, ids: list) -> dict:
    wanted = args.get("count", 1)
    lease_ms = args.get("lease_ms", 30_000)
    worker_id = args["worker_id"]
    # One cursor per unpaused queue; repeatedly take the best head (priority, then seq).
    heads = []
    for q in args["queues"]:
        if a.queue(q)["paused"]:
            continue
        cur = a.txn.cursor(db=a.db["pending"])
        prefix = K.pending_prefix(q)
        if cur.set_range(prefix) and cur.key().startswith(prefix):
            heads.append([K.parse_pending(cur.key()), cur, prefix])
    out = []
    while heads and len(out) < wanted:
        best = min(heads, key=lambda h: h[0])
        cur = best[1]
        job = a.job(cur.value().decode())
        check(job is not None and job["state"] == PENDING, "pending index points at a job that is not pending")
        has_next = cur.next() and cur.key().startswith(best[2])
        next_rank = K.parse_pending(cur.key()) if has_next else None
        if has_next:
            best[0] = next_rank
        else:
            heads.remove(best)
        if job.get("expire_at") is not None and job["expire_at"] <= a.now:
            # Past its TTL but not yet swept by a tick: never hand it out.
            job["last_error"] = "expired"
            job["failed_at"] = a.now
            a.move(job, DEAD, "tick: expired")
            a.save_job(job)
            continue
        job["attempt"] += 1
        job["worker_id"] = worker_id
        job["hostname"] = args.get("hostname")
        job["lease_ms"] = lease_ms
        job["lease_expires_at"] = a.now + lease_ms
        job["started_at"] = a.now
        a.move(job, ACTIVE, "fetch")
        a.save_job(job)
        out.append({"job_id": job["id"], "queue": job["queue"], "payload": job["payload"],
                    "attempt": job["attempt"], "max_retries": job["max_retries"], "lease_ms": lease_ms,
                    "checkpoint": job["checkpoint"], "tags": job["tags"], "agent": job["agent"]})
    a.put("workers", worker_id.encode(), {"worker_id": worker_id, "hostname": args.get("hostname"),
                                          "last_seen_at": a.now})
    return _ok(jobs=out)


def _lease_holder(a: Apply, args: dict):
    """The active job the caller holds, or a refusal."""
    job = a.job(args["job_id"])
    if job is None:
        return None, error_result("NOT_FOUND", f"job {args['job_id']} not found", "job_id")
    attempt = args.get("attempt")
    if job["state"] != ACTIVE or (attempt is not None and attempt != job["attempt"]):
        return job, error_result("FAILED_PRECONDITION",
                                 f"job {job['id']} is no longer leased to this attempt (state {job['state']}, "
                                 f"attempt {job['attempt']})", "attempt", "lease_lost")
    return job, None


def handle_ack(a: Apply, args: dict, ids: list) -> dict:
    job, refusal = _lease_holder(a, args)
    if refusal is not None:
        attempt = args.get("attempt")
        if job is not None and job["state"] == COMPLETED and (attempt is None or attempt == job["attempt"]):
            return _ok(state=COMPLETED)  # the same ack again: same answer
        return refusal
    job["result"] = args.get("result")
    if "trace" in args:
        job["trace"] = args["trace"]
    if "checkpoint" in args:
        job["checkpoint"] = args["checkpoint"]
    a.record_usage(job, args.get("usage"))
    job["completed_at"] = a.now
    a.move(job, COMPLETED, "ack")
    job["lease_expires_at"] = None
    a.save_job(job)
    return _ok(state=COMPLETED)


def handle_fail(a: Apply, args: dict, ids: list) -> dict:
    job, refusal = _lease_holder(a, args)
    if refusal is not None:
        return refusal
    if "checkpoint" in args:
        job["checkpoint"] = args["checkpoint"]
    a.record_usage(job, args.get("usage"))
    a.record_error(job, args.get("error") or "", args.get("backtrace"))
    next_at, remaining = _after_failed_attempt(a, job, "fail")
    a.save_job(job)
    return _ok(state=job["state"], next_attempt_at=next_at, attempts_remaining=remaining)


def _after_failed_attempt(a: Apply, job, event: str):
    """Move an active job whose attempt failed; returns (next_attempt_at, attempts_remaining)."""
    expired = job.get("expire_at") is not None and a.now >= job["expire_at"]
    remaining = max(0, job["max_retries"] + 1 - job["attempt"])
    if job["cancel_requested"]:
        a.move(job, CANCELLED, event)
        next_at, remaining = None, 0
    elif expired or remaining == 0:
        if expired:
            job["last_error"] = f"{job['last_error']} (job expired)" if job["last_error"] else "expired"
        a.move(job, DEAD, event)
        next_at, remaining = None, 0
    else:
        delay = backoff_ms(job.get("backoff"), job["attempt"])
        if event == "lease expired":
            # Reclaimed leases go straight back to pending (the worker vanished; no backoff).
            job["run_at"] = a.now
            a.move(job, PENDING, event)
            next_at = a.now
        else:
            job["run_at"] = a.now + delay
            a.move(job, RETRYING, event)
            next_at = job["run_at"]
    job["lease_expires_at"] = None
    return next_at, remaining


def handle_heartbeat(a: Apply, args: dict, ids: list) -> dict:
    out = {}
    worker_id = args["worker_id"]
    for job_id, entry in args["jobs"].items():
        job = a.job(job_id)
        attempt = entry.get("attempt")
        if (job is None or job["state"] != ACTIVE or job["worker_id"] != worker_id
                or (attempt is not None and attempt != job["attempt"])):
            out[job_id] = {"status": "lost", "budget_exceeded": False}
            continue
        if "progress" in entry:
            job["progress"] = entry["progress"]
        if "checkpoint" in entry:
            job["checkpoint"] = entry["checkpoint"]
        a.record_usage(job, entry.get("usage"))
        if job["cancel_requested"]:
            status = "cancel"
        else:
            a.unindex(job)
            job["lease_expires_at"] = a.now + job["lease_ms"]
            a.index(job)
            status = "ok"
        a.save_job(job)
        out[job_id] = {"status": status, "budget_exceeded": False}
    a.put("workers", worker_id.encode(), {"worker_id": worker_id, "last_seen_at": a.now})
    return _ok(jobs=out)


def handle_cancel_job(a: Apply, args: dict, ids: list) -> dict:
    job = a.job(args["job_id"])
    if job is None:
        return error_result("NOT_FOUND", f"job {args['job_id']} not found", "job_id")
    if job["state"] == CANCELLED:
        return _ok(state=CANCELLED, cancel_requested=False)
    if job["state"] in (COMPLETED, DEAD):
        return error_result("FAILED_PRECONDITION", f"job {job['id']} already finished ({job['state']})",
                            "job_id", "already_finished")
    if job["state"] == ACTIVE:
        job["cancel_requested"] = True
        a.save_job(job)
        return _ok(state=ACTIVE, cancel_requested=True)
    a.move(job, CANCELLED, "cancel_job")
    a.save_job(job)
    return _ok(state=CANCELLED, cancel_requested=False)


def handle_retry_job(a: Apply, args: dict, ids: list) -> dict:
    job = a.job(args["job_id"])
    if job is None:
        return error_result("NOT_FOUND", f"job {args['job_id']} not found", "job_id")
    if job["state"] not in (DEAD, CANCELLED, COMPLETED, RETRYING, SCHEDULED):
        return error_result("FAILED_PRECONDITION", f"job {job['id']} is {job['state']}; only dead, cancelled, "
                            "completed, retrying or scheduled jobs can be retried", "job_id", "wrong_state")
    if job["state"] in TERMINAL and job.get("unique_key") is not None and job.get("unique_period_ms") is None:
        holder = a.unique_holder(job["queue"], job["unique_key"])
        if holder is not None and holder != job["id"]:
            return error_result("FAILED_PRECONDITION", f"job {holder} now holds unique key "
                                f"{job['unique_key']!r} on queue {job['queue']}; retrying {job['id']} would make "
                                "a duplicate", "job_id", "unique_conflict")
        a.put("unique", K.unique_key(job["queue"], job["unique_key"]), [job["id"], None])
    if job["state"] in TERMINAL:
        job["attempt"] = 0
        job["cancel_requested"] = False
        if job.get("expire_at") is not None and job["expire_at"] <= a.now:
            job["expire_at"] = None  # a manual retry outlives the original TTL
        elif job.get("expire_at") is not None:
            a.txn.put(K.time_key(job["expire_at"], job["id"]), b"", db=a.db["expiry"])
    a.move(job, PENDING, "retry_job")  # unindexes by the old run_at
    job["run_at"] = a.now
    a.save_job(job)
    return _ok(state=PENDING)


def handle_delete_job(a: Apply, args: dict, ids: list) -> dict:
    job = a.job(args["job_id"])
    if job is None:
        return error_result("NOT_FOUND", f"job {args['job_id']} not found", "job_id")
    a.unindex(job)
    a.count(job["queue"], job["state"], -1)
    a.drop_expiry(job)
    a.release_unique(job, deleting=True)
    if job["state"] not in TERMINAL:
        a.finish_batch_member(job, succeeded=False)
    cur = a.txn.cursor(db=a.db["errors"])
    prefix = K.error_prefix(job["id"])
    if cur.set_range(prefix):
        while cur.key().startswith(prefix):
            if not cur.delete():
                break
    a.txn.delete(job["id"].encode(), db=a.db["jobs"])
    a.changes.jobs.append(job["id"])
    return _ok()


def handle_pause_queue(a: Apply, args: dict, ids: list) -> dict:
    rec = a.queue(args["queue"])
    rec["paused"] = True
    a.put("queues", args["queue"].encode(), rec)
    return _ok()


def handle_resume_queue(a: Apply, args: dict, ids: list) -> dict:
    rec = a.queue(args["queue"])
    rec["paused"] = False
    a.put("queues", args["queue"].encode(), rec)
    if rec["counts"].get(PENDING):
        a.changes.wake(args["queue"], rec["counts"][PENDING])
    return _ok()


def _due(a: Apply, db: str, limit: int):
    """Up to `limit` (time, id) keys of an index that are due at the state clock."""
    cur = a.txn.cursor(db=a.db[db])
    out = []
    if cur.first():
        for key in cur.iternext(keys=True, values=False):
            at, ident = K.parse_time_key(key)
            if at > a.now or len(out) >= limit:
                break
            out.append((at, ident))
    return out


def handle_tick(a: Apply, args: dict, ids: list) -> dict:
    limit = args.get("limit", 1000)
    promoted = reclaimed = expired = 0
    for _, job_id in _due(a, "due", limit):
        job = a.job(job_id)
        check(job is not None and job["state"] in (SCHEDULED, RETRYING), f"due index holds {job_id} wrongly")
        a.move(job, PENDING, "tick: due")
        a.save_job(job)
        promoted += 1
    for _, job_id in _due(a, "leases", limit):
        job = a.job(job_id)
        check(job is not None and job["state"] == ACTIVE, f"lease index holds {job_id} wrongly")
        a.record_error(job, "lease expired")
        _after_failed_attempt(a, job, "lease expired")
        a.save_job(job)
        reclaimed += 1
    for at, job_id in _due(a, "expiry", limit):
        a.txn.delete(K.time_key(at, job_id), db=a.db["expiry"])
        job = a.job(job_id)
        if job is None or job["state"] in TERMINAL or job["state"] == ACTIVE:
            continue  # an active job is judged when its attempt ends
        job["last_error"] = "expired"
        job["failed_at"] = a.now
        a.move(job, DEAD, "tick: expired")
        a.save_job(job)
        expired += 1
    for at, request_id in _due(a, "dedupe_at", limit):
        if at + DEDUPE_TTL_MS > a.now:
            break
        a.txn.delete(K.time_key(at, request_id), db=a.db["dedupe_at"])
        a.txn.delete(request_id.encode(), db=a.db["dedupe"])
    return _ok(promoted=promoted, reclaimed=reclaimed, expired=expired)


HANDLERS = {
    "enqueue": handle_enqueue,
    "enqueue_batch": handle_enqueue_batch,
    "fetch": handle_fetch,
    "ack": handle_ack,
    "fail": handle_fail,
    "heartbeat": handle_heartbeat,
    "cancel_job": handle_cancel_job,
    "retry_job": handle_retry_job,
    "delete_job": handle_delete_job,
    "pause_queue": handle_pause_queue,
    "resume_queue": handle_resume_queue,
    "tick": handle_tick,
}


# =================================================================== the batch

def applied_index(txn, dbs) -> int:
    raw = txn.get(b"applied_index", db=dbs["meta"])
    return 0 if raw is None else K.read_u64(raw)


def apply_batch(store, txn, raft_index: int, ops: list) -> tuple[list | None, Changes]:
    """Apply one raft entry's ops in `txn` (a write txn of `store`); returns (results, changes).

    Returns (None, empty changes) when `raft_index` was applied before.
    Raises only `lmdb.Error` (a storage fault).
    """
    changes = Changes()
    dbs = store.dbs
    if raft_index <= applied_index(txn, dbs):
        return None, changes
    clock = K.read_u64(txn.get(b"clock", db=dbs["meta"]) or K.u64(0))
    results = []
    for op in ops:
        now = op.get("now", 0) if isinstance(op, dict) else 0
        if now is None:
            now = 0  # evaluated at the state clock
        if type(now) is not int or not 0 <= now < 2**63:
            results.append(error_result("INTERNAL", "op carries an invalid `now` stamp", "now", "apply_failed"))
            continue
        clock = max(clock, now)
        results.append(_apply_one(store.env, txn, dbs, clock, op, changes))
    txn.put(b"clock", K.u64(clock), db=dbs["meta"])
    txn.put(b"applied_index", K.u64(raft_index), db=dbs["meta"])
    return results, changes


def _apply_one(env, txn, dbs, now: int, op: dict, changes: Changes) -> dict:
    child = env.begin(write=True, parent=txn)
    op_changes = Changes()
    name = None
    try:
        name = op["op"]
        args = op.get("args") or {}
        handler = HANDLERS.get(name)
        if handler is None:
            child.abort()
            return error_result("INVALID_ARGUMENT", f"unknown op {str(name)[:64]!r}", "op", "unknown_op")
        request_id = args.get("request_id")
        if request_id is not None:
            seen = child.get(request_id.encode(), db=dbs["dedupe"])
            if seen is not None:
                child.abort()
                first_op, first_print, first_result, _ = decode_trusted(seen)
                if first_op == name and first_print == fingerprint(name, args):
                    return first_result
                return error_result("FAILED_PRECONDITION", f"request_id {request_id} was already used for a "
                                    "different request", "request_id", "request_id_reused")
        result = handler(Apply(child, dbs, now, op_changes), args, op.get("ids") or [])
        if "err" in result:
            child.abort()
            return result
        if request_id is not None:
            child.put(request_id.encode(), encode([name, fingerprint(name, args), result, now]), db=dbs["dedupe"])
            child.put(K.time_key(now, request_id), b"", db=dbs["dedupe_at"])
        child.commit()
    except lmdb.Error:
        child.abort()
        raise
    except Exception as exc:  # a bug or a malformed op: refuse this op, keep the batch
        child.abort()
        log.exception("op %r failed inside apply; refused with INTERNAL", name)
        return error_result("INTERNAL", f"{str(name)[:64]} failed inside the state machine: "
                            f"{type(exc).__name__}: {exc}", reason="apply_failed")
    for queue, n in op_changes.woken.items():
        changes.wake(queue, n)
    changes.jobs.extend(op_changes.jobs)
    return result
