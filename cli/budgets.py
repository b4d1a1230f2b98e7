"""CLI commands for budgets, held jobs and the audit trail (mixed into cli.main.Cli)."""
from __future__ import annotations

import time

from jobbie.transport.errors import JobbieError

from . import render
from .common import _client, _duration, _fail, _fail_with, _json_arg, _print, _run, _who
from .search import _follow
from .usage import time_arg

#: Ids one approve_job / reject_job call carries at most (the server's cap).
IDS_PER_CALL = 1000


def _usd(value, name):
    if value is None:
        return None
    try:
        out = float(str(value).lstrip("$"))
    except ValueError:
        _fail(f"{name} must be an amount in USD (e.g. 10 or 2.50); got {value!r}", 2)
    return out


def _money(x):
    return "-" if x is None else f"${x:,.4f}".rstrip("0").rstrip(".") if x else "$0"


def _age(ms, now_ms):
    """How long ago `ms` was, without the word (the held table's AGE column)."""
    return render.ago(ms, now_ms).removesuffix(" ago") if ms else "-"


def budget_line(b) -> str:
    limits = " and ".join(x for x in (None if b["limit_usd"] is None else _money(b["limit_usd"]),
                                      None if b["limit_tokens"] is None else f"{b['limit_tokens']:,} tokens") if x)
    window = f"rolling {b['hours']} h" if b["window"] == "hours" else f"per {b['window']}" \
        if b["window"] != "total" else "in total"
    scope = b["scope"] if b["scope"] == "global" else f"{b['scope']} {b['target']}"
    return f"budget {b['id']}: {limits} {window} for {scope}, on exceed {b['on_exceed']}"


def budgets_table(r) -> str:
    if not r["budgets"]:
        return "no budgets set (set one with: jobbie budget set ID --limit-usd 10)"
    rows = []
    for b in r["budgets"]:
        scope = b["scope"] if b["scope"] == "global" else f"{b['scope']}:{b['target']}"
        window = f"{b['hours']}h" if b["window"] == "hours" else b["window"]
        limit = _money(b["limit_usd"]) if b["limit_usd"] is not None else f"{b['limit_tokens']:,} tok"
        spent = _money(b["spent_usd"]) if b["limit_usd"] is not None else f"{b['spent_tokens']:,} tok"
        remaining = _money(b["remaining_usd"]) if b["limit_usd"] is not None else f"{b['remaining_tokens']:,} tok"
        rows.append([b["id"], scope, window, limit, spent, _money(b["reserved_usd"]), remaining, b["on_exceed"],
                     "EXCEEDED" if b["exceeded"] else "ok", b["held"], render._stamp(b["reset_at"])])
    return render.table(rows, ["ID", "SCOPE", "WINDOW", "LIMIT", "SPENT", "RESERVED", "REMAINING", "ON_EXCEED",
                               "STATUS", "HELD", "RESETS"])


def budget_detail(r) -> str:
    b = r["budget"]
    out = [budget_line(b)]
    for label, key in (("spent", "spent_usd"), ("reserved", "reserved_usd"), ("remaining", "remaining_usd")):
        if b["limit_usd"] is not None:
            out.append(f"  {label:<10} {_money(b[key])}")
    if b["limit_tokens"] is not None:
        out.append(f"  tokens     {b['spent_tokens']:,} spent, {b['remaining_tokens']:,} remaining")
    out.append(f"  running    {b['running']} job(s) holding a reservation"
               + (f"; recent cost per attempt {_money(b['avg_attempt_usd'])}" if b["avg_attempt_usd"] else ""))
    out.append(f"  held       {b['held']} job(s)" + ("  (see: jobbie held --budget " + b["id"] + ")"
                                                     if b["held"] else ""))
    out.append(f"  window     from {render._stamp(b['window_start'])}, resets {render._stamp(b['reset_at'])}")
    if b["alert_queue"]:
        out.append(f"  alerts to  {b['alert_queue']}")
    if b["hold_timeout_ms"]:
        out.append(f"  hold time-out {b['hold_timeout_ms'] // 1000} s, then {b['timeout_action'] or 'reject'}")
    if b["exceeded"]:
        out.append("  EXCEEDED for this window")
    return "\n".join(out)


