"""Budget, held-job and audit ops (their rows join OPS in transport/ops.py).

`set_budget`, `delete_budget`, `approve_job` and `reject_job` are writes
(storage/budgets.py, storage/holds.py); `get_budget`, `list_budgets`,
`list_held` and `list_audit` are point reads of LMDB. What the Arg rows
cannot say is checked here, before anything leaves the gateway: a scope's
target, a rolling window's hours, a budget without any limit, one of
`job_id` / `job_ids`.
"""
from __future__ import annotations

from .ops import _EXTRA_CHECKS, ACTOR, INT64_MAX, NOTE, QUEUE_NAME, REQUEST_ID, Arg, _bad, _op, _type_name
from .ops_search import check_job_ids

SCOPES = ("global", "namespace", "queue", "tag")
WINDOWS = ("total", "day", "month", "hours")
ON_EXCEED = ("hold", "reject", "alert")
AUDIT_KINDS = ("held", "released", "approved", "rejected", "budget_set", "budget_deleted", "budget_extended",
               "budget_exceeded", "price_set", "price_deleted", "token_created", "token_revoked")
HOURS_MAX = 744
IDS_MAX = 1000
USD_MAX = 1e9

BUDGET_ID = Arg("budget_id", "id", "The budget's name (1-128 printable ASCII; `job` is reserved for per-job caps).",
                required=True)
_BUDGET_VIEW = ("id", "scope", "target", "window", "hours", "on_exceed", "alert_queue", "hold_timeout_ms",
                "timeout_action", "note", "created_at", "updated_at", "limit_usd", "limit_tokens", "spent_usd",
                "spent_tokens", "reserved_usd", "running", "remaining_usd", "remaining_tokens", "exceeded",
                "window_start", "reset_at", "held", "avg_attempt_usd")

_op("set_budget", "write", "Create or replace a budget: a spend limit (USD and/or tokens) over a window for the "
    "jobs of a scope, enforced by the state machine at enqueue, fetch (with reservation), heartbeat and ack "
    "(docs/ai.md). Replacing keeps the spend of the current window when the window is unchanged.", (
        BUDGET_ID,
        Arg("scope", "str", "global (every job), namespace (queues named NAMESPACE or NAMESPACE.*), queue, or "
            "tag (jobs carrying the tag).", required=True, choices=SCOPES),
        Arg("target", "str", "The namespace, the queue name, or `key=value` for a tag scope; absent for global.",
            length_max=321),
        Arg("limit_usd", "float", "Spend limit in USD per window.", low=0, high=USD_MAX),
        Arg("limit_tokens", "int", "Token limit (input + output + cache) per window.", low=0, high=INT64_MAX),
        Arg("window", "str", "total (never resets), day or month (UTC calendar), or hours (rolling, with `hours`).",
            default="day", choices=WINDOWS),
        Arg("hours", "int", f"Length of a rolling window, 1-{HOURS_MAX} hours (window hours only).", low=1,
            high=HOURS_MAX),
        Arg("on_exceed", "str", "hold (jobs go `held`, hold_reason budget:ID), reject (enqueue is refused with "
            "RESOURCE_EXHAUSTED/budget_exceeded and fetch leaves the jobs pending), or alert (an audit event and "
            "an alert job; jobs run on).", default="hold", choices=ON_EXCEED),
        Arg("alert_queue", "queue", "When the budget is first spent in a window, enqueue a job here carrying the "
            "budget's figures."),
        Arg("hold_timeout_ms", "int", "Jobs this budget holds are acted on after this long (timeout_action).",
            low=1000, high=366 * 86_400_000),
        Arg("timeout_action", "str", "approve or reject (default reject), with hold_timeout_ms.",
            choices=("approve", "reject")),
        NOTE, ACTOR, REQUEST_ID,
    ), ok=_BUDGET_VIEW + ("replaced",))
_op("get_budget", "read", "One budget with its spend now: limit, spent, reserved, remaining, window reset.",
    (BUDGET_ID,), ok=("budget",), errors=("NOT_FOUND",))
_op("list_budgets", "read", "Every budget, by id, with its spend now (the fields of get_budget).", (
    Arg("scope", "str", "Only budgets of this scope.", choices=SCOPES),
), ok=("budgets",))
_op("delete_budget", "write", "Delete a budget. Jobs it holds stay held (approve or reject them); reservations "
    "on it are dropped.", (BUDGET_ID, NOTE, ACTOR, REQUEST_ID), ok=("held",), errors=("NOT_FOUND",))

_TARGETS = (
    Arg("job_id", "id", "One held job. Give this or `job_ids`."),
    Arg("job_ids", "list", f"Held jobs, 1-{IDS_MAX}; each refusal is listed in `errors`, the rest go ahead. "
        "For a search filter, use bulk with action approve / reject."),
)
_op("approve_job", "write", "Release held jobs to pending. A job held by a budget may then run past that budget "
    "once, unless `extend` raises the budget instead.", _TARGETS + (
        NOTE, ACTOR,
        Arg("extend", "struct", "Raise what held the job(s) by this much: the budget's limit (`budget:ID`, once "
            "per budget per call), the job's own cap (`budget:job`), or an agent's guardrail (`max_cost`: usd; "
            "`max_iterations`: iterations).", fields=(
                Arg("usd", "float", "USD to add to the limit.", low=0, high=USD_MAX),
                Arg("tokens", "int", "Tokens to add to the limit.", low=0, high=INT64_MAX),
                Arg("iterations", "int", "Iterations to add to an agent's max_iterations.", low=1, high=100_000),
            )),
        Arg("payload", "any", "Agent jobs: the decision's payload, handed to the next iteration in `approval`."),
        REQUEST_ID,
    ), ok=("affected", "errors", "state"),
    errors=("NOT_FOUND", "FAILED_PRECONDITION/wrong_state", "FAILED_PRECONDITION/no_budget_hold"))
