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

This module holds the job lifecycle ops and the batch; queue management
(storage/management.py), cron schedules (storage/schedules.py) and the
lifecycle `tick` (storage/tick.py) keep their handlers in their own modules,
and HANDLERS below takes them in. All of them work through storage/apply.py.
"""
from __future__ import annotations

import hashlib
import logging

import lmdb

from jobbie.transport.codec import decode_trusted, encode
from jobbie.transport.errors import InvariantViolation, check, error_result

from . import agents, budgets, holds, management, schedules, tick, tokens, usage
from . import keys as K
from .apply import (DEDUPE_TTL_MS, ERRORS_KEPT, Apply, Changes, _ok,  # noqa: F401 (re-exported)
                    after_failed_attempt as _after_failed_attempt, attempt_timeout_ms, attempts_left, backoff_ms,
                    lease_until, start_attempt)
from .queues import fetch_room, note_handed_out
from .states import ACTIVE, CANCELLED, COMPLETED, DEAD, HELD, PENDING, RETRYING, SCHEDULED, TERMINAL

log = logging.getLogger("jobbie.machine")


ENTRY_VERSION = 1


def fingerprint(op_name: str, args: dict) -> bytes:
    body = {k: v for k, v in args.items() if k != "request_id"}
    return hashlib.blake2b(encode([op_name, body]), digest_size=8).digest()


# =================================================================== op handlers
# Each handler checks everything before its first write and returns one result.

def _budget_checked(a: Apply, args: dict):
    """(args to create the job with, refusal): a spent `reject` budget refuses the job, a spent
    `hold` budget makes it start held (storage/budgets.py)."""
    if not budgets.any_budgets(a):
        return args, None
    refusal, hold_reason = budgets.check_enqueue(a, args)
    if refusal is not None:
        return args, refusal
    if hold_reason is not None and not args.get("hold"):
        args = dict(args, hold=True, hold_reason=hold_reason)
    return args, None


def handle_enqueue(a: Apply, args: dict, ids: list) -> dict:
    if args.get("unique_key") is not None:
        holder = a.unique_holder(args["queue"], args["unique_key"])
        if holder is not None:
            return _ok(job_id=holder, state=a.job(holder)["state"], unique_existing=True)
    args, refusal = _budget_checked(a, args)
    if refusal is not None:
        return refusal
    job = a.create_job(ids[0], args)
    return _ok(job_id=job["id"], state=job["state"], unique_existing=False)


def handle_enqueue_batch(a: Apply, args: dict, ids: list) -> dict:
    jobs = args["jobs"]
    batch = args.get("batch")
    check(len(ids) == len(jobs) + (2 if batch else 0), "enqueue_batch carries the wrong number of ids")
    batch_id = ids[len(jobs)] if batch else None
    job_ids, created = [], 0
    # Nothing below reads a queue's counts until the batch's jobs exist: add them once per queue.
    a.defer_new_counts()
    for job_args, job_id in zip(jobs, ids):
        holder = None
        if job_args.get("unique_key") is not None:
            holder = a.unique_holder(job_args["queue"], job_args["unique_key"])
        if holder is not None:
            job_ids.append(holder)
            continue
        job_args, refusal = _budget_checked(a, job_args)
        if refusal is not None:
            refusal["err"]["message"] = f"jobs[{len(job_ids)}]: {refusal['err']['message']}"
            a.new_counts = None
            return refusal  # the op is refused whole: nothing of the batch is created
        a.create_job(job_id, job_args, batch_id=batch_id)
        job_ids.append(job_id)
        created += 1
    a.flush_new_counts()
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
    # One cursor per unpaused queue with room (concurrency, throttle); repeatedly
    # take the best head (priority, then seq).
    heads, room, taken = [], {}, {}
    for q in args["queues"]:
        rec = a.queue(q)
        if rec["paused"]:
            continue
        room[q] = fetch_room(rec, a.now)
        if room[q] is not None and room[q] <= 0:
            continue
        cur = a.txn.cursor(db=a.db["pending"])
        prefix = K.pending_prefix(q)
        if cur.set_range(prefix) and cur.key().startswith(prefix):
            heads.append([K.parse_pending(cur.key()), cur, prefix, q])
    out = []
    looks = wanted + budgets.FETCH_EXTRA_LOOKS  # jobs budgets turn away still cost a look each
    while heads and len(out) < wanted and looks > 0:
        looks -= 1
        best = min(heads, key=lambda h: h[0])
        cur, q = best[1], best[3]
        job = a.job(cur.value().decode())
        check(job is not None and job["state"] == PENDING, "pending index points at a job that is not pending")
        has_next = cur.next() and cur.key().startswith(best[2])
        if has_next:
            best[0] = K.parse_pending(cur.key())
        else:
            heads.remove(best)
        if job.get("expire_at") is not None and job["expire_at"] <= a.now:
            # Past its TTL but not yet swept by a tick: never hand it out.
            job["last_error"] = "expired"
            job["failed_at"] = a.now
            a.move(job, DEAD, "tick: expired")
            a.save_job(job)
            continue
        if budgets.is_budgeted(a, job):
            verdict, why, whole_queue = budgets.admit(a, job)
            if verdict == "hold":
                holds.hold(a, job, why, "fetch: budget spent")
                a.save_job(job)
                continue
            if verdict == "wait":
                if whole_queue and best in heads:
                    heads.remove(best)  # the layer covers the whole queue: its other jobs wait too
                continue
        job["attempt"] += 1
        job["worker_id"] = worker_id
        job["hostname"] = args.get("hostname")
        job["lease_ms"] = lease_ms
        job["started_at"] = a.now
        if job["agent"] is not None:
            agents.on_fetch(job)
        start_attempt(job, a.now, lease_ms)
        a.move(job, ACTIVE, "fetch")
        a.save_job(job)
        leased = {"job_id": job["id"], "queue": job["queue"], "payload": job["payload"],
                  "attempt": job["attempt"], "max_retries": job["max_retries"], "lease_ms": lease_ms,
                  "checkpoint": job["checkpoint"], "tags": job["tags"], "agent": job["agent"],
                  "timeout_ms": attempt_timeout_ms(job)}
        if job["agent"] is not None:
            leased.update(agents.fetch_fields(job))
        out.append(leased)
        taken[q] = taken.get(q, 0) + 1
        if room[q] is not None and taken[q] >= room[q] and best in heads:
            heads.remove(best)  # this queue's concurrency or throttle is used up
    for q, n in taken.items():
        rec = a.queue(q)
        if rec.get("throttle"):
            note_handed_out(rec, a.now, n)
            a.put("queues", q.encode(), rec)
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
    status = args.get("agent_status") or "done"
    agent = job["agent"] is not None
    if status == "continue" and not agent:
        return error_result("FAILED_PRECONDITION", f"job {job['id']} is not an agent job (enqueued without "
                            "`agent`): it cannot continue; ack it done or hold", "agent_status", "not_agent_job")
    job["result"] = args.get("result")
    if "trace" in args:
        job["trace"] = args["trace"]
    if "checkpoint" in args:
        job["checkpoint"] = args["checkpoint"]
    a.record_usage(job, args.get("usage"), final=True)
    a.end_attempt(job)
    job.pop("pause", None)
    if agent:
        if status == "continue":
            state = agents.continue_(a, job, args, budgets.job_spent(job)[0], holds.hold)
            job["lease_expires_at"] = None
            a.save_job(job)
            return _ok(state=state, iteration=job["iteration"])
        agents.ended(a, job, status, args)
    if status == "hold":
        if a.who == "server":
            a.who = f"worker:{job['worker_id']}"  # the audit trail names the worker that asked for the hold
        holds.hold(a, job, args.get("hold_reason") or "held by the worker", "ack with agent_status hold",
                   payload=args.get("hold_payload"), timeout_ms=args.get("hold_timeout_ms"),
                   action=args.get("timeout_action"))
        job["lease_expires_at"] = None
        a.save_job(job)
        return _ok(state=HELD)
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
    a.record_usage(job, args.get("usage"), final=True)
    a.record_error(job, args.get("error") or "", args.get("backtrace"))
    a.end_attempt(job)
    if job["agent"] is not None:
        agents.failed(a, job, args.get("error") or "")
    if job.get("pause") and not job["cancel_requested"]:
        holds.pause(a, job, "fail after budget_exceeded")
        a.save_job(job)
        return _ok(state=HELD, next_attempt_at=None, attempts_remaining=attempts_left(job))
    next_at, remaining = _after_failed_attempt(a, job, "fail")
    a.save_job(job)
    return _ok(state=job["state"], next_attempt_at=next_at, attempts_remaining=remaining)


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
        spent_layers = a.record_usage(job, entry.get("usage"))
        if spent_layers and not job.get("pause"):
            job["pause"] = budgets.cap_reason(job) if spent_layers[0] == "job" else f"budget:{spent_layers[0]}"
        if job["cancel_requested"]:
            status = "cancel"
        else:
            a.unindex(job)
            job["lease_expires_at"] = lease_until(job, a.now, job["lease_ms"])
            a.index(job)
            status = "ok"
        a.save_job(job)
        out[job_id] = {"status": status, "budget_exceeded": "pause" in job}
    seen = a.get("workers", worker_id.encode()) or {}
    a.put("workers", worker_id.encode(), {"worker_id": worker_id, "hostname": seen.get("hostname"),
                                          "last_seen_at": a.now})
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
    a.delete_job(job)
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
    **management.HANDLERS,
    **schedules.HANDLERS,
    **usage.HANDLERS,
    **budgets.HANDLERS,
    **holds.HANDLERS,
    **tokens.HANDLERS,
    **agents.HANDLERS,
    "tick": tick.handle_tick,
}


def handle_ack_batch(env, txn, dbs, now: int, args: dict, changes: Changes, book) -> dict:
    """ack_batch: every ack, then every fail, applied as if each came alone (its own nested
    transaction: one refused, say lease_lost, leaves the others applied), answered in order."""
    out = {}
    for name in ("ack", "fail"):
        out[f"{name}s"] = [_apply_one(env, txn, dbs, now, {"op": name, "args": item}, changes, book)
                           for item in args.get(f"{name}s") or ()]
    return _ok(**out)


HANDLERS["ack_batch"] = handle_ack_batch


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
    # The decoded budget records live as long as the store (only this function writes them); a
    # failed entry drops them, since its transaction is not committed.
    book = getattr(store, "budget_book", None)
    if book is None:
        book = store.budget_book = budgets.Book()
    try:
        for op in ops:
            now = op.get("now", 0) if isinstance(op, dict) else 0
            if now is None:
                now = 0  # evaluated at the state clock
            if type(now) is not int or not 0 <= now < 2**63:
                results.append(error_result("INTERNAL", "op carries an invalid `now` stamp", "now", "apply_failed"))
                continue
            clock = max(clock, now)
            results.append(_apply_one(store.env, txn, dbs, clock, op, changes, book))
        book.flush(txn, dbs)
    except BaseException:
        store.budget_book = None
        raise
    txn.put(b"clock", K.u64(clock), db=dbs["meta"])
    txn.put(b"applied_index", K.u64(raft_index), db=dbs["meta"])
    return results, changes


def _apply_one(env, txn, dbs, now: int, op: dict, changes: Changes, book: budgets.Book | None = None) -> dict:
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
        apply = Apply(child, dbs, now, op_changes, name, args.get("actor") or op.get("who"), args.get("note"), book)
        try:
            if handler is handle_ack_batch:
                result = handle_ack_batch(env, child, dbs, now, args, op_changes, book)
            else:
                result = handler(apply, args, op.get("ids") or [])
        finally:
            if apply.budget_admin and book is not None:
                book.forget_index()  # it read and changed them in LMDB, past the caches
        if "err" in result:
            child.abort()
            return result
        if request_id is not None:
            child.put(request_id.encode(), encode([name, fingerprint(name, args), result, now]), db=dbs["dedupe"])
            child.put(K.time_key(now, request_id), b"", db=dbs["dedupe_at"])
        if book is not None:
            book.commit(apply.budget_work)
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