def held_table(r) -> str:
    now = int(time.time() * 1000)
    if not r["jobs"]:
        return "no held jobs"
    rows = [[j["job_id"], j["queue"], (j["hold_reason"] or "-")[:60], _age(j["held_at"], now),
             _money(j["cost_usd"]), "-" if not j["hold_until"] else f"{_age(now, j['hold_until'])} -> "
             f"{j['timeout_action']}"] for j in r["jobs"]]
    out = render.table(rows, ["ID", "QUEUE", "REASON", "HELD_FOR", "COST_SO_FAR", "TIMES_OUT_IN"])
    if r["has_more"]:
        out += "\n(more held jobs than shown: raise --limit or narrow with --queue / --budget)"
    return out


def audit_table(r) -> str:
    if not r["events"]:
        return "no audit events"
    rows = []
    for e in r["events"]:
        target = e.get("job_id") or e.get("budget_id") or e.get("reason") or "-"
        what = e.get("reason") if e.get("job_id") or e.get("budget_id") else None
        detail = "; ".join(x for x in (what, e.get("event") if e["kind"] in ("held", "released") else None,
                                       f"-> {e['to_state']}" if e.get("to_state") else None,
                                       f"note: {e['note']}" if e.get("note") else None) if x)
        rows.append([e["seq"], render._stamp(e["at"]), e["kind"], e.get("who", "-"), target, detail[:100]])
    out = render.table(rows, ["SEQ", "AT", "KIND", "WHO", "TARGET", "DETAIL"])
    if r["has_more"]:
        out += f"\n(older events: jobbie audit --before {r['cursor']})"
    return out


class BudgetCli:
    """Spend limits enforced by the server: jobbie budget set|list|show|delete."""

    def set(self, budget_id: str, limit_usd: str = None, limit_tokens: int = None, scope: str = "global",
            target: str = None, window: str = "day", hours: int = None, on_exceed: str = "hold",
            alert_queue: str = None, hold_timeout: str = None, timeout_action: str = None, note: str = None,
            actor: str = None, server: str = None, output: str = "text"):
        """Create or replace budget BUDGET_ID, e.g. jobbie budget set llm-daily --limit-usd 50 --scope namespace --target ai

        Args:
          budget_id: The budget's name (1-128 printable characters).
          limit_usd: Spend limit in USD per window.
          limit_tokens: Token limit per window (input + output + cache).
          scope: global (default), namespace, queue or tag.
          target: The namespace, queue, or KEY=VALUE tag the budget covers (not for global).
          window: day (default, UTC), month (UTC), total (never resets) or hours (rolling, with --hours).
          hours: Length of a rolling window in hours (1-744), with --window hours.
          on_exceed: hold (default: jobs wait in held for approval), reject (enqueue refused, jobs stay
            pending), or alert (record and alert only).
          alert_queue: Queue that gets a job with the figures when the budget is first spent in a window.
          hold_timeout: Act on the jobs this budget holds after this long (30m, 2h, 7d), per --timeout-action.
          timeout_action: approve or reject (default) after --hold-timeout.
          note: Kept in the audit trail.
          actor: Who you are, for the audit trail (default: cli:LOGIN).
        """
        args = {"budget_id": str(budget_id), "scope": str(scope), "target": target,
                "limit_usd": _usd(limit_usd, "--limit-usd"),
                "limit_tokens": None if limit_tokens is None else int(limit_tokens), "window": str(window),
                "hours": None if hours is None else int(hours), "on_exceed": str(on_exceed),
                "alert_queue": alert_queue, "hold_timeout_ms": _duration(hold_timeout, "--hold-timeout"),
                "timeout_action": timeout_action, "note": note, "actor": _who(actor)}
        return _run(server, output, "set_budget", args,
                    lambda r: ("replaced " if r["replaced"] else "set ") + budget_line(r))

    def list(self, scope: str = None, server: str = None, output: str = "text"):  # noqa: A003
        """List budgets with their spend now: limit, spent, reserved, remaining, reset time.

        Args:
          scope: Only budgets of this scope (global, namespace, queue, tag).
        """
        return _run(server, output, "list_budgets", {"scope": scope}, budgets_table)

    def show(self, budget_id: str, server: str = None, output: str = "text"):
        """Show one budget in detail."""
        return _run(server, output, "get_budget", {"budget_id": str(budget_id)}, budget_detail)

    def delete(self, budget_id: str, note: str = None, actor: str = None, server: str = None,
               output: str = "text"):
        """Delete a budget (jobs it holds stay held: approve or reject them).

        Args:
          budget_id: The budget to delete.
          note: Kept in the audit trail.
          actor: Who you are, for the audit trail (default: cli:LOGIN).
        """
        return _run(server, output, "delete_budget", {"budget_id": str(budget_id), "note": note,
                                                      "actor": _who(actor)},
                    lambda r: f"deleted budget {budget_id}" + (f"; {r['held']} job(s) it held stay held"
                                                               if r["held"] else ""))


