"""The lifecycle `tick`: every time-driven transition, applied at the state clock.

The lifecycle actor proposes a tick when storage.reads.next_deadline says some
work is due (actors/lifecycle). One tick, each kind of work bounded by `limit`:

- promote scheduled and retrying jobs whose `run_at` came;
- reclaim expired leases (back to pending, or dead/cancelled);
- expire TTLs of jobs that are not running;
- forget request_ids older than DEDUPE_TTL_MS;
- fire due cron schedules (storage/schedules.py);
- wake the parked fetches of throttled queues whose window reopened
  (a throttled fetch just returns fewer jobs, so nothing else would);
- prune completed and cancelled jobs finished more than
  `completed_retention_ms` ago, when the op carries it (the lifecycle puts its
  node's configured value there, so the rule is in the log and replicated);
- act on held jobs whose hold time-out came (approve or reject), and release
  the jobs held by budgets whose window rolled over (storage/holds.py);
- delete worker records not seen (fetch, heartbeat) for `worker_retention_ms`,
  when the op carries it: a sweep in id order, `limit` records per tick, a
  pass every minute (or every retention, if shorter, at most once a second).

A kind that hit `limit` makes the lifecycle tick again at once.
"""
from __future__ import annotations

from jobbie.transport.codec import decode_trusted
from jobbie.transport.errors import check

from . import agents, holds
from . import keys as K
from .apply import DEDUPE_TTL_MS, Apply, _ok, after_failed_attempt, timed_out
from .queues import window_reopens_at
from .schedules import fire_due
from .states import ACTIVE, CANCELLED, COMPLETED, DEAD, PENDING, RETRYING, SCHEDULED, TERMINAL


def _due(a: Apply, db: str, limit: int, until: int | None = None):
    """Up to `limit` (time, id) keys of a time index whose time is at or before `until` (the state clock)."""
    until = a.now if until is None else until
    cur = a.txn.cursor(db=a.db[db])
    out = []
    if cur.first():
        for key in cur.iternext(keys=True, values=False):
            at, ident = K.parse_time_key(key)
            if at > until or len(out) >= limit:
                break
            out.append((at, ident))
    return out


def wake_throttled(a: Apply) -> int:
    """Wake throttled queues whose used-up window has ended; returns how many."""
    woken = 0
    for raw in list(a.txn.cursor(db=a.db["throttled"]).iternext(keys=True, values=False)):
        name = bytes(raw).decode()
        rec = a.get("queues", raw)
        if rec is None:
            continue
        at = window_reopens_at(rec)
        if at is None or at > a.now:
            continue
        rec["throttle_window"] = a.now // rec["throttle"]["period_ms"]
        rec["throttle_used"] = 0
        a.put("queues", raw, rec)
        if not rec["paused"]:
            a.changes.wake(name, min(rec["counts"][PENDING], rec["throttle"]["rate"]))
        woken += 1
    return woken


def prune_finished(a: Apply, retention_ms: int, limit: int) -> int:
    """Delete up to `limit` completed/cancelled jobs that finished `retention_ms` or more ago."""
    pruned = 0
    for _, job_id in _due(a, "done", limit, until=a.now - retention_ms):
        job = a.job(job_id)
        check(job is not None and job["state"] in (COMPLETED, CANCELLED), f"done index holds {job_id} wrongly")
        a.delete_job(job)
        pruned += 1
    return pruned


#: How often the worker records are swept (when the tick carries `worker_retention_ms`): every
#: minute, or every retention when that is shorter, but not more than once a second.
WORKER_SWEEP_EVERY_MS = 60_000
WORKER_SWEEP_MIN_MS = 1000
#: meta keys of the sweep: the worker id it stopped after (absent: start over), and when it is next due.
SWEEP_AFTER, SWEEP_AT = b"worker_sweep_after", b"worker_sweep_at"


def sweep_workers(a: Apply, retention_ms: int, limit: int) -> int:
    """Delete the worker records not seen for `retention_ms`, looking at up to `limit` records.

    Worker records are keyed by id, not by time, so they are swept in id order a chunk per tick,
    the position kept in meta; a full pass is due again WORKER_SWEEP_EVERY_MS (or the retention, when
    shorter; at least WORKER_SWEEP_MIN_MS) after the last ended.
    Returns how many records were deleted.
    """
    if a.now < a.meta_int(SWEEP_AT):
        return 0
    after = a.txn.get(SWEEP_AFTER, db=a.db["meta"])
    cur = a.txn.cursor(db=a.db["workers"])
    found = cur.set_range(bytes(after)) if after is not None else cur.first()
    if found and after is not None and bytes(cur.key()) == bytes(after):
        found = cur.next()
    seen = 0
    stale = []
    while found and seen < limit:
        key = bytes(cur.key())
        if decode_trusted(cur.value())["last_seen_at"] <= a.now - retention_ms:
            stale.append(key)
        seen += 1
        found = cur.next()
    for key in stale:
        a.txn.delete(key, db=a.db["workers"])
    if found:  # stopped at the limit: go on from here at once
        a.txn.put(SWEEP_AFTER, key, db=a.db["meta"])
        a.set_meta_int(SWEEP_AT, a.now)
    else:
        a.txn.delete(SWEEP_AFTER, db=a.db["meta"])
        a.set_meta_int(SWEEP_AT, a.now + max(WORKER_SWEEP_MIN_MS, min(WORKER_SWEEP_EVERY_MS, retention_ms)))
    return len(stale)


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
        error = timed_out(job, a.now) or "lease expired"
        a.record_error(job, error)
        a.end_attempt(job)
        if job.get("agent") is not None:
            agents.failed(a, job, error)
        if job.get("pause") and not job["cancel_requested"]:
            holds.pause(a, job, "tick: lease expired after budget_exceeded")
        else:
            after_failed_attempt(a, job, "lease expired")
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
    fired = fire_due(a, _due(a, "schedule_due", limit))
    released = holds.timeouts(a, _due(a, "hold_due", limit))
    released += holds.budget_windows(a, _due(a, "budget_resume", limit), limit)
    woken = wake_throttled(a)
    retention = args.get("completed_retention_ms")
    pruned = prune_finished(a, retention, limit) if retention else 0
    worker_retention = args.get("worker_retention_ms")
    workers = sweep_workers(a, worker_retention, limit) if worker_retention else 0
    # The three historic counts always; the newer ones only when non-zero (tick is internal).
    extra = {k: v for k, v in (("fired", fired), ("woken", woken), ("pruned", pruned),
                               ("workers_pruned", workers), ("released", released)) if v}
    return _ok(promoted=promoted, reclaimed=reclaimed, expired=expired, **extra)
