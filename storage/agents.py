"""Agent loops: one job run as many iterations, under guardrails the state machine enforces.

A job enqueued with `agent` is an agent job. Each fetch hands out one iteration
(`iteration`, from 1, with the checkpoint the previous one left and the
`approval` a person gave, if any); the worker's ack says what comes next
(`agent_status`):

- ``continue``: the iteration is recorded (status, times, worker, attempt,
  usage and cost, checkpoint, result, trace, a digest of checkpoint and
  result), the guardrails are checked, and the same job goes back to
  `pending` for iteration n + 1;
- ``done``: recorded, and the job completes;
- ``hold``: recorded, and the job goes `held` with its hold_reason and
  hold_payload; approval sends it back for iteration n + 1 with the decision
  (`approval`); rejection ends it, or with `revise` re-queues it with the
  feedback.

Guardrails (checked after each iteration; a tripped one holds the job, so
nothing is killed silently and a person can extend it or stop it):
`max_iterations` (hold_reason `max_iterations`), `max_cost_usd` over all
iterations (`max_cost`; also checked at heartbeat and reserved at fetch like
any budget, see storage/budgets.py), `loop_window` identical consecutive
iterations (`loop_detected`), and `iteration_timeout`: the attempt time limit
every job may have (`timeout_ms`, storage/apply.py `start_attempt`): an
attempt's lease never runs past started_at + the limit, so an iteration that
takes longer loses its lease and counts as a failed attempt.

Iterations and holds do not count against `max_retries`: only failed
attempts of one iteration do (`free_attempts`).

`replay_job` makes a new job that starts at iteration N from the checkpoint
iteration N started from, with overrides, linked both ways (`replay_of`,
`replays`).
"""
from __future__ import annotations

import hashlib

from jobbie.transport.codec import decode_trusted, encode
from jobbie.transport.errors import error_result

from . import keys as K
from .states import PENDING
from .usage import attempt_entry

LOOP_WINDOW_DEFAULT = 3
#: Hold reasons of the guardrails.
MAX_ITERATIONS, MAX_COST, LOOP_DETECTED = "max_iterations", "max_cost", "loop_detected"
GUARDRAILS = (MAX_ITERATIONS, MAX_COST, LOOP_DETECTED)


def is_agent(job: dict) -> bool:
    return job.get("agent") is not None


def on_fetch(job: dict):
    job.setdefault("iteration", 1)


def fetch_fields(job: dict) -> dict:
    return {"iteration": job.get("iteration", 1), "approval": job.get("approval")}


def digest(checkpoint, result) -> str:
    return hashlib.blake2b(encode([checkpoint, result]), digest_size=8).hexdigest()


def record(a, job: dict, status: str, result=None, trace=None, error: str | None = None) -> dict:
    """Write the record of the job's current iteration (its last attempt's outcome)."""
    n = job.get("iteration", 1)
    key = K.iteration_key(job["id"], n)
    old = a.get("iterations", key)
    usage = attempt_entry(job)
    rec = {"n": n, "status": status, "started_at": job.get("started_at"), "ended_at": a.now,
           "worker_id": job.get("worker_id"), "attempt": job["attempt"],
           "attempts": (old["attempts"] + 1) if old else 1,
           "usage": usage, "cost_usd": (usage or {}).get("cost_usd", 0.0),
           "checkpoint": job.get("checkpoint"), "result": result, "digest": digest(job.get("checkpoint"), result)}
    if trace is not None:
        rec["trace"] = trace
    if error is not None:
        rec["error"] = error
    if job.get("approval") is not None:
        rec["approval"] = job["approval"]
    a.put("iterations", key, rec)
    return rec


def _next_iteration(job: dict):
    """The iteration just acked is over: the next one starts fresh."""
    job["iteration"] = job.get("iteration", 1) + 1
    job["free_attempts"] = job.get("free_attempts", 0) + 1  # an iteration is not a failed attempt
    job["approval"] = None


def guardrail_tripped(a, job: dict, rec: dict, spent_musd: int) -> str | None:
    """The guardrail the iteration just recorded trips, if any (one override is used up)."""
    agent = job["agent"]
    override = job.pop("guard_override", None)
    window = agent.get("loop_window") or LOOP_WINDOW_DEFAULT
    recent = (job.get("recent_digests") or [])[-(window - 1):] + [rec["digest"]]
    job["recent_digests"] = recent
    n = rec["n"]
    if agent.get("max_iterations") is not None and n >= agent["max_iterations"] and override != MAX_ITERATIONS:
        return MAX_ITERATIONS
    cap = agent.get("max_cost_usd")
    if cap is not None and spent_musd >= int(round(cap * 1_000_000)) and override != MAX_COST:
        return MAX_COST
    if len(recent) >= window and len(set(recent)) == 1 and override != LOOP_DETECTED:
        return LOOP_DETECTED
    return None


def continue_(a, job: dict, args: dict, spent_musd: int, hold) -> str:
    """Ack with agent_status continue: record, check guardrails, re-queue or hold; returns the state."""
    rec = record(a, job, "continue", args.get("result"), args.get("trace"))
    tripped = guardrail_tripped(a, job, rec, spent_musd)
    _next_iteration(job)
    if tripped is not None:
        hold(a, job, tripped, "ack with agent_status continue: guardrail")
        return job["state"]
    job["run_at"] = a.now
    a.move(job, PENDING, "ack with agent_status continue")
    return PENDING