class BudgetCommands:
    budget = BudgetCli()

    def held(self, queue: str = None, budget: str = None, limit: int = 100, server: str = None,
             output: str = "text"):
        """List held jobs: id, queue, reason, how long held, cost so far.

        Args:
          queue: Only this queue.
          budget: Only jobs this budget holds.
          limit: Jobs shown at most.
        """
        return _run(server, output, "list_held", {"queue": queue, "budget_id": budget, "limit": int(limit)},
                    held_table)

    def approve(self, *job_ids, note: str = None, queue: str = None, budget: str = None, extend_usd: str = None,
                extend_tokens: int = None, extend_iterations: int = None, payload: str = None, actor: str = None,
                server: str = None, output: str = "text"):
        """Release held jobs to pending: jobbie approve JOB_ID... [--note TEXT], or every held job of --queue / --budget.

        Args:
          job_ids: Held jobs to approve.
          note: Kept in the audit trail.
          queue: Approve every held job of this queue (instead of ids).
          budget: Approve every job this budget holds (instead of ids).
          extend_usd: Raise the limit of the budget that held them by this much (else they may run past it once).
          extend_tokens: Raise its token limit by this much.
          extend_iterations: Agent jobs held by max_iterations or loop_detected: allow this many more iterations.
          payload: Agent jobs: JSON handed to the next iteration with the decision (job.approval).
          actor: Who you are, for the audit trail (default: cli:LOGIN).
        """
        extend = {k: v for k, v in (("usd", _usd(extend_usd, "--extend-usd")),
                                    ("tokens", None if extend_tokens is None else int(extend_tokens)),
                                    ("iterations", None if extend_iterations is None else int(extend_iterations)))
                  if v}
        extra = {"extend": extend} if extend else {}
        if payload is not None:
            extra["payload"] = _json_arg(payload, "--payload")
        return _decide("approve", job_ids, queue, budget, note, actor, server, output, extra)

    def reject(self, *job_ids, note: str = None, queue: str = None, budget: str = None, revise: bool = False,
               payload: str = None, actor: str = None, server: str = None, output: str = "text"):
        """Cancel held jobs: jobbie reject JOB_ID... [--note TEXT], or every held job of --queue / --budget.

        Args:
          job_ids: Held jobs to reject.
          note: Why; kept in the audit trail and in the jobs' last_error.
          queue: Reject every held job of this queue (instead of ids).
          budget: Reject every job this budget holds (instead of ids).
          revise: Agent jobs: send them back for another iteration with the note (and --payload) as feedback.
          payload: With --revise: JSON feedback for the next iteration (job.approval).
          actor: Who you are, for the audit trail (default: cli:LOGIN).
        """
        extra = {"revise": True} if revise else {}
        if payload is not None:
            extra["payload"] = _json_arg(payload, "--payload")
        return _decide("reject", job_ids, queue, budget, note, actor, server, output, extra)

    def audit(self, job: str = None, budget: str = None, kind: str = None, since: str = None, before: int = None,
              limit: int = 50, server: str = None, output: str = "text"):
        """The audit trail, newest first: holds, approvals, rejections, budget and price changes.

        Args:
          job: Only events of this job.
          budget: Only events of this budget.
          kind: Comma-separated kinds: held, released, approved, rejected, budget_set, budget_deleted,
            budget_extended, budget_exceeded, price_set, price_deleted.
          since: Only events since then: a span before now (24h, 7d) or ms since the epoch.
          before: Page back: events older than this seq (the hint under a full page).
          limit: Events shown at most.
        """
        now = int(time.time() * 1000)
        args = {"job_id": job, "budget_id": budget, "since": time_arg(since, "--since", now),
                "kind": [k.strip() for k in str(kind).split(",") if k.strip()] if kind else None,
                "before": None if before is None else int(before), "limit": int(limit)}
        return _run(server, output, "list_audit", args, audit_table)


