"""Held jobs: how they enter and leave `held`, approvals, rejections and hold time-outs.

A job enters `held` by enqueue (`hold`), by a budget (at enqueue or fetch,
hold_reason `budget:<id>`; `budget:job` for its own cap), by a paused
attempt (its budget ran out while it ran), or by a worker's ack with
`agent_status: hold`. It leaves by:

- `approve_job` -> `pending` (optionally extending the budget that held it;
  without an extension the approved job may run past that budget once);
- `reject_job` -> `cancelled`, with the reason in `last_error`;
- its hold time-out (`hold_timeout_ms`, acted on by the tick as its
  `timeout_action`: `approve` or `reject`);
- its budget's window rolling over (budget holds only; the tick);
- cancel_job, delete_job or its TTL, like any waiting job.

`Apply.move` calls `entered` and `left` on every move into and out of
`held`, so the audit trail, the budget's list of held jobs and the
time-out index stay in step whatever made the move.
"""
from __future__ import annotations

from jobbie.transport.codec import decode_trusted
from jobbie.transport.errors import error_result

from . import agents, audit, budgets
from . import keys as K
from .states import CANCELLED, HELD, PENDING

PAST = {"approve": "approved", "reject": "rejected"}
#: Jobs one approve_job / reject_job may name.
IDS_MAX = 1000
_UNSET = object()


def hold(a, job: dict, reason: str, event: str, payload=_UNSET, timeout_ms: int | None = None,
         action: str | None = None):
    """Move `job` to `held` with its reason and time-out (the caller saves it)."""
    job["hold_reason"] = reason
    if payload is not _UNSET:
        job["hold_payload"] = payload
    if timeout_ms is None:
        timeout_ms, action = budget_timeout(a, reason)
    job["hold_until"] = a.now + timeout_ms if timeout_ms else None
    job["timeout_action"] = (action or "reject") if timeout_ms else None
    a.move(job, HELD, event)


def pause(a, job: dict, event: str):
    """The attempt of a job whose budget ran out ended (fail, or lease expiry): hold it with its
    checkpoint, and do not count the attempt against max_retries."""
    job["free_attempts"] = job.get("free_attempts", 0) + 1
    hold(a, job, job.pop("pause"), event)
    job["lease_expires_at"] = None


def budget_timeout(a, reason: str | None) -> tuple[int | None, str | None]:
    """The hold time-out and action of the budget a hold reason names, if any."""
    b_id = budgets.budget_of(reason)
    b = budgets.get(a, b_id) if b_id and b_id != "job" else None
    if b is None:
        return None, None
    return b.get("hold_timeout_ms"), b.get("timeout_action")


def entered(a, job: dict, event: str):
    job["held_at"] = a.now
    if job.get("hold_until") is not None:
        a.txn.put(K.time_key(job["hold_until"], job["id"]), b"", db=a.db["hold_due"])
    budgets.note_held(a, job)
    audit.record(a, "held", job_id=job["id"], budget_id=_budget_id(job), queue=job["queue"],
                 reason=job.get("hold_reason"), event=event, hold_until=job.get("hold_until"), note=a.note)


def left(a, job: dict, state: str, event: str):
    if job.get("hold_until") is not None:
        a.txn.delete(K.time_key(job["hold_until"], job["id"]), db=a.db["hold_due"])
    budgets.note_released(a, job)
    audit.record(a, "released", job_id=job["id"], budget_id=_budget_id(job), queue=job["queue"],
                 reason=job.get("hold_reason"), event=event, to_state=state, note=a.note)
    job["last_hold_reason"] = job.get("hold_reason")
    job["hold_reason"] = None
    job["hold_until"] = None
    job["timeout_action"] = None


def _budget_id(job: dict) -> str | None:
    """The budget a hold names (for the trail's by-budget index), not the per-job cap."""
    b_id = budgets.budget_of(job.get("hold_reason"))
    return None if b_id == "job" else b_id


def deleted(a, job: dict):
    """delete_job of a held job: its exit, for the trail and the indexes."""
    left(a, job, "deleted", "delete_job")


# ------------------------------------------------------------------ approve / reject

def _targets(args: dict):
    if args.get("job_id") is not None:
        return [args["job_id"]], True
    return list(args.get("job_ids") or ()), False


