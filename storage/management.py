"""Queue and job management ops: move, re-prioritise, clear, drain, delete, limits.

Rules kept here (see docs/management.md):

- `move_job` moves a job that is not active to another queue in its state; a
  pending job gets a new sequence number there (the back of its priority tier),
  its unique lock follows it, counts move with it.
- `set_priority` re-indexes a pending job (the back of its new tier); any
  other job just keeps the new priority for its next run.
- `clear_queue` deletes pending, scheduled, retrying and held jobs; `drain_queue`
  deletes pending and scheduled ones (BullMQ's `drain` with delayed jobs);
  `delete_queue` deletes every job and then the queue record, and is refused
  while jobs are active. Each call deletes at most `limit` jobs (default 2,000,
  at most 10,000) so one raft entry cannot stall the state machine;
  `remaining` > 0 asks the caller to call again.
- `set_concurrency`, `set_throttle`, `remove_throttle` change the queue record
  (storage/queues.py holds the rules fetch applies) and wake parked fetches
  when the change may let jobs out.

Like every handler, each checks everything before its first write.
"""
from __future__ import annotations

from jobbie.transport.errors import error_result

from . import keys as K
from .apply import Apply, _ok
from .states import ACTIVE, CANCELLED, COMPLETED, DEAD, HELD, PENDING, RETRYING, SCHEDULED, STATES

#: Jobs one clear_queue / drain_queue / delete_queue apply deletes when the op has no `limit`
#: (the gateway fills in its default, 2,000, and caps it at 10,000: transport/ops_manage.py).
QUEUE_OP_JOBS_DEFAULT = 2_000
#: ... and never more than this, whatever the op says.
QUEUE_OP_JOBS_MAX = 10_000

CLEAR_STATES = (PENDING, SCHEDULED, RETRYING, HELD)
DRAIN_STATES = (PENDING, SCHEDULED)
DELETE_STATES = (PENDING, SCHEDULED, RETRYING, HELD, DEAD, COMPLETED, CANCELLED)


def _job_or_not_found(a: Apply, job_id: str):
    job = a.job(job_id)
    if job is None:
        return None, error_result("NOT_FOUND", f"job {job_id} not found", "job_id")
    return job, None


def handle_move_job(a: Apply, args: dict, ids: list) -> dict:
    job, refusal = _job_or_not_found(a, args["job_id"])
    if refusal is not None:
        return refusal
    old, new = job["queue"], args["queue"]
    if job["state"] == ACTIVE:
        return error_result("FAILED_PRECONDITION", f"job {job['id']} is active (leased to "
                            f"{job.get('worker_id')}); move it when its attempt has ended", "job_id", "job_active")
    if old == new:
        return _ok(state=job["state"])
    lock = None
    if job.get("unique_key") is not None:
        held = a.get("unique", K.unique_key(old, job["unique_key"]))
        if held is not None and held[0] == job["id"]:
            lock = held
            holder = a.unique_holder(new, job["unique_key"])
            if holder is not None and holder != job["id"]:
                return error_result("FAILED_PRECONDITION", f"job {holder} holds unique key {job['unique_key']!r} "
                                    f"on queue {new}; moving {job['id']} there would make a duplicate",
                                    "queue", "unique_conflict")
    # Checks done: from here on, write.
    state = job["state"]
    a.unindex(job)
    a.count(old, state, -1)
    job["queue"] = new
    if state == PENDING:
        job["seq"] = a.next_seq()
        a.changes.wake(new)
    a.index(job)
    a.count(new, state, +1)
    if lock is not None:
        a.txn.delete(K.unique_key(old, job["unique_key"]), db=a.db["unique"])
        a.put("unique", K.unique_key(new, job["unique_key"]), lock)
    a.save_job(job)
    return _ok(state=state)


def handle_set_priority(a: Apply, args: dict, ids: list) -> dict:
    job, refusal = _job_or_not_found(a, args["job_id"])
    if refusal is not None:
        return refusal
    priority = args["priority"]
    if job["priority"] != priority:
        if job["state"] == PENDING:
            a.unindex(job)
            job["priority"] = priority
            job["seq"] = a.next_seq()
            a.index(job)
        else:
            job["priority"] = priority
        a.save_job(job)
    return _ok(state=job["state"], priority=priority)


# ------------------------------------------------------------------ bulk deletion

def _job_ids(a: Apply, queue: str, state: str, n: int) -> list[str]:
    """Up to `n` ids of the queue's jobs in `state`, in index order."""
    if state == PENDING:
        db, prefix = "pending", K.pending_prefix(queue)
    else:
        db, prefix = "by_queue", K.by_queue_prefix(queue, state)
    out = []
    cur = a.txn.cursor(db=a.db[db])
    if not cur.set_range(prefix):
        return out
    for key, value in cur:
        if not key.startswith(prefix) or len(out) >= n:
            break
        out.append(value.decode() if state == PENDING else key[len(prefix):].decode())
    return out


