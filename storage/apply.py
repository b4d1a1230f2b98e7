"""One op's view of the store: the `Apply` helper every handler works through.

`Apply` owns the rules that keep records, indexes and counts in step: `move`
checks each state change against storage/states.py and moves the job between
its indexes (keys.py) and per-queue counts; `create_job` and `delete_job` add
and remove a job whole. Handlers (machine.py, management.py, schedules.py,
tick.py) read and write only through it, inside the op's nested transaction.
"""
from __future__ import annotations

from jobbie.transport.codec import decode_trusted, encode
from jobbie.transport.errors import check

from . import agents, budgets, holds
from . import keys as K
from . import usage as usage_rules
from .states import (ACTIVE, CANCELLED, COMPLETED, DEAD, HELD, PENDING, RETRYING, SCHEDULED, STATES,
                     TERMINAL, allowed)

#: Errors kept per job; older attempts' records are dropped.
ERRORS_KEPT = 50
#: How long a request_id is remembered (replicated rule, same on every node).
DEDUPE_TTL_MS = 5 * 60_000


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

    def __init__(self, txn, dbs, now: int, changes: Changes, op_name: str | None = None, who: str | None = None,
                 note: str | None = None, book: "budgets.Book | None" = None):
        self.txn = txn
        self.db = dbs
        self.now = now
        self.changes = changes
        #: For the audit trail: the op being applied, who asked (its `actor` arg or client key), its note.
        self.op_name = op_name
        self.who = who or "server"
        self.note = note
        #: Budget records: the entry's (storage/budgets.py Book) and this op's own copies of them.
        self.book = book
        self.budget_work: dict = {}
        self.budget_admin = op_name in budgets.ADMIN_OPS
        #: While many jobs are created by one op (enqueue_batch): (queue, state) -> jobs created, added
        #: to the queue records once at the end (`defer_new_counts`, `flush_new_counts`) instead of
        #: one read, decode, encode and write of the queue record per job.
        self.new_counts: dict | None = None

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

    def shift_count(self, queue: str, src: str | None, dst: str) -> dict | None:
        """One job of `queue` went from `src` (None: new) to `dst`; returns the updated queue record
        (None for a new job while new counts are deferred)."""
        if src is None and self.new_counts is not None:
            key = (queue, dst)
            self.new_counts[key] = self.new_counts.get(key, 0) + 1
            return None
        rec = self.queue(queue)
        counts = rec["counts"]
        if src is not None:
            counts[src] = counts.get(src, 0) - 1
            check(counts[src] >= 0, f"negative {src} count for queue {queue}")
        counts[dst] = counts.get(dst, 0) + 1
        self.put("queues", queue.encode(), rec)
        return rec

    def defer_new_counts(self):
        """Count new jobs in memory until `flush_new_counts` (nothing may read queue counts meanwhile)."""
        self.new_counts = {}

    def flush_new_counts(self):
        pending, self.new_counts = self.new_counts, None
        by_queue: dict[str, list] = {}
        for (queue, state), n in (pending or {}).items():
            by_queue.setdefault(queue, []).append((state, n))
        for queue, shifts in by_queue.items():
            rec = self.queue(queue)
            for state, n in shifts:
                rec["counts"][state] = rec["counts"].get(state, 0) + n
            self.put("queues", queue.encode(), rec)

    # ---------------------------------------------------------------- indexes
    @staticmethod
    def indexes_for(job) -> list[tuple[str, bytes]]:
        """(db, key) of every index entry a job in its state has.

        pending: `pending` (value: the job id); active: `leases`; every other
        state: `by_queue`, plus `due` (scheduled, retrying) or `done`
        (completed, cancelled: the retention order).
        """
        state = job["state"]
        if state is None:
            return []
        if state == PENDING:
            return [("pending", K.pending_key(job["queue"], job["priority"], job["seq"]))]
        if state == ACTIVE:
            return [("leases", K.time_key(job["lease_expires_at"], job["id"]))]
        out = [("by_queue", K.by_queue_key(job["queue"], state, job["id"]))]
        if state in (SCHEDULED, RETRYING):
            out.append(("due", K.time_key(job["run_at"], job["id"])))
        elif state in (COMPLETED, CANCELLED):
            out.append(("done", K.time_key(job["finished_at"], job["id"])))
        return out

    def unindex(self, job):
        for db, key in self.indexes_for(job):
            found = self.txn.delete(key, db=self.db[db])
            check(found, f"job {job['id']} in state {job['state']} was missing from its {db} index")

    def index(self, job):
        for db, key in self.indexes_for(job):
            self.txn.put(key, job["id"].encode() if db == "pending" else b"", db=self.db[db])

    def move(self, job, state: str, event: str):
        """Change a job's state: check the table, keep indexes and counts in step."""
        src = job["state"]
        check(allowed(src, state), f"job {job['id']}: {src} -> {state} is not a legal move ({event})")
        if src == HELD:
            holds.left(self, job, state, event)
        self.unindex(job)
        job["state"] = state
        if state in TERMINAL:
            job["finished_at"] = self.now
        elif src in TERMINAL:
            job.pop("finished_at", None)
        if state == PENDING:
            job["seq"] = self.next_seq()
            self.changes.wake(job["queue"])
        self.index(job)
        rec = self.shift_count(job["queue"], src, state)
        if src == ACTIVE:
            self.maybe_wake_limited(rec)
        if state in TERMINAL:
            self.drop_expiry(job)
            self.release_unique(job)
            self.finish_batch_member(job, succeeded=state == COMPLETED)
        if state == HELD:
            holds.entered(self, job, event)

    def maybe_wake_limited(self, rec: dict):
        """An active job of this queue finished: a concurrency-limited queue's parked fetches may take a job now."""
        if rec.get("max_concurrency") is not None and rec["counts"].get(PENDING):
            self.changes.wake(rec["name"])

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

    def record_usage(self, job, usage: dict | None, final: bool = False) -> list:
        """Keep a usage report for the job's current attempt (storage/usage.py): afterwards
        `job["usage"]` lists the per-attempt entries and `job["usage_total"]` their sums.

        The change is charged to the job's budgets (storage/budgets.py); returns the ids of its
        hold/reject layers that are now spent (empty when none, or when nothing is budgeted)."""
        if not usage or not budgets.is_budgeted(self, job):
            usage_rules.record_usage(self, job, usage, final=final)
            return []
        before = budgets.job_spent(job)
        usage_rules.record_usage(self, job, usage, final=final)
        return budgets.charge(self, job, before)

    def end_attempt(self, job):
        """The job's attempt is over (ack, fail, lease expiry, delete): release its budget reservation."""
        if "reservation" in job or "budget_override" in job:
            budgets.release(self, job, usage_rules.attempt_musd(job))

    def delete_job(self, job):
        """Remove a job from any state: record, indexes, counts, TTL, unique lock, errors."""
        if job["state"] == HELD:
            holds.deleted(self, job)
        self.unindex(job)
        self.count(job["queue"], job["state"], -1)
        if job["state"] == ACTIVE:
            self.end_attempt(job)
            self.maybe_wake_limited(self.queue(job["queue"]))
        self.drop_expiry(job)
        self.release_unique(job, deleting=True)
        if job["state"] not in TERMINAL:
            self.finish_batch_member(job, succeeded=False)
        cur = self.txn.cursor(db=self.db["errors"])
        prefix = K.error_prefix(job["id"])
        if cur.set_range(prefix):
            while cur.key().startswith(prefix):
                if not cur.delete():
                    break
        if job.get("agent") is not None:
            agents.delete_records(self, job["id"])
        self.txn.delete(job["id"].encode(), db=self.db["jobs"])
        self.changes.jobs.append(job["id"])

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

    def create_job(self, job_id: str, args: dict, batch_id: str | None = None, extra: dict | None = None) -> dict:
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
        for name in ("budget_usd", "estimate_usd", "timeout_ms"):
            if args.get(name) is not None:
                job[name] = args[name]
        if extra:
            job.update(extra)
        job["state"] = None
        if state == HELD:
            if job["hold_reason"] is None:
                job["hold_reason"] = "enqueued with hold"
            timeout_ms, action = args.get("hold_timeout_ms"), args.get("timeout_action")
            if timeout_ms is None:
                timeout_ms, action = holds.budget_timeout(self, job["hold_reason"])
            job["hold_until"] = now + timeout_ms if timeout_ms else None
            job["timeout_action"] = (action or "reject") if timeout_ms else None
        self.move(job, state, "enqueue")
        if expire_at is not None:
            self.txn.put(K.time_key(expire_at, job_id), b"", db=self.db["expiry"])
        if job["unique_key"] is not None:
            until = now + job["unique_period_ms"] if job["unique_period_ms"] else None
            self.put("unique", K.unique_key(job["queue"], job["unique_key"]), [job_id, until])
        self.save_job(job)
        return job