def _extend(a, job: dict, extend: dict, done: set) -> dict | None:
    """Apply an approval's `extend` to what held the job (once per budget per op); a refusal or None."""
    reason = job.get("hold_reason")
    if reason in agents.GUARDRAILS and agents.is_agent(job):
        return agents.extend(job, extend, reason)
    b_id = budgets.budget_of(reason)
    if b_id is None:
        return error_result("FAILED_PRECONDITION", f"job {job['id']} is held for {job.get('hold_reason')!r}, "
                            "not by a budget; approve it without extend", "extend", "no_budget_hold")
    if b_id == "job":
        if extend.get("usd"):
            cap = budgets.job_cap_musd(job) or 0
            job["budget_usd"] = (cap + budgets.to_musd(extend["usd"])) / budgets.MUSD
        return None
    if b_id in done:
        return None
    b = budgets.get(a, b_id)
    if b is None:
        return error_result("NOT_FOUND", f"budget {b_id} that held job {job['id']} no longer exists; approve "
                            "without extend", "extend", "budget_gone")
    if extend.get("usd"):
        b["limit_musd"] = (b.get("limit_musd") or 0) + budgets.to_musd(extend["usd"])
    if extend.get("tokens"):
        b["limit_tokens"] = (b.get("limit_tokens") or 0) + extend["tokens"]
    b["updated_at"] = a.now
    budgets.save(a, b)
    done.add(b_id)
    audit.record(a, "budget_extended", budget_id=b_id, job_id=job["id"], note=a.note,
                 details={"usd": extend.get("usd"), "tokens": extend.get("tokens"),
                          "limit_usd": budgets.usd(b.get("limit_musd")), "limit_tokens": b.get("limit_tokens")})
    return None


def approve(a, job: dict, extend: dict | None, done: set, event: str = "approve_job", payload=None
            ) -> dict | None:
    """Approve one held job; a refusal, or None once it is pending."""
    if extend:
        refusal = _extend(a, job, extend, done)
        if refusal is not None:
            return refusal
    reason = job.get("hold_reason")
    b_id = budgets.budget_of(reason)
    if b_id is not None and not extend:
        job["budget_override"] = [b_id]  # approved past the budget that held it, for its next attempt
    if agents.is_agent(job):
        job["approval"] = agents.approval(a, job, "approved", payload)
        if reason in agents.GUARDRAILS and not extend:
            job["guard_override"] = reason  # one more iteration past that guardrail
            if reason == agents.MAX_COST:
                job["budget_override"] = ["job"]
    audit.record(a, "approved", job_id=job["id"], queue=job["queue"], reason=job.get("hold_reason"),
                 note=a.note, event=event)
    job["run_at"] = a.now
    a.move(job, PENDING, event)
    a.save_job(job)
    return None


def reject(a, job: dict, event: str = "reject_job", revise: bool = False, payload=None):
    """Reject one held job: cancelled, or (an agent job, with `revise`) back to pending with the feedback."""
    audit.record(a, "rejected", job_id=job["id"], queue=job["queue"], reason=job.get("hold_reason"),
                 note=a.note, event=event, details={"revise": True} if revise else None)
    if revise:
        job["approval"] = agents.approval(a, job, "revise", payload)
        job["run_at"] = a.now
        a.move(job, PENDING, "reject_job with revise")
    else:
        job["last_error"] = f"rejected: {a.note}" if a.note else "rejected"
        a.move(job, CANCELLED, event)
    a.save_job(job)


def _decide(a, args: dict, verb: str) -> dict:
    targets, single = _targets(args)
    errors, affected, done = [], 0, set()
    for job_id in targets:
        job = a.job(job_id)
        if job is None:
            refusal = error_result("NOT_FOUND", f"job {job_id} not found", "job_id")
        elif job["state"] != HELD:
            refusal = error_result("FAILED_PRECONDITION", f"job {job_id} is {job['state']}, not held; only held "
                                   f"jobs can be {PAST[verb]}", "job_id", "wrong_state")
        elif verb == "approve":
            refusal = approve(a, job, args.get("extend"), done, payload=args.get("payload"))
        elif args.get("revise") and not agents.is_agent(job):
            refusal = error_result("FAILED_PRECONDITION", f"job {job_id} is not an agent job: revise sends "
                                   "feedback to an agent's next iteration; reject it without revise",
                                   "revise", "not_agent_job")
        else:
            refusal = None
            reject(a, job, revise=bool(args.get("revise")), payload=args.get("payload"))
        if refusal is not None:
            if single:
                return refusal
            errors.append(dict(refusal["err"], job_id=job_id))
            continue
        affected += 1
    out = {"affected": affected, "errors": errors}
    if single:
        out["state"] = PENDING if verb == "approve" or args.get("revise") else CANCELLED
    return {"ok": out}