def _delete_jobs(a: Apply, queue: str, states: tuple, budget: int) -> int:
    """Delete up to `budget` of the queue's jobs in `states`; returns how many were deleted."""
    deleted = 0
    for state in states:
        # Collect first, then delete: deleting moves the cursor's ground.
        for job_id in _job_ids(a, queue, state, budget - deleted):
            job = a.job(job_id)
            if job is None or job["state"] != state or job["queue"] != queue:
                continue  # a batch callback fired by an earlier deletion changed things; next call
            a.delete_job(job)
            deleted += 1
        if deleted >= budget:
            break
    return deleted


def _budget(args: dict) -> int:
    return max(1, min(args.get("limit") or QUEUE_OP_JOBS_DEFAULT, QUEUE_OP_JOBS_MAX))


def _remaining(a: Apply, queue: str, states: tuple) -> int:
    rec = a.get("queues", queue.encode())
    return 0 if rec is None else sum(rec["counts"].get(s, 0) for s in states)


def _clear(a: Apply, args: dict, states: tuple) -> dict:
    queue = args["queue"]
    deleted = _delete_jobs(a, queue, states, _budget(args))
    return _ok(deleted=deleted, remaining=_remaining(a, queue, states))


def handle_clear_queue(a: Apply, args: dict, ids: list) -> dict:
    return _clear(a, args, CLEAR_STATES)


def handle_drain_queue(a: Apply, args: dict, ids: list) -> dict:
    return _clear(a, args, DRAIN_STATES)


def handle_delete_queue(a: Apply, args: dict, ids: list) -> dict:
    queue = args["queue"]
    if args.get("confirm") is not True:
        return error_result("INVALID_ARGUMENT", "delete_queue deletes every job of the queue; "
                            "send confirm: true", "confirm", "confirm_required")
    rec = a.get("queues", queue.encode())
    if rec is None:
        return error_result("NOT_FOUND", f"queue {queue} not found", "queue")
    if rec["counts"].get(ACTIVE):
        return error_result("FAILED_PRECONDITION", f"queue {queue} has {rec['counts'][ACTIVE]} active jobs; "
                            "pause it, let them finish (or cancel them), then delete it", "queue", "jobs_active")
    deleted = _delete_jobs(a, queue, DELETE_STATES, _budget(args))
    remaining = _remaining(a, queue, STATES)
    if remaining == 0:
        a.txn.delete(queue.encode(), db=a.db["queues"])
        a.txn.delete(queue.encode(), db=a.db["throttled"])
    return _ok(deleted=deleted, remaining=remaining)


# ------------------------------------------------------------------ limits

def _wake_pending(a: Apply, rec: dict):
    pending = rec["counts"].get(PENDING, 0)
    if pending and not rec["paused"]:
        a.changes.wake(rec["name"], pending)


def handle_set_concurrency(a: Apply, args: dict, ids: list) -> dict:
    rec = a.queue(args["queue"])
    before = rec.get("max_concurrency")
    limit = args.get("max")
    if limit is None:
        rec.pop("max_concurrency", None)
    else:
        rec["max_concurrency"] = limit
    a.put("queues", args["queue"].encode(), rec)
    if limit is None or (before is not None and limit > before):
        _wake_pending(a, rec)
    return _ok()


def handle_set_throttle(a: Apply, args: dict, ids: list) -> dict:
    rec = a.queue(args["queue"])
    rec["throttle"] = {"rate": args["rate"], "period_ms": args["period_ms"]}
    rec.pop("throttle_window", None)
    rec.pop("throttle_used", None)
    a.put("queues", args["queue"].encode(), rec)
    a.txn.put(args["queue"].encode(), b"", db=a.db["throttled"])
    _wake_pending(a, rec)
    return _ok()


def handle_remove_throttle(a: Apply, args: dict, ids: list) -> dict:
    rec = a.get("queues", args["queue"].encode())
    if rec is None or not rec.get("throttle"):
        return _ok()
    for name in ("throttle", "throttle_window", "throttle_used"):
        rec.pop(name, None)
    a.put("queues", args["queue"].encode(), rec)
    a.txn.delete(args["queue"].encode(), db=a.db["throttled"])
    _wake_pending(a, rec)
    return _ok()


HANDLERS = {
    "move_job": handle_move_job,
    "set_priority": handle_set_priority,
    "clear_queue": handle_clear_queue,
    "drain_queue": handle_drain_queue,
    "delete_queue": handle_delete_queue,
    "set_concurrency": handle_set_concurrency,
    "set_throttle": handle_set_throttle,
    "remove_throttle": handle_remove_throttle,
}