_op("reject_job", "write", "Cancel held jobs; `last_error` becomes `rejected: NOTE`. With `revise`, an agent "
    "job goes back to pending instead, the note and payload in its next iteration's `approval`.", _TARGETS + (
    NOTE, ACTOR,
    Arg("revise", "bool", "Agent jobs: re-queue with the feedback instead of cancelling.", default=False),
    Arg("payload", "any", "With revise: feedback for the next iteration (`approval.payload`)."),
    REQUEST_ID,
), ok=("affected", "errors", "state"), errors=("NOT_FOUND", "FAILED_PRECONDITION/wrong_state"))
_op("list_held", "read", "Held jobs with why and since when, by queue then id (or those of one budget).", (
    Arg("queue", "queue", "Only this queue."),
    Arg("budget_id", "id", "Only jobs held by this budget."),
    Arg("limit", "int", "Jobs at most.", default=100, low=1, high=1000),
    Arg("after", "id", "Cursor (with queue or budget_id): jobs after this id."),
), ok=("jobs", "has_more", "cursor"))
_op("list_audit", "read", "The audit trail, newest first: holds and releases, approvals, rejections, budget and "
    "price changes, budget crossings.", (
        Arg("job_id", "id", "Only events of this job."),
        Arg("budget_id", "id", "Only events of this budget."),
        Arg("kind", "list", f"Only these kinds: {', '.join(AUDIT_KINDS)}."),
        Arg("since", "int", "Only events at or after this time (ms).", low=0, high=INT64_MAX),
        Arg("until", "int", "Only events at or before this time (ms).", low=0, high=INT64_MAX),
        Arg("before", "int", "Cursor: events older than this `seq` (the previous page's `cursor`).", low=1,
            high=INT64_MAX),
        Arg("limit", "int", "Events at most.", default=100, low=1, high=1000),
    ), ok=("events", "cursor", "has_more"))


def _check_set_budget(args, limits, frame_bytes, now_ms):
    if args["budget_id"] == "job":
        _bad("budget id `job` is reserved for per-job caps", "budget_id", "invalid_name")
    scope, target = args["scope"], args.get("target")
    if scope == "global":
        if target:
            _bad("a global budget takes no target", "target", "conflicting_fields")
    elif not target:
        _bad(f"a {scope} budget needs a target", "target", "missing_field")
    elif scope == "queue" and not QUEUE_NAME.match(target):
        _bad(f"target {target[:64]!r} is not a valid queue name", "target", "invalid_name")
    elif scope == "namespace" and (not QUEUE_NAME.match(target) or "." in target):
        _bad(f"target {target[:64]!r} is not a namespace (a queue name's part before its first `.`)", "target",
             "invalid_name")
    elif scope == "tag":
        key, eq, value = target.partition("=")
        if not eq or not 1 <= len(key) <= 64 or len(value) > 256 or "\x00" in target:
            _bad("a tag target is key=value (key 1-64 chars, value at most 256)", "target", "invalid_name")
    if args.get("limit_usd") is None and args.get("limit_tokens") is None:
        _bad("a budget needs limit_usd or limit_tokens (or both)", "limit_usd", "missing_field")
    if args["window"] == "hours" and args.get("hours") is None:
        _bad("window hours needs hours (1-744)", "hours", "missing_field")
    if args["window"] != "hours" and args.get("hours") is not None:
        _bad("hours goes with window hours", "hours", "conflicting_fields")
    if args.get("timeout_action") is not None and args.get("hold_timeout_ms") is None:
        _bad("timeout_action goes with hold_timeout_ms", "timeout_action", "conflicting_fields")
    if args["on_exceed"] != "hold" and args.get("hold_timeout_ms") is not None:
        _bad("hold_timeout_ms goes with on_exceed hold", "hold_timeout_ms", "conflicting_fields")


def _check_targets(args, limits, frame_bytes, now_ms):
    one, many = args.get("job_id"), args.get("job_ids")
    if one is not None and many is not None:
        _bad("give job_id or job_ids, not both", "job_ids", "conflicting_fields")
    if one is None and many is None:
        _bad("give job_id or job_ids", "job_id", "missing_field")
    if many is not None:
        args["job_ids"] = check_job_ids(many, IDS_MAX)
    extend = args.get("extend")
    if extend is not None and not any(extend.get(k) for k in ("usd", "tokens", "iterations")):
        _bad("extend needs usd, tokens or iterations above 0", "extend", "missing_field")


def _check_list_audit(args, limits, frame_bytes, now_ms):
    kinds = args.get("kind")
    if kinds is not None:
        if not 1 <= len(kinds) <= len(AUDIT_KINDS):
            _bad(f"kind must name 1 to {len(AUDIT_KINDS)} kinds", "kind", "out_of_range")
        for i, k in enumerate(kinds):
            if type(k) is not str:
                _bad(f"kind[{i}] must be a string, got {_type_name(k)}", f"kind[{i}]", "wrong_type")
            if k not in AUDIT_KINDS:
                _bad(f"kind[{i}] must be one of {', '.join(AUDIT_KINDS)}; got {k[:64]!r}", f"kind[{i}]",
                     "invalid_choice")
    if args.get("since") is not None and args.get("until") is not None and args["since"] > args["until"]:
        _bad("until must not be before since", "until", "out_of_range")


_EXTRA_CHECKS["set_budget"] = _check_set_budget
_EXTRA_CHECKS["approve_job"] = _check_targets
_EXTRA_CHECKS["reject_job"] = _check_targets
_EXTRA_CHECKS["list_audit"] = _check_list_audit
