"""The convenience methods of `Client` and `AsyncClient`, written once.

Each method builds a *flow*: a generator that yields `(op, args)` for every request it needs (or
`(SLEEP, seconds)` for a pause) and receives each request's `ok` map back; what it returns is
the method's answer. `Client` drives flows with blocking calls, `AsyncClient` with awaits, so
both clients send exactly the same requests for the same method (options left as None are not
sent, and the server applies its defaults).
"""
from __future__ import annotations

import time

from .errors import JobbieError

#: A flow step that pauses instead of sending a request: `(SLEEP, seconds)`.
SLEEP = "sleep"
#: States a job does not leave by itself.
FINISHED = ("completed", "dead", "cancelled")


class JobFailed(JobbieError):
    """`wait` found the job `dead` or `cancelled`; `job` is its record (`last_error`, `errors`, ...)."""

    code = "FAILED_PRECONDITION"

    def __init__(self, job: dict):
        self.job = job
        self.state = job["state"]
        why = f": {job['last_error']}" if job.get("last_error") else ""
        super().__init__(f"job {job['id']} is {job['state']}{why}", field="job_id")


def _given(options: dict) -> dict:
    return {k: v for k, v in options.items() if v is not None}


def _request(op: str, args: dict, then=None):
    """A one-request flow: sends `args` as they are, and answers `then(ok)` (or the ok map)."""
    ok = yield op, args
    return ok if then is None else then(ok)


