"""Regenerate the marked sections of docs/protocol.md and docs/states.md.

    python docs/generate.py          # rewrite the generated sections in place
    python docs/generate.py --check  # exit 1 if any generated section is stale

A generated section is everything between a line `<!-- generated:NAME -->` and
the line `<!-- /generated:NAME -->`. Text outside those lines is hand-written
and left alone. The tables come from the installed `jobbie` package only:
`jobbie.transport.ops.OPS` (arguments, defaults, bounds, `ok` fields) and
`jobbie.storage.states.TRANSITIONS` (the job state moves), so the docs cannot
drift from the code without `--check` noticing.

protocol.md sections: `op-summary`, `limits`, `reasons` (transport/errors.py REASONS), and one
`op:NAME` per op in OPS.
states.md sections: `states`, `transitions`, `diagram`.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from jobbie.storage import states as st
from jobbie.storage.machine import DEDUPE_TTL_MS, ERRORS_KEPT
from jobbie.transport import ops as opsdef
from jobbie.transport.codec import FRAME_BYTES_MAX, FRAME_CUT_BYTES
from jobbie.transport.errors import REASONS

DOCS = os.path.dirname(os.path.abspath(__file__))
PROTOCOL = os.path.join(DOCS, "protocol.md")
STATES = os.path.join(DOCS, "states.md")

BEGIN = re.compile(r"^<!-- generated:(\S+) -->$")
END = "<!-- /generated:{} -->"

# ------------------------------------------------------------------ hand-kept words
# OPS names the `ok` fields but does not describe them; these descriptions live
# here, next to the generator, keyed by (op, field) first and then by field.
OK_FIELD_DOCS = {
    # budgets (set_budget answers the record as get_budget shows it, plus `replaced`)
    "id": "The budget's id.",
    "scope": "`global`, `namespace`, `queue` or `tag`.",
    "target": "The namespace, queue or `key=value` tag (empty for global).",
    "window": "`total`, `day`, `month` or `hours`.",
    "hours": "Length of a rolling window (window `hours`), else nil.",
    "on_exceed": "`hold`, `reject` or `alert`.",
    "alert_queue": "Queue that gets a job when the budget is first spent in a window, or nil.",
    "hold_timeout_ms": "Hold time-out of the jobs it holds, or nil.",
    "timeout_action": "`approve` or `reject` after that time-out, or nil.",
    "note": "The note given with set_budget, or nil.",
    "limit_usd": "USD limit per window, or nil.",
    "limit_tokens": "Token limit per window, or nil.",
    "spent_usd": "USD spent in the current window.",
    "spent_tokens": "Tokens spent in the current window.",
    "reserved_usd": "USD reserved by running jobs (their estimates, less what they already spent).",
    "running": "Running jobs holding a reservation on this budget.",
    "remaining_usd": "limit - spent - reserved (never below 0), or nil without a USD limit.",
    "remaining_tokens": "limit - spent tokens (never below 0), or nil without a token limit.",
    "exceeded": "`true` when the current window's spend reached a limit.",
    "window_start": "Start of the current window (ms; 0 for total).",
    "reset_at": "When the current window's spend stops counting (ms), or nil for total.",
    "held": "Jobs this budget holds now.",
    "avg_attempt_usd": "Recent cost of one attempt of its jobs (the default reservation), or nil before any.",
    "created_at": "When created (ms).",
    "updated_at": "When last changed (ms).",
    ("set_budget", "replaced"): "`true` when a budget of that id existed.",
    ("get_budget", "budget"): "The budget: the fields set_budget answers (without `replaced`).",
    ("list_budgets", "budgets"): "Budgets by id, each as get_budget's `budget`.",
    ("delete_budget", "held"): "Jobs the budget held; they stay held.",
    "affected": "Jobs approved / rejected.",
    ("approve_job", "errors"): "Per refused job: `{job_id, code, reason, message}` (job_ids only; with job_id a "
                               "refusal is the answer).",
    ("reject_job", "errors"): "Per refused job: `{job_id, code, reason, message}` (job_ids only).",
    ("approve_job", "state"): "With job_id: `pending`.",
    ("reject_job", "state"): "With job_id: `cancelled`.",
    ("list_held", "jobs"): "`{job_id, queue, hold_reason, held_at, hold_until, timeout_action, cost_usd, attempt, "
                           "tags, has_checkpoint}` per held job.",
    ("list_held", "has_more"): "`true` when more held jobs match than `limit`.",
    ("list_held", "cursor"): "Pass as `after` for the next page (with queue or budget_id), or nil.",
    ("list_audit", "events"): "`{seq, at, kind, op, who, job_id, budget_id, queue, reason, event, to_state, note, "
                              "details}` per event (absent fields left out), newest first.",
    ("list_audit", "cursor"): "Pass as `before` for the next (older) page, or nil.",
    ("list_audit", "has_more"): "`true` when older events match.",
    ("replay_job", "job_id"): "The new job's id.",
    ("create_token", "token_id"): "The token's id (`tok_...`), the part before the dot.",
    ("create_token", "name"): "The name given.",
    ("create_token", "role"): "The role given.",
    ("create_token", "token"): "`TOKEN_ID.SECRET`: what clients send as `token`. Only in this answer: the node "
                               "keeps a SHA-256 of the secret (a retry answered from the request_id record has "
                               "no `token`).",
    ("list_tokens", "tokens"): "`{id, name, role, created_at, created_by, note, revoked_at, revoked_by}` per token, "
                               "by name (never a secret or hash).",
    ("revoke_token", "token_id"): "The revoked token's id.",
    ("revoke_token", "name"): "Its name.",
    ("revoke_token", "revoked_at"): "When it was revoked (ms; an earlier revocation's time if it already was).",
    ("health", "node_id"): "This node's id.",
    ("health", "role"): "`leader`, `follower`, `candidate`, or `unknown` (no recent raft report).",
    ("health", "leader_known"): "`true` when the raft layer knows a leader.",
    ("replay_job", "state"): "The new job's state (`pending`).",
    ("replay_job", "iteration"): "The iteration it starts at.",
    ("ack", "iteration"): "With agent_status continue: the job's next iteration.",
    ("list_iterations", "iterations"): "`{n, status, started_at, ended_at, worker_id, attempt, attempts, usage, "
                                       "cost_usd, result, digest, error, approval}` per iteration, in order.",
    ("list_iterations", "has_more"): "`true` when more iterations follow (page with `after`).",
    ("get_iteration", "iteration"): "The record, with `checkpoint` (the one it left) and `trace`.",
    ("enqueue", "job_id"): "Id of the new job, or of the live job that already holds the unique key.",
    ("enqueue", "state"): "State of that job now (`pending`, `scheduled`, `held`, or the existing job's state).",
    ("enqueue", "unique_existing"): "`true` when no job was created because the unique key is taken.",
    ("enqueue_batch", "job_ids"): "One id per entry of `jobs`, same order (an existing job's id where a unique key was taken).",
    ("enqueue_batch", "batch_id"): "`bat_...` id of the batch, or nil when `batch` was not given.",
    ("fetch", "jobs"): "Leased jobs, best first: maps `{job_id, queue, payload, attempt, max_retries, lease_ms, "
                       "checkpoint, tags, agent, timeout_ms}` (`timeout_ms`: the attempt's time limit, nil "
                       "without one; agent jobs add `iteration` and `approval`). Empty list when nothing was "
                       "found within `wait_ms`.",
    ("ack", "state"): "`completed`, or `held` with agent_status `hold`.",
    ("ack_batch", "acks"): "One answer per ack, in order: `{ok: ...}` as `ack` answers, or `{err: ...}` "
                           "(say `lease_lost`) for that job alone.",
    ("ack_batch", "fails"): "One answer per fail, in order, as `fail` answers (`{ok: ...}` or `{err: ...}`).",
    ("fail", "state"): "`retrying` (attempts left; with backoff 0 it is promoted to `pending` by the next lifecycle tick), `dead`, or `cancelled` (cancel was requested).",
    ("fail", "next_attempt_at"): "When the job may run again (ms since epoch); nil when `dead` or `cancelled`.",
    ("fail", "attempts_remaining"): "Attempts left after this one (0 when `dead` or `cancelled`).",
    ("heartbeat", "jobs"): "job_id → `{status, budget_exceeded}`; `status` is `ok` (lease extended), `cancel` "
                           "(cancel requested; lease not extended) or `lost` (not yours any more). "
                           "`budget_exceeded` is `true` once a budget of the job (a `hold` or `reject` layer, or its "
                           "own cap) is spent: save a checkpoint and fail the attempt; the job then goes `held` "
                           "(docs/ai.md, pause not kill).",
    ("get_job", "job"): "**Not wrapped**: the `ok` map *is* the job record (see \"The job record\").",
    ("cancel_job", "state"): "`cancelled`, or `active` when the job is running (it is told on its next heartbeat).",
    ("cancel_job", "cancel_requested"): "`true` when the job was active and cancellation is pending.",
    ("retry_job", "state"): "`pending`.",
    ("list_queues", "queues"): "List of `{name, paused, scheduled, pending, active, completed, retrying, dead, "
                               "cancelled, held}` (counts per state), in queue-name byte order.",
    ("cluster_status", "node_id"): "This node's id (`--node-id`, default `n1`).",
    ("cluster_status", "role"): "`leader`, `follower`, `candidate`, or `unknown` when the raft actor has not "
                                "reported for 2 s.",
    ("cluster_status", "leader"): "The leader's raft address (`host:port`), or nil.",
    ("cluster_status", "term"): "Raft term.",
    ("cluster_status", "commit_index"): "Raft commit index (as of the raft actor's last report, ≤ 0.2 s old).",
    ("cluster_status", "applied_index"): "Last raft index applied on this node (same freshness).",
    ("cluster_status", "durable"): "`true` when started with `--durable`.",
    ("cluster_status", "actors"): "List of `{name, pid, restarts, alive}`: raft, admission, gateway, lifecycle, "
                                  "mirror (unless `--mirror=false`), usage (unless `--usage=false`), http (unless `--http=false`), "
                                  "supervisor.",
    ("tick", "promoted"): "Scheduled/retrying jobs moved to `pending`.",
    ("tick", "reclaimed"): "Active jobs whose lease expired.",
    ("tick", "expired"): "Not-running jobs moved to `dead` by their TTL.",
    ("tick", "fired"): "Cron schedules fired (present only when non-zero).",
    ("tick", "woken"): "Throttled queues whose used-up window ended; their parked fetches were woken "
                       "(present only when non-zero).",
    ("tick", "pruned"): "Completed/cancelled jobs deleted by the retention (present only when non-zero).",
    ("tick", "workers_pruned"): "Worker records deleted by the worker retention (present only when non-zero).",
    ("digest", "applied_index"): "The raft index the store holds; compare digests only at equal indexes.",
    ("digest", "digest"): "Hex blake2b-128 over every named database's digest, in name order.",
    ("digest", "dbs"): "Per named database: `{entries, digest}`, to see where two replicas differ.",
    ("search_jobs", "jobs"): "The page: job records as `get_job` answers them, read from LMDB by id (so a record "
                             "may be up to 100 ms newer than the row that matched; a job deleted meanwhile is "
                             "left out).",
    ("search_jobs", "total"): "How many jobs match the filters in all (not just this page).",
    ("search_jobs", "cursor"): "Opaque: send it back as `cursor` (same filters, sort and order) for the next page; "
                               "nil on the last page.",
    ("search_jobs", "has_more"): "`true` when another page follows.",
    ("search_jobs", "duration_ms"): "How long the mirror took to answer.",
    ("bulk", "affected"): "Jobs the action changed.",
    ("bulk", "errors"): "Per-job refusals, the first 100: `{job_id, code, reason, message}`.",
    ("bulk", "error_count"): "Refusals in all (the list above is cut at 100).",
    ("bulk", "duration_ms"): "How long the run took (so far, for a run still going).",
    ("bulk", "bulk_id"): "`blk_...` id of the run; pass it to `bulk_status`.",
    ("bulk", "status"): "`done`, or `running` for a run over 1000 jobs, which answers at once (poll `bulk_status`).",
    ("bulk", "total"): "Jobs the run covers (matched by the filter, or given in `job_ids`), less those skipped.",
    ("bulk", "skipped"): "Jobs left out before the run because the action does not apply to their state "
                         "(e.g. `requeue` takes only finished jobs).",
    ("bulk_status", "bulk_id"): "The run's id.",
    ("bulk_status", "status"): "`running` or `done`.",
    ("bulk_status", "action"): "The bulk action (`retry`, `delete`, ...).",
    ("bulk_status", "total"): "Jobs the run covers.",
    ("bulk_status", "done"): "Jobs handled so far.",
    ("bulk_status", "affected"): "Jobs the action changed so far.",
    ("bulk_status", "skipped"): "Jobs left out because the action does not apply to their state.",
    ("bulk_status", "errors"): "Per-job refusals, the first 100: `{job_id, code, reason, message}`.",
    ("bulk_status", "error_count"): "Refusals in all.",
    ("bulk_status", "duration_ms"): "Time since the run started (until it ended, once done).",
    ("rebuild_mirror", "jobs"): "Jobs written into the new mirror file.",
    ("rebuild_mirror", "applied_index"): "The raft index the new mirror holds (it catches up from there).",
    ("rebuild_mirror", "duration_ms"): "How long the rebuild took.",
    ("create_schedule", "queue"): "Queue of the jobs it makes.",
    ("create_schedule", "cron"): "The cron expression, as given.",
    ("create_schedule", "timezone"): "The IANA zone the expression is read in.",
    ("create_schedule", "payload"): "Payload of each job it makes.",
    # usage and prices (docs/ai.md)
    ("usage_summary", "since"): "Window start actually used (floored to the hour).",
    ("usage_summary", "until"): "Window end actually used (rounded up to the hour; exclusive).",
    ("usage_summary", "group_by"): "The dimensions, as asked.",
    ("usage_summary", "groups"): "List of `{key, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
                                 "cost_usd, attempts, jobs, unmetered, cost_sources}`; `key` maps each dimension to "
                                 "its value (`day`/`hour`: ms at its start; nil: not reported); most expensive first.",
    ("usage_summary", "totals"): "The same figures over every attempt in the window that passes the filters.",
    ("usage_summary", "truncated"): "`true` when more groups exist than `limit`.",
    ("usage_summary", "applied_index"): "Raft index the rollups are complete up to.",
    ("usage_summary", "lag"): "Raft entries the usage actor is behind this node's raft (as of its last report).",
    ("rebuild_usage", "records"): "Usage records read from LMDB.",
    ("rebuild_usage", "applied_index"): "Raft index the new rollups are complete up to.",
    ("rebuild_usage", "duration_ms"): "How long the rebuild took.",
    ("list_prices", "prices"): "List of price records `{provider, model, input_usd_per_mtok, output_usd_per_mtok, "
                               "cache_read_usd_per_mtok, cache_write_usd_per_mtok, created_at, updated_at}`.",
    ("set_price", "provider"): "The provider, as given.",
    ("set_price", "model"): "The model, as given.",
    ("set_price", "input_usd_per_mtok"): "USD per million input tokens.",
    ("set_price", "output_usd_per_mtok"): "USD per million output tokens.",
    ("set_price", "cache_read_usd_per_mtok"): "USD per million cache-read tokens (0 when not given).",
    ("set_price", "cache_write_usd_per_mtok"): "USD per million cache-write tokens (0 when not given).",
    ("set_price", "created_at"): "When this (provider, model) first got a price (state-clock ms).",
    ("set_price", "updated_at"): "When the price was last set.",
    ("set_price", "replaced"): "`true` when a price for (provider, model) existed.",
    # queue management, listings and schedules (docs/management.md)
    ("move_job", "state"): "The job's state, unchanged by the move.",
    ("set_priority", "state"): "The job's state.",
    ("set_priority", "priority"): "The new priority.",
    ("clear_queue", "deleted"): "Jobs deleted by this call.",
    ("clear_queue", "remaining"): "Jobs of those states still in the queue; > 0: call again.",
    ("drain_queue", "deleted"): "Jobs deleted by this call.",
    ("drain_queue", "remaining"): "Pending and scheduled jobs still in the queue; > 0: call again.",
    ("delete_queue", "deleted"): "Jobs deleted by this call.",
    ("delete_queue", "remaining"): "Jobs still in the queue; 0 means the queue itself is gone too.",
    ("list_workers", "workers"): "List of `{worker_id, hostname, last_seen_at, active, jobs}` by worker id: "
                                 "`active` counts the jobs the worker holds now, `jobs` lists up to 100 of their ids.",
    ("list_workers", "cursor"): "Pass as `after` for the next page; nil on the last page.",
    ("list_dead", "jobs"): "List of `{job_id, queue, priority, attempt, max_retries, last_error, failed_at, "
                           "dead_at, created_at, tags}` by job id (oldest first).",
    ("list_dead", "cursor"): "Pass as `after` for the next page; nil on the last page.",
    ("create_schedule", "name"): "The `ok` map *is* the schedule record (as `list_schedules` shows it) plus "
                                 "`replaced`. `name`, `queue`, `cron`, `timezone`, `payload`: as given.",
    ("create_schedule", "created_at"): "When the schedule was first created (state-clock ms).",
    ("create_schedule", "updated_at"): "When it was last replaced or fired.",
    ("create_schedule", "options"): "The enqueue options each job gets (defaults filled in).",
    ("create_schedule", "next_fire_at"): "Next fire time (ms since epoch), or nil if it never fires again.",
    ("create_schedule", "last_fire_at"): "Last fire time, or nil.",
    ("create_schedule", "last_job_id"): "Id of the job the last fire made, or nil.",
    ("create_schedule", "fires"): "Jobs made so far.",
    ("create_schedule", "skipped"): "Fires that made no job because the schedule's `unique_key` was taken.",
    ("create_schedule", "replaced"): "`true` when a schedule of this name existed and was replaced.",
    ("list_schedules", "schedules"): "Schedule records (as `create_schedule` answers, without `replaced`), by name.",
}

#: Extra `ok` fields the code sends that OPS does not list.
OK_EXTRA = {
    "cluster_status": (
        ("raft_bind", "This node's raft address."),
        ("peers", "The other voters: list of `{address, connected, match_index, next_index, last_contact_ms}` "
                  "(indexes and the time since the peer last answered are known on the leader only; nil "
                  "elsewhere)."),
        ("snapshot", "The last snapshot: `{index, at, bytes, seconds}`, or nil before the first one."),
        ("journal_entries", "Raft journal entries kept since the last snapshot."),
        ("pipeline", "Write pipeline health: `queue_wait_ms` (per op, in admission), `apply_ms` (per raft entry), "
                     "`entry_commit_ms` (admission to applied), `entry_ops` (ops per entry), each "
                     "`{count, p50, p90, p99, max}` over recent samples; and `admission` (in-flight counts, "
                     "limits, refusals)."),
        ("gateway", "`{pending, parked_fetches, requests, invalid, oversize, timeouts, answers}` counters of this "
                    "gateway (`oversize`: request frames over 8 MiB, refused; `invalid` counts them too; `answers`: "
                    "`[op, code, count]` rows, code `OK` or the error code, an op name outside the registry "
                    "counted as `unknown`)."),
        ("mirror", "Once the mirror has reported: `{applied_index, lag, dropped_updates, rebuilds, ...}` (its "
                   "raft index, how far it is behind this node's applied index, change frames it lost and "
                   "repaired from LMDB, rebuilds so far); see search.md."),
        ("disk", "`{free_bytes, min_free_bytes, low}` of the data dir's filesystem, from the raft actor: while "
                 "`low`, writes are refused with `disk_full`."),
        ("warning", "Present only when the raft actor has not reported for 2 s, or while the disk is low."),
    ),
}

#: Registry texts that say less (or other) than the code does. Each fix applies only
#: while the registry still has the old text, so a fix made in ops.py wins at once.
DOC_FIXES = {}

#: Limits that ops.py checks in code (its _EXTRA_CHECKS) rather than in the Arg rows.
EXTRA_BOUNDS = {
    ("enqueue_batch", "jobs"): f"1 … {opsdef.Limits().batch_jobs_max} items; payloads ≤ "
                               f"{opsdef.Limits().batch_bytes_max} bytes in all",
    ("heartbeat", "jobs"): "≤ 1000 entries; keys are job ids; each entry's checkpoint and progress within "
                           "their caps, the whole request within the write cap",
    ("enqueue", "payload"): "encoded size ≤ the payload cap",
    ("ack_batch", "acks"): "1 … 1000 items with fails; each item checked as an ack (`acks[i].field`)",
    ("ack_batch", "fails"): "each item checked as a fail (`fails[i].field`)",
    ("ack", "result"): "encoded size ≤ the result cap (the payload cap)",
    ("ack", "checkpoint"): "encoded size ≤ the checkpoint cap",
    ("ack", "trace"): "encoded size ≤ the trace cap",
    ("ack", "hold_payload"): "encoded size ≤ the hold_payload cap",
    ("fail", "checkpoint"): "encoded size ≤ the checkpoint cap",
    ("enqueue", "run_at"): "within 10 years of the gateway's clock",
    ("create_schedule", "cron"): "must parse and fire within 9 years",
    ("create_schedule", "timezone"): "an IANA zone name known to the node",
    ("create_schedule", "payload"): "encoded size ≤ the payload cap",
    ("delete_queue", "confirm"): "must be `true`",
}


def fixed_doc(op_name: str, path: str, doc: str) -> str:
    fix = DOC_FIXES.get((op_name, path))
    return fix[1] if fix and fix[0] == doc else doc


KIND_NAMES = {
    "str": "str", "int": "int", "float": "float (int accepted)", "bool": "bool", "any": "any",
    "queue": "str (queue name)", "queues": "list of str (queue names)", "id": "str (id)",
    "str_map": "map str → str", "map": "map", "list": "list", "struct": "map",
    "raft_address": "str (host:port)",
}

PATH_NAMES = {
    "write": "write: committed through raft",
    "read": "read: answered from this node's LMDB",
    "local": "local: answered by the gateway",
    "control": "control: passed to the raft actor, which changes pysyncobj's membership",
    "usage": "usage: answered by the usage actor from its rollups",
    "internal": "internal: proposed by jobbie itself; clients get `INVALID_ARGUMENT`/`unknown_op`",
}


# ------------------------------------------------------------------ formatting

def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def human_ms(n) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return ""


def number(n, arg_name: str = "") -> str:
    if n == opsdef.INT64_MAX:
        return "2^63−1"
    if isinstance(n, float) and n.is_integer():
        n = int(n)
        if n >= 1_000_000 and n % 1_000_000 == 0:
            return f"{n // 1_000_000}e6" if n < 1_000_000_000 else f"{n // 1_000_000_000}e9"
    text = str(n)
    if arg_name.endswith("_ms") or arg_name == "iteration_timeout":
        hint = human_ms(n) if isinstance(n, int) else ""
        if hint and hint != f"{n} ms":
            text += f" ({hint})"
    return text


def default_text(arg) -> str:
    if arg.default is None:
        return ""
    if isinstance(arg.default, bool):
        return "`true`" if arg.default else "`false`"
    if isinstance(arg.default, str):
        return f'`"{arg.default}"`'
    text = number(arg.default, arg.name)
    if " (" in text:
        value, hint = text.split(" (", 1)
        return f"`{value}` ({hint}"
    return f"`{text}`"


def bounds_text(arg) -> str:
    parts = []
    if arg.kind == "queue":
        parts.append("1-128 chars: ASCII letters, digits, `.` `_` `:` `-`; first a letter or digit")
    elif arg.kind == "queues":
        parts.append("1-64 queue names (repeats dropped)")
    elif arg.kind == "id":
        parts.append("1-128 printable ASCII chars, no spaces")
    elif arg.kind == "str_map":
        parts.append("≤ 32 entries; keys 1-64 chars, values ≤ 256 chars")
    elif arg.kind == "any":
        parts.append(f"nesting ≤ {opsdef.DEPTH_MAX}")
    if arg.low is not None or arg.high is not None:
        parts.append(f"{number(arg.low, arg.name)} … {number(arg.high, arg.name)}")
    if arg.length_max is not None:
        parts.append(f"≤ {arg.length_max} chars")
    if arg.choices:
        parts.append(", ".join(f"`{c}`" for c in arg.choices))
    return "; ".join(parts)


def arg_rows(args, prefix: str = "", op_name: str = "") -> list[str]:
    rows = []
    for arg in args:
        name = prefix + arg.name
        doc = fixed_doc(op_name, name, arg.doc)
        if op_name == "enqueue_batch" and name == "jobs":
            doc += " Each item takes the `enqueue` args except `request_id`."
        bounds = "; ".join(b for b in (bounds_text(arg), EXTRA_BOUNDS.get((op_name, name), "")) if b)
        rows.append(f"| `{name}` | {KIND_NAMES.get(arg.kind, arg.kind)} | {'yes' if arg.required else ''} | "
                    f"{default_text(arg)} | {cell(bounds)} | {cell(doc)} |")
        if arg.kind == "struct":
            rows.extend(arg_rows(arg.fields, prefix=name + ".", op_name=op_name))
        if op_name == "heartbeat" and name == "jobs":
            entry = getattr(opsdef, "_HEARTBEAT_JOB", None)
            if entry:
                rows.extend(arg_rows(entry, prefix="jobs.<job_id>.", op_name=op_name))
    return rows


def ok_field_doc(op_name: str, field: str) -> str:
    """The description of one `ok` field: keyed by (op, field), else by the field alone."""
    return OK_FIELD_DOCS.get((op_name, field)) or OK_FIELD_DOCS.get(field, "")


def op_section(op) -> str:
    doc = fixed_doc(op.name, "", op.doc)
    out = [f"### `{op.name}`", "", f"{doc} *({PATH_NAMES.get(op.path, op.path)})*", ""]
    if op.args:
        out += ["| arg | type | required | default | bounds / choices | meaning |",
                "|---|---|---|---|---|---|"]
        out += arg_rows(op.args, op_name=op.name)
    else:
        out.append("No args (send `{}` or leave `args` out).")
    out.append("")
    ok_rows = [(f, ok_field_doc(op.name, f)) for f in op.ok] + list(OK_EXTRA.get(op.name, ()))
    if ok_rows:
        out += ["| `ok` field | meaning |", "|---|---|"]
        out += [f"| `{f}` | {cell(doc)} |" for f, doc in ok_rows]
    else:
        out.append("`ok` is an empty map `{}`.")
    if op.errors:
        out += ["", "Errors named by the registry: " + ", ".join(f"`{e}`" for e in op.errors) + "."]
    return "\n".join(out)


def op_summary() -> str:
    out = ["| op | path | what it does | `request_id` |", "|---|---|---|---|"]
    for op in opsdef.OPS.values():
        rid = "yes" if "request_id" in op.arg_names else ""
        out.append(f"| [`{op.name}`](#{op.name}) | {op.path} | {cell(fixed_doc(op.name, '', op.doc))} | {rid} |")
    return "\n".join(out)


def human_bytes(n: int) -> str:
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= size:
            return f"{n} bytes ({n / size:g} {unit})"
    return f"{n} bytes"


def limits() -> str:
    lim = opsdef.Limits()
    rows = [
        ("Request frame", f"{FRAME_BYTES_MAX} bytes (8 MiB)",
         f"larger frames up to {FRAME_CUT_BYTES} bytes (16 MiB) are answered `INVALID_ARGUMENT` / `too_large` and "
         "counted; larger still are cut by ZeroMQ (`MAXMSGSIZE`): connection reset, no reply"),
        ("Encoded `payload` of one job", f"{lim.payload_bytes_max} bytes (1 MiB) by default; also the hard cap",
         "`jobbie server --payload-max-bytes N` (1 … 1048576)"),
        ("Encoded `result` of an `ack`", f"{lim.result_bytes_max} bytes (1 MiB): the payload cap",
         "follows `--payload-max-bytes`"),
        ("Encoded `checkpoint` (`ack`, `fail`, each `heartbeat` entry)", human_bytes(lim.checkpoint_bytes_max), "fixed"),
        ("Encoded `progress` of a `heartbeat` entry", human_bytes(lim.progress_bytes_max), "fixed"),
        ("Encoded `trace` of an `ack`", human_bytes(lim.trace_bytes_max), "fixed"),
        ("Encoded `hold_payload` of an `ack`", human_bytes(lim.hold_payload_bytes_max), "fixed"),
        ("Request frame of one write (any write op: the op and every value in it)", human_bytes(lim.op_bytes_max),
         "fixed. A write is one raft op; larger ones are refused `INVALID_ARGUMENT` / `too_large` naming the "
         "largest field (a `heartbeat` carrying many checkpoints: `jobs`; the worker library splits its "
         "heartbeats below this)"),
        ("Jobs in one `enqueue_batch`", str(lim.batch_jobs_max), "fixed"),
        ("Encoded payload bytes of one `enqueue_batch`", human_bytes(lim.batch_bytes_max),
         "fixed; a batch is one raft op"),
        ("Entries in one `heartbeat`", "1000", "fixed"),
        ("Nesting of free values (`payload`, `result`, `checkpoint`, `progress`, ...)",
         f"{opsdef.DEPTH_MAX} levels", "fixed"),
        ("How long a `request_id` is remembered", f"{DEDUPE_TTL_MS} ms ({human_ms(DEDUPE_TTL_MS)})",
         "replicated rule, same on every node"),
        ("Error records kept per job", str(ERRORS_KEPT), "older attempts' records are dropped"),
    ]
    out = ["| limit | value | set by / notes |", "|---|---|---|"]
    out += [f"| {cell(a)} | {cell(b)} | {cell(c)} |" for a, b, c in rows]
    return "\n".join(out)


def reasons_table() -> str:
    out = ["| reason | code | when |", "|---|---|---|"]
    out += [f"| `{reason}` | {code} | {cell(when)} |" for reason, (code, when) in REASONS.items()]
    return "\n".join(out)


# ------------------------------------------------------------------ states

def state_name(s) -> str:
    return "(new job)" if s is None else f"`{s}`"


def states_table() -> str:
    out = ["| state | terminal | moves to |", "|---|---|---|"]
    for s in st.STATES:
        targets = [dst for (src, dst) in st.TRANSITIONS if src == s]
        out.append(f"| `{s}` | {'yes' if s in st.TERMINAL else ''} | "
                   f"{', '.join(f'`{t}`' for t in targets) or '—'} |")
    return "\n".join(out)


def transitions_table() -> str:
    out = ["| from | to | events |", "|---|---|---|"]
    for (src, dst), events in st.TRANSITIONS.items():
        out.append(f"| {state_name(src)} | `{dst}` | {cell('; '.join(events))} |")
    return "\n".join(out)


def diagram() -> str:
    out = ["```mermaid", "stateDiagram-v2"]
    for (src, dst), events in st.TRANSITIONS.items():
        # Keep mermaid labels free of `:` and `;`, which its parser treats specially.
        label = " · ".join(events).replace(":", " -").replace(";", ",")
        out.append(f"    {'[*]' if src is None else src} --> {dst} : {label}")
    out.append("```")
    return "\n".join(out)


# ------------------------------------------------------------------ rewriting

def protocol_sections() -> dict:
    sections = {"op-summary": op_summary(), "limits": limits(), "reasons": reasons_table()}
    for name, op in opsdef.OPS.items():
        sections[f"op:{name}"] = op_section(op)
    return sections


def states_sections() -> dict:
    return {"states": states_table(), "transitions": transitions_table(), "diagram": diagram()}


def rewrite(text: str, sections: dict, path: str, problems: list) -> str:
    """Replace every marked section's body; note unknown, unclosed and missing sections."""
    lines = text.split("\n")
    out, seen, i = [], [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        m = BEGIN.match(line.strip())
        i += 1
        if not m:
            continue
        name = m.group(1)
        end = END.format(name)
        j = i
        while j < len(lines) and lines[j].strip() != end:
            j += 1
        if j == len(lines):
            problems.append(f"{path}: section {name} has no closing line {end}")
            continue
        seen.append(name)
        if name in sections:
            out.extend(sections[name].split("\n"))
        else:
            problems.append(f"{path}: section {name} is not known to the generator (remove it?)")
            out.extend(lines[i:j])
        out.append(lines[j])
        i = j + 1
    missing = [name for name in sections if name not in seen]
    if missing:
        # New ops get their section appended after the last op section (or at the end).
        problems.append(f"{path}: sections missing from the file: {', '.join(missing)}")
        block = []
        for name in missing:
            block += ["", f"<!-- generated:{name} -->", *sections[name].split("\n"), END.format(name)]
        last = max((k for k, l in enumerate(out) if l.startswith("<!-- /generated:op:")), default=len(out) - 1)
        out[last + 1:last + 1] = block
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated section is stale")
    args = parser.parse_args(argv)
    stale, all_problems = [], []
    for path, sections in ((PROTOCOL, protocol_sections()), (STATES, states_sections())):
        with open(path, encoding="utf-8") as f:
            old = f.read()
        problems: list = []
        new = rewrite(old, sections, os.path.relpath(path), problems)
        for p in problems:
            print(p, file=sys.stderr)
        all_problems += problems
        if new != old or any("not known" in p or "no closing" in p for p in problems):
            stale.append(os.path.relpath(path))
            if not args.check and new != old:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    broken = any("not known" in p or "no closing" in p for p in all_problems)
    if args.check:
        if stale:
            print("stale generated sections in: " + ", ".join(stale) + " (run python docs/generate.py)",
                  file=sys.stderr)
            return 1
        return 0
    for path in stale:
        print(f"rewrote {path}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