def _decide(verb, job_ids, queue, budget, note, actor, server, output, extra):
    """approve / reject: ids in calls of up to 1000, or every held job of a queue or a budget."""
    ids = [str(j) for j in job_ids]
    chosen = sum(bool(x) for x in (ids, queue, budget))
    if chosen != 1:
        _fail(f"jobbie {verb}: give job ids, or --queue QUEUE, or --budget ID (exactly one of them)", 2)
    op = f"{verb}_job"
    common = dict(extra, note=note, actor=_who(actor))
    common = {k: v for k, v in common.items() if v is not None}
    if output not in ("text", "json"):
        _fail(f"--output must be text or json, not {output!r}", 2)
    if queue and extra:
        _fail(f"jobbie {verb} --queue does not take --extend-*, --payload or --revise: name the jobs, or use "
              "--budget", 2)
    affected, errors = 0, []
    with _client(server, timeout=10.0, retry_for=10.0) as client:
        try:
            if queue:
                # Through the mirror's bulk path: every held job of the queue, however many. A bulk is
                # not resent on a time-out (it is not idempotent as a whole).
                with _client(server, timeout=130.0, retry_for=0.0) as once:
                    r = once.call("bulk", action=verb, filter={"queue": str(queue), "state": ["held"]},
                                  **{k: v for k, v in common.items() if k in ("note", "actor")})
                if r.get("status") == "running":
                    r = _follow(client, r, output == "text")
                affected, errors = r.get("affected", 0), r.get("errors", [])
            else:
                if budget:
                    ids = []
                    while True:
                        page = client.call("list_held", budget_id=str(budget), limit=1000,
                                           **({"after": ids[-1]} if ids else {}))
                        ids += [j["job_id"] for j in page["jobs"]]
                        if not page["has_more"]:
                            break
                for start in range(0, len(ids), IDS_PER_CALL):
                    r = client.call(op, job_ids=ids[start:start + IDS_PER_CALL], **common)
                    affected += r["affected"]
                    errors += r["errors"]
                    common.pop("extend", None)  # the budget is raised once
        except JobbieError as exc:
            _fail_with(exc, server)
    result = {"affected": affected, "errors": errors}

    def text(r):
        done = "sent back for revision" if extra.get("revise") else {"approve": "approved", "reject": "rejected"}[verb]
        lines = [f"{done} {r['affected']} job(s)"]
        lines += [f"  {e.get('job_id', '?')}: {e.get('message')}" for e in r["errors"][:20]]
        if len(r["errors"]) > 20:
            lines.append(f"  ... and {len(r['errors']) - 20} more refused")
        return "\n".join(lines)
    _print(output, result, text)
    if errors and not affected:
        raise SystemExit(1)