def handle_approve_job(a, args: dict, ids: list) -> dict:
    return _decide(a, args, "approve")


def handle_reject_job(a, args: dict, ids: list) -> dict:
    return _decide(a, args, "reject")


HANDLERS = {"approve_job": handle_approve_job, "reject_job": handle_reject_job}


# ------------------------------------------------------------------ the tick's part

def timeouts(a, due: list) -> int:
    """Act on held jobs whose hold time-out came (`due`: (at, job_id) keys of hold_due)."""
    n = 0
    saved_note = a.note
    for at, job_id in due:
        job = a.job(job_id)
        if job is None or job["state"] != HELD or job.get("hold_until") != at:
            a.txn.delete(K.time_key(at, job_id), db=a.db["hold_due"])
            continue
        a.note = f"hold timed out after {(at - job['held_at']) // 1000} s" if job.get("held_at") else "hold timed out"
        if job.get("timeout_action") == "approve":
            approve(a, job, None, set(), event="tick: hold timed out")
        else:
            reject(a, job, event="tick: hold timed out")
        n += 1
    a.note = saved_note
    return n


def budget_windows(a, due: list, limit: int) -> int:
    """Release jobs held by budgets whose window rolled over (`due`: keys of budget_resume)."""
    n = 0
    saved_note = a.note
    a.note = "budget window reset"
    for at, budget_id in due:
        a.txn.delete(K.time_key(at, budget_id), db=a.db["budget_resume"])
        b = budgets.get(a, budget_id)
        if b is None or not b["held"]:
            continue
        if budgets.exhausted(b, a.now):  # a rolling window that has not freed enough yet
            again = budgets.reset_at(b, a.now)
            if again is not None and again > a.now:
                a.txn.put(K.time_key(again, budget_id), b"", db=a.db["budget_resume"])
            continue
        jobs = budgets.held_jobs(a, budget_id, max(0, limit - n))
        for job_id in jobs:
            job = a.job(job_id)
            if job is None or job["state"] != HELD:
                a.txn.delete(K.budget_held_key(budget_id, job_id), db=a.db["budget_held"])
                continue
            job["run_at"] = a.now
            a.move(job, PENDING, "tick: budget window reset")
            a.save_job(job)
            n += 1
        b = budgets.get(a, budget_id)
        if b is not None and b["held"]:
            a.txn.put(K.time_key(a.now, budget_id), b"", db=a.db["budget_resume"])  # more: next tick
    a.note = saved_note
    return n


# ------------------------------------------------------------------ reads

def read_list_held(txn, dbs, args):
    """Held jobs, by queue then id (or by budget): a summary row each."""
    limit, after = args.get("limit", 100), args.get("after")
    rows, more = [], False
    if args.get("budget_id"):
        prefixes = [K.budget_held_prefix(args["budget_id"])]
        db = "budget_held"
    else:
        queues = [args["queue"]] if args.get("queue") else \
            [bytes(k).decode() for k in txn.cursor(db=dbs["queues"]).iternext(keys=True, values=False)]
        prefixes = [K.by_queue_prefix(q, HELD) for q in queues]
        db = "by_queue"
    for prefix in prefixes:
        cur = txn.cursor(db=dbs[db])
        if not cur.set_range(prefix):
            continue
        for key in cur.iternext(keys=True, values=False):
            key = bytes(key)
            if not key.startswith(prefix):
                break
            job_id = key[len(prefix):].decode()
            if after is not None and job_id <= after and len(prefixes) == 1:
                continue
            raw = txn.get(job_id.encode(), db=dbs["jobs"])
            if raw is None:
                continue
            job = decode_trusted(raw)
            if job["state"] != HELD or (args.get("queue") and job["queue"] != args["queue"]):
                continue
            if len(rows) >= limit:
                more = True
                break
            total = job.get("usage_total") or {}
            rows.append({"job_id": job["id"], "queue": job["queue"], "hold_reason": job.get("hold_reason"),
                         "held_at": job.get("held_at", job["updated_at"]), "hold_until": job.get("hold_until"),
                         "timeout_action": job.get("timeout_action"), "cost_usd": total.get("cost_usd", 0.0),
                         "attempt": job["attempt"], "tags": job.get("tags") or {},
                         "has_checkpoint": job.get("checkpoint") is not None})
        if more:
            break
    return {"jobs": rows, "has_more": more, "cursor": rows[-1]["job_id"] if more else None}


READERS = {"list_held": read_list_held}