class Methods:
    """Shared by Client and AsyncClient; `_drive(flow)` runs a flow (blocking, or as a coroutine)."""

    def _drive(self, flow):  # pragma: no cover - each client has its own
        raise NotImplementedError

    def _one(self, op: str, args: dict, then=None):
        return self._drive(_request(op, args, then))

    # ------------------------------------------------------------------ jobs
    def enqueue(self, queue: str, payload, *, priority: str | None = None, max_retries: int | None = None,
                backoff: dict | None = None, run_at: int | None = None, delay_ms: int | None = None,
                timeout_ms: int | None = None, expire_after_ms: int | None = None, unique_key: str | None = None,
                unique_period_ms: int | None = None, tags: dict | None = None, hold: bool | None = None,
                hold_reason: str | None = None, agent: dict | None = None, budget_usd: float | None = None,
                estimate_usd: float | None = None, hold_timeout_ms: int | None = None,
                timeout_action: str | None = None, request_id: str | None = None) -> str:
        """Add one job to `queue`; returns its id.

        Args:
          queue: Queue name.
          payload: Any msgpack value (None included), at most the payload cap (1 MiB) encoded.
          priority: "critical", "high", "normal" (the default) or "low".
          max_retries: Retries after the first attempt before the job goes dead (default 3).
          backoff: {"strategy": "none"|"fixed"|"linear"|"exponential", "base_ms", "max_ms"}.
          run_at: Do not run before this time (ms since the epoch). Excludes delay_ms.
          delay_ms: Do not run before now + this many ms. Excludes run_at.
          timeout_ms: Time limit of each attempt; the server ends the attempt's lease there and counts it
            as failed ("timeout after N ms"), and the Python worker fails the handler at that moment.
          expire_after_ms: A job still waiting this long after enqueue goes dead ("expired").
          unique_key: At most one live job per (queue, key): a duplicate returns the existing job's id.
          unique_period_ms: Keep the unique key this long (default: until the job finishes).
          tags: String map (at most 32 entries), for search and budgets.
          hold: Enqueue it held, for a person to approve (hold_reason, hold_timeout_ms, timeout_action).
          agent: Make it an agent loop ({"max_iterations", "max_cost_usd", "iteration_timeout", "loop_window"}).
          budget_usd: This job's own spend cap over its attempts.
          estimate_usd: Expected cost of one attempt, reserved against budgets at fetch.
          request_id: Idempotency key (one is made for you; a retry reuses it).
        """
        options = dict(priority=priority, max_retries=max_retries, backoff=backoff, run_at=run_at,
                       delay_ms=delay_ms, timeout_ms=timeout_ms, expire_after_ms=expire_after_ms,
                       unique_key=unique_key, unique_period_ms=unique_period_ms, tags=tags, hold=hold,
                       hold_reason=hold_reason, agent=agent, budget_usd=budget_usd, estimate_usd=estimate_usd,
                       hold_timeout_ms=hold_timeout_ms, timeout_action=timeout_action, request_id=request_id)
        return self._one("enqueue", dict(queue=queue, payload=payload, **_given(options)), lambda ok: ok["job_id"])

    def enqueue_batch(self, jobs: list, batch: dict | None = None, *, request_id: str | None = None) -> dict:
        """Add 1-1000 jobs in one raft entry (each a map of enqueue's arguments); answers `job_ids` and
        `batch_id`. `batch={"callback_queue": ..., "callback_payload": ...}` enqueues a callback job once
        every job of the batch has finished."""
        return self._one("enqueue_batch", dict(jobs=jobs, **_given(dict(batch=batch, request_id=request_id))))

    def get_job(self, job_id: str) -> dict:
        """The job record: state, attempt, payload, result, progress, checkpoint, errors, timestamps, ..."""
        return self._one("get_job", {"job_id": job_id})

    def wait(self, job_id: str, timeout: float = 30.0, poll: float = 0.2) -> dict:
        """Wait until the job finishes; returns its record once `completed` (the result is in `result`).

        Raises:
          JobFailed: the job went `dead` or `cancelled` (the record is in `.job`).
          TimeoutError: it had not finished after `timeout` seconds.
        """
        return self._drive(self._wait_flow(job_id, timeout, poll))

    @staticmethod
    def _wait_flow(job_id: str, timeout: float, poll: float):
        deadline = time.monotonic() + timeout
        while True:
            job = yield "get_job", {"job_id": job_id}
            if job["state"] == "completed":
                return job
            if job["state"] in FINISHED:
                raise JobFailed(job)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} is still {job['state']} after {timeout:g} s")
            yield SLEEP, min(poll, left)

    def cancel(self, job_id: str, *, actor: str | None = None, note: str | None = None) -> dict:
        """Cancel a job; an active one is told at its next heartbeat (answers `state`, `cancel_requested`)."""
        return self._one("cancel_job", dict(job_id=job_id, **_given(dict(actor=actor, note=note))))

    def retry(self, job_id: str) -> dict:
        """Run a dead, cancelled, completed, retrying or scheduled job again now."""
        return self._one("retry_job", {"job_id": job_id})

    def delete(self, job_id: str, *, actor: str | None = None) -> dict:
        """Remove a job and everything recorded about it."""
        return self._one("delete_job", dict(job_id=job_id, **_given(dict(actor=actor))))

    # --------------------------------------------------------------- workers
    def fetch(self, queues, worker_id: str, count: int = 1, wait_ms: int = 0, lease_ms: int = 30_000,
              hostname: str | None = None) -> list:
        """Lease up to `count` jobs of `queues` (a name or a list) for `worker_id`; waits up to `wait_ms`
        for one. Each leased job is a map: job_id, queue, payload, attempt (the lease token), max_retries,
        lease_ms, checkpoint, tags, agent, timeout_ms."""
        queues = [queues] if isinstance(queues, str) else list(queues)
        return self._one("fetch", dict(queues=queues, worker_id=worker_id, count=count, wait_ms=wait_ms,
                                       lease_ms=lease_ms, **_given({"hostname": hostname})), lambda ok: ok["jobs"])

    def ack(self, job_id: str, attempt: int | None = None, result=None, *, checkpoint=None,
            usage: dict | None = None, agent_status: str | None = None, hold_reason: str | None = None,
            hold_payload=None, hold_timeout_ms: int | None = None, timeout_action: str | None = None,
            trace=None, request_id: str | None = None) -> dict:
        """Complete an active job with `result` (agent jobs: `agent_status` "continue" or "hold").

        Args:
          attempt: The lease token fetch returned; refused (lease_lost) if the job moved on.
          checkpoint: Stored with the job. usage: this attempt's token usage and cost.
          hold_reason, hold_payload, hold_timeout_ms, timeout_action: with agent_status "hold".
          trace: Stored with the job.
        """
        options = dict(attempt=attempt, checkpoint=checkpoint, usage=usage, agent_status=agent_status,
                       hold_reason=hold_reason, hold_payload=hold_payload, hold_timeout_ms=hold_timeout_ms,
                       timeout_action=timeout_action, trace=trace, request_id=request_id)
        return self._one("ack", dict(job_id=job_id, result=result, **_given(options)))

    def fail(self, job_id: str, error: str, attempt: int | None = None, *, backtrace: str | None = None,
             checkpoint=None, usage: dict | None = None, request_id: str | None = None) -> dict:
        """Fail the current attempt: the job is retried with backoff, or goes dead when attempts are spent.
        `checkpoint` is kept for the next attempt. Answers `state`, `next_attempt_at`, `attempts_remaining`."""
        options = dict(attempt=attempt, backtrace=backtrace, checkpoint=checkpoint, usage=usage,
                       request_id=request_id)
        return self._one("fail", dict(job_id=job_id, error=error, **_given(options)))

    def ack_batch(self, acks: list | None = None, fails: list | None = None, *,
                  request_id: str | None = None) -> dict:
        """Complete and fail many jobs in one frame: `acks` are maps of ack's args, `fails` of fail's
        (each with `job_id`; no request_id). Each is applied as if sent alone. Answers
        `{"acks": [...], "fails": [...]}`, one `{"ok": ...}` or `{"err": ...}` per item, in order."""
        return self._one("ack_batch", _given(dict(acks=acks or None, fails=fails or None, request_id=request_id)))

    def heartbeat(self, worker_id: str, jobs: dict) -> dict:
        """Extend the leases of `jobs` ({job_id: {progress, checkpoint, usage, attempt}}); answers per job
        {"status": "ok"|"cancel"|"lost", "budget_exceeded": bool}."""
        return self._one("heartbeat", {"worker_id": worker_id, "jobs": jobs}, lambda ok: ok["jobs"])

    # ---------------------------------------------------------------- queues
    def pause(self, queue: str) -> dict:
        """Stop handing out jobs of `queue` (enqueue still works)."""
        return self._one("pause_queue", {"queue": queue})

    def resume(self, queue: str) -> dict:
        """Hand out jobs of `queue` again."""
        return self._one("resume_queue", {"queue": queue})

    def queues(self) -> list:
        """Every known queue with its counts per state."""
        return self._one("list_queues", {}, lambda ok: ok["queues"])

    def status(self) -> dict:
        """The node: raft role, leader, indexes, durability mode and actor processes."""
        return self._one("cluster_status", {})

    # ------------------------------------------------- usage and prices (docs/ai.md)
    def set_price(self, model: str, input_usd_per_mtok: float, output_usd_per_mtok: float,
                  provider: str | None = None, *, cache_read_usd_per_mtok: float | None = None,
                  cache_write_usd_per_mtok: float | None = None, note: str | None = None,
                  actor: str | None = None) -> dict:
        """Set a model's price per million tokens (input, output, and optionally cache reads / writes)."""
        options = dict(provider=provider, cache_read_usd_per_mtok=cache_read_usd_per_mtok,
                       cache_write_usd_per_mtok=cache_write_usd_per_mtok, note=note, actor=actor)
        return self._one("set_price", dict(model=model, input_usd_per_mtok=input_usd_per_mtok,
                                           output_usd_per_mtok=output_usd_per_mtok, **_given(options)))

    def list_prices(self) -> list:
        """The price table."""
        return self._one("list_prices", {}, lambda ok: ok["prices"])

    def delete_price(self, model: str, provider: str | None = None) -> dict:
        """Remove a model's price."""
        return self._one("delete_price", dict(model=model, **_given({"provider": provider})))

    def usage_summary(self, since: int | None = None, until: int | None = None, group_by=None, *,
                      queue: str | None = None, namespace: str | None = None, model: str | None = None,
                      provider: str | None = None, tags: dict | None = None, limit: int | None = None) -> dict:
        """Tokens and cost summed over a time range (ms), grouped by `group_by` (a name or a list of
        model, provider, queue, namespace, ...), filtered by the keyword arguments."""
        group_by = [group_by] if isinstance(group_by, str) else group_by
        return self._one("usage_summary", _given(dict(since=since, until=until, group_by=group_by, queue=queue,
                                                      namespace=namespace, model=model, provider=provider,
                                                      tags=tags, limit=limit)))

    def rebuild_usage(self) -> dict:
        """Make the usage actor rebuild its rollups from the store."""
        return self._one("rebuild_usage", {})

    # ------------------------------------------- budgets, held jobs, audit (docs/ai.md)
    def set_budget(self, budget_id: str, scope: str = "global", target: str | None = None,
                   limit_usd: float | None = None, limit_tokens: int | None = None, window: str = "day", *,
                   hours: int | None = None, on_exceed: str | None = None, alert_queue: str | None = None,
                   hold_timeout_ms: int | None = None, timeout_action: str | None = None, note: str | None = None,
                   actor: str | None = None) -> dict:
        """Create or replace a budget; answers it as get_budget shows it (plus `replaced`).

        hours goes with window "hours"; on_exceed is "hold", "reject" or "alert" (alert_queue gets a job);
        hold_timeout_ms and timeout_action apply to the jobs it holds."""
        options = dict(target=target, limit_usd=limit_usd, limit_tokens=limit_tokens, hours=hours,
                       on_exceed=on_exceed, alert_queue=alert_queue, hold_timeout_ms=hold_timeout_ms,
                       timeout_action=timeout_action, note=note, actor=actor)
        return self._one("set_budget", dict(budget_id=budget_id, scope=scope, window=window, **_given(options)))

    def get_budget(self, budget_id: str) -> dict:
        """One budget with its spend now: limit, spent, reserved, remaining, reset_at."""
        return self._one("get_budget", {"budget_id": budget_id}, lambda ok: ok["budget"])

    def list_budgets(self, scope: str | None = None) -> list:
        """Every budget (or those of one scope), each as get_budget shows it."""
        return self._one("list_budgets", _given({"scope": scope}), lambda ok: ok["budgets"])

    def delete_budget(self, budget_id: str, note: str | None = None) -> dict:
        """Remove a budget (the jobs it held stay held)."""
        return self._one("delete_budget", dict(budget_id=budget_id, **_given({"note": note})))

    def approve(self, job_ids, note: str | None = None, extend: dict | None = None,
                actor: str | None = None) -> dict:
        """Release held job(s) to pending: one id (answers with `state`) or a list (`affected`, `errors`).
        `extend={"usd": 5}` raises the budget that held them instead of letting them run past it once."""
        target = {"job_id": job_ids} if isinstance(job_ids, str) else {"job_ids": list(job_ids)}
        return self._one("approve_job", dict(target, **_given({"note": note, "extend": extend, "actor": actor})))

    def reject(self, job_ids, note: str | None = None, actor: str | None = None) -> dict:
        """Cancel held job(s); `last_error` becomes "rejected: NOTE"."""
        target = {"job_id": job_ids} if isinstance(job_ids, str) else {"job_ids": list(job_ids)}
        return self._one("reject_job", dict(target, **_given({"note": note, "actor": actor})))

    def held(self, queue: str | None = None, budget_id: str | None = None, limit: int = 100) -> list:
        """Held jobs: job_id, queue, hold_reason, held_at, hold_until, cost_usd, ..."""
        return self._one("list_held", dict(limit=limit, **_given({"queue": queue, "budget_id": budget_id})),
                         lambda ok: ok["jobs"])

    def audit(self, job_id: str | None = None, budget_id: str | None = None, kind=None, since: int | None = None,
              limit: int = 100) -> list:
        """Audit events, newest first (see list_audit for the paging cursor)."""
        kind = [kind] if isinstance(kind, str) else kind
        return self._one("list_audit", dict(limit=limit, **_given({"job_id": job_id, "budget_id": budget_id,
                                                                    "kind": kind, "since": since})),
                         lambda ok: ok["events"])

    # ------------------------------------------------------ agent loops (docs/ai.md)
    def iterations(self, job_id: str, full: bool = False) -> list:
        """An agent job's iteration records, in order (checkpoints and traces with `full`)."""
        return self._drive(self._iterations_flow(job_id, full))

    @staticmethod
    def _iterations_flow(job_id: str, full: bool):
        out, after = [], 0
        while True:
            page = yield "list_iterations", {"job_id": job_id, "after": after, "limit": 10_000, "full": full}
            out += page["iterations"]
            if not page["has_more"]:
                return out
            after = out[-1]["n"]

    def replay(self, job_id: str, from_iteration: int = 1, *, payload=None, agent: dict | None = None,
               tags: dict | None = None, queue: str | None = None, budget_usd: float | None = None) -> str:
        """Replay an agent job from an iteration, optionally with another payload, agent, tags, queue or
        budget_usd; returns the new job's id."""
        overrides = _given(dict(payload=payload, agent=agent, tags=tags, queue=queue, budget_usd=budget_usd))
        return self._one("replay_job", dict(job_id=job_id, from_iteration=from_iteration,
                                            **_given({"overrides": overrides or None})), lambda ok: ok["job_id"])