def ended(a, job: dict, status: str, args: dict):
    """Ack with done or hold: the iteration is recorded; hold also makes room for the next one."""
    record(a, job, status, args.get("result"), args.get("trace"))
    if status == "hold":
        _next_iteration(job)


def failed(a, job: dict, error: str):
    record(a, job, "failed", error=error)


def approval(a, job: dict, decision: str, payload) -> dict:
    return {"decision": decision, "note": a.note, "payload": payload, "by": a.who, "at": a.now}


def extend(job: dict, extend: dict, reason: str) -> dict | None:
    """An approval's `extend` of a guardrail; a refusal or None."""
    agent = dict(job["agent"])
    if reason == MAX_ITERATIONS and extend.get("iterations"):
        agent["max_iterations"] = (agent.get("max_iterations") or 0) + extend["iterations"]
    elif reason == MAX_COST and extend.get("usd"):
        agent["max_cost_usd"] = (agent.get("max_cost_usd") or 0) + extend["usd"]
    elif reason == LOOP_DETECTED:
        job["recent_digests"] = []
        if extend.get("iterations") and agent.get("max_iterations") is not None:
            agent["max_iterations"] += extend["iterations"]
    else:
        wanted = {MAX_ITERATIONS: "iterations", MAX_COST: "usd"}[reason]
        return error_result("INVALID_ARGUMENT", f"job {job['id']} is held for {reason}; extend it with "
                            f"extend.{wanted}", "extend", "conflicting_fields")
    job["agent"] = agent
    return None


def delete_records(a, job_id: str):
    prefix = K.iteration_prefix(job_id)
    cur = a.txn.cursor(db=a.db["iterations"])
    if cur.set_range(prefix):
        while bytes(cur.key()).startswith(prefix):
            if not cur.delete():
                break


# ------------------------------------------------------------------ replay

REPLAY_KEPT = ("queue", "payload", "priority", "max_retries", "backoff", "tags", "agent", "budget_usd")


def handle_replay_job(a, args: dict, ids: list) -> dict:
    src = a.job(args["job_id"])
    if src is None:
        return error_result("NOT_FOUND", f"job {args['job_id']} not found", "job_id")
    if not is_agent(src):
        return error_result("FAILED_PRECONDITION", f"job {src['id']} is not an agent job (it has no `agent`); "
                            "only agent jobs have iterations to replay", "job_id", "not_agent_job")
    n = args["from_iteration"]
    if n > 1:
        before = a.get("iterations", K.iteration_key(src["id"], n - 1))
        if before is None:
            return error_result("NOT_FOUND", f"job {src['id']} has no iteration {n - 1}, so iteration {n} has "
                                "no checkpoint to start from", "from_iteration")
        checkpoint = before["checkpoint"]
    else:
        checkpoint = None
    over = args.get("overrides") or {}
    new_args = {k: src.get(k) for k in REPLAY_KEPT if src.get(k) is not None}
    if "payload" in over:
        base = src.get("payload")
        new_args["payload"] = {**base, **over["payload"]} if isinstance(base, dict) else over["payload"]
    if "agent" in over:
        new_args["agent"] = {**(src.get("agent") or {}), **over["agent"]}
    if "tags" in over:
        new_args["tags"] = {**(src.get("tags") or {}), **over["tags"]}
    for name in ("queue", "budget_usd"):
        if name in over:
            new_args[name] = over[name]
    job = a.create_job(ids[0], new_args, extra={
        "iteration": n, "checkpoint": checkpoint,
        "replay_of": {"job_id": src["id"], "from_iteration": n, "overrides": over or None}})
    src["replays"] = list(src.get("replays") or ()) + [job["id"]]
    a.save_job(src)
    return {"ok": {"job_id": job["id"], "state": job["state"], "iteration": n}}


HANDLERS = {"replay_job": handle_replay_job}


# ------------------------------------------------------------------ reads

def read_list_iterations(txn, dbs, args):
    job_id = args["job_id"]
    if txn.get(job_id.encode(), db=dbs["jobs"]) is None:
        return None
    prefix = K.iteration_prefix(job_id)
    after, limit = args.get("after", 0), args.get("limit", 1000)
    cur = txn.cursor(db=dbs["iterations"])
    out, more = [], False
    if cur.set_range(K.iteration_key(job_id, after + 1)):
        for key, value in cur:
            if not bytes(key).startswith(prefix):
                break
            if len(out) >= limit:
                more = True
                break
            rec = decode_trusted(value)
            if not args.get("full"):
                rec.pop("checkpoint", None)
                rec.pop("trace", None)
            out.append(rec)
    return {"iterations": out, "has_more": more}


def read_get_iteration(txn, dbs, args):
    raw = txn.get(K.iteration_key(args["job_id"], args["n"]), db=dbs["iterations"])
    return None if raw is None else {"iteration": decode_trusted(raw)}


READERS = {"list_iterations": read_list_iterations, "get_iteration": read_get_iteration}