def attempt_timeout_ms(job) -> int | None:
    """The time limit of one attempt: the job's `timeout_ms`, an agent's `iteration_timeout`, or the
    smaller of both; None without either."""
    limits = [t for t in (job.get("timeout_ms"), (job.get("agent") or {}).get("iteration_timeout")) if t]
    return min(limits) if limits else None


def start_attempt(job, now: int, lease_ms: int):
    """Lease the job's new attempt from `now`: `attempt_deadline` is now + its time limit (absent
    without one), and the lease never runs past it."""
    timeout = attempt_timeout_ms(job)
    if timeout:
        job["attempt_deadline"] = now + timeout
    else:
        job.pop("attempt_deadline", None)
    job["lease_expires_at"] = lease_until(job, now, lease_ms)


def lease_until(job, now: int, lease_ms: int) -> int:
    """The lease end of an attempt extended at `now`: now + lease_ms, never past its deadline."""
    deadline = job.get("attempt_deadline")
    end = now + lease_ms
    return end if deadline is None else min(end, deadline)


def timed_out(job, now: int) -> str | None:
    """The error of an attempt whose lease ended at its deadline (`timeout after N ms`), else None."""
    deadline = job.get("attempt_deadline")
    if deadline is None or now < deadline:
        return None
    return f"timeout after {deadline - job['started_at']} ms"


def attempts_left(job) -> int:
    """Attempts the job has left after its current one. Paused attempts (budget holds) and finished
    agent iterations do not count against max_retries."""
    return max(0, job["max_retries"] + 1 - job["attempt"] + job.get("free_attempts", 0))


def after_failed_attempt(a: Apply, job, event: str):
    """Move an active job whose attempt failed; returns (next_attempt_at, attempts_remaining)."""
    expired = job.get("expire_at") is not None and a.now >= job["expire_at"]
    remaining = attempts_left(job)
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
