"""Search, bulk and mirror ops (their rows join OPS in transport/ops.py).

Their path is ``mirror``: the gateway hands them to the mirror actor, which
answers from its SQLite view (search_jobs, bulk_status), drives the write
pipeline (bulk) or rebuilds the view from LMDB (rebuild_mirror).

What the Arg rows cannot say is checked here, before anything leaves the
gateway: state names, the job id list of `bulk`, one of `job_ids`/`filter`,
the arguments an action needs. `payload_jq` and `cursor` are checked by the
mirror (the jq parser lives with the SQL it produces); their errors name the
field the same way.
"""
from __future__ import annotations

from .ops import _EXTRA_CHECKS, INT64_MAX, PRINTABLE_ID, PRIORITIES, Arg, _bad, _op, _type_name

#: Job states, as storage/states.py names them (transport must not import storage; a unit
#: test keeps the two lists equal).
STATE_NAMES = ("scheduled", "pending", "active", "completed", "retrying", "dead", "cancelled", "held")
#: Sort keys of search_jobs.
SORTS = ("created_at", "scheduled_at", "started_at", "completed_at", "expire_at", "updated_at", "priority",
         "attempt")
BULK_ACTIONS = ("retry", "delete", "cancel", "move", "requeue", "change_priority", "approve", "reject")
#: Ids one bulk request may name (a filter has no such limit of its own; see the mirror).
BULK_IDS_MAX = 100_000
SEARCH_LIMIT_MAX = 1000

_TIME = dict(kind="int", low=0, high=INT64_MAX)


def _time_pair(name: str, what: str):
    return (Arg(f"{name}_after", doc=f"Only jobs whose {what} is at or after this time (ms since epoch).", **_TIME),
            Arg(f"{name}_before", doc=f"Only jobs whose {what} is before this time (ms since epoch).", **_TIME))


#: The filters of search_jobs; `bulk`'s `filter` takes the same fields.
FILTER_ARGS = (
    Arg("queue", "queue", "Only jobs of this queue."),
    Arg("state", "list", "Only jobs in one of these states (1-8 state names)."),
    Arg("priority", "str", "Only jobs of this priority.", choices=PRIORITIES),
    Arg("tags", "str_map", "Only jobs carrying every one of these tags (key and value equal)."),
    Arg("payload_contains", "str", "Only jobs whose payload, as compact JSON text, contains this string "
        "(case-sensitive; msgpack bin values appear base64-encoded).", length_max=1024),
    Arg("payload_jq", "str", "Only jobs for which this jq-subset expression over the payload is truthy: field "
        "paths, == != < <= > >=, and/or/not, contains, startswith, endswith, length, literals "
        "(docs/search.md).", length_max=4096),
    *_time_pair("created", "creation time"),
    *_time_pair("scheduled", "`run_at` (when it may run)"),
    *_time_pair("started", "last start (lease) time"),
    *_time_pair("completed", "completion time"),
    *_time_pair("expire", "TTL deadline (`expire_at`)"),
    Arg("worker_id", "id", "Only jobs last leased by this worker."),
    Arg("has_errors", "bool", "true: only jobs with a recorded error; false: only jobs without one."),
    Arg("error_contains", "str", "Only jobs with an error message containing this text (ASCII case-insensitive).",
        length_max=1024),
    Arg("batch_id", "id", "Only members of this batch."),
    Arg("unique_key", "str", "Only jobs with this unique key.", length_max=256),
    Arg("attempt_min", "int", "Only jobs with at least this many attempts.", low=0, high=10_000),
    Arg("attempt_max", "int", "Only jobs with at most this many attempts.", low=0, high=10_000),
    Arg("job_id_prefix", "id", "Only jobs whose id starts with this (case-sensitive)."),
)

_op("search_jobs", "mirror", "Find jobs by any combination of filters, from the mirror's SQLite view "
    "(it lags LMDB by up to ~0.1 s, but writes this node has acknowledged are waited for, up to 0.25 s; "
    "see docs/search.md). Pages with a stable cursor.", FILTER_ARGS + (
        Arg("sort", "str", "Sort key.", default="created_at", choices=SORTS),
        Arg("order", "str", "Sort order.", default="desc", choices=("desc", "asc")),
        Arg("cursor", "str", "Opaque: the `cursor` of the previous page of the same search.", length_max=1024),
        Arg("limit", "int", "Jobs per page.", default=50, low=1, high=SEARCH_LIMIT_MAX),
    ), ok=("jobs", "total", "cursor", "has_more", "duration_ms"),
    errors=("INVALID_ARGUMENT/query_syntax", "INVALID_ARGUMENT/query_too_slow", "UNAVAILABLE/mirror_rebuilding"))

_op("bulk", "mirror", "Apply one action to many jobs: the listed `job_ids`, or every job matching `filter`. "
    "Up to 1000 jobs answer when done; larger runs answer at once with `bulk_id` (see bulk_status).", (
        Arg("job_ids", "list", f"Job ids, 1-{BULK_IDS_MAX}. Give this or `filter`."),
        Arg("filter", "struct", "search_jobs filters (at least one); every matching job. Give this or `job_ids`.",
            fields=FILTER_ARGS),
        Arg("action", "str", "retry (retry_job), delete (delete_job), cancel (cancel_job), move (move_job to "
            "`move_to_queue`), requeue (retry_job of dead, cancelled and completed jobs only), change_priority "
            "(set_priority to `priority`), approve / reject (approve_job / reject_job of held jobs; with a "
            "filter, jobs in other states are skipped).", required=True, choices=BULK_ACTIONS),
        Arg("move_to_queue", "queue", "Target queue of `move`."),
        Arg("priority", "str", "New priority of `change_priority`.", choices=PRIORITIES),
        Arg("note", "str", "approve / reject: kept in the audit trail.", length_max=4096),
        Arg("actor", "str", "approve / reject: who decides, for the audit trail (default: the request's "
            "`client` key).", length_max=128),
    ), ok=("affected", "errors", "error_count", "duration_ms", "bulk_id", "status", "total", "skipped"))

_op("bulk_status", "mirror", "Progress of a bulk run (kept in the mirror's memory: the last 64 runs, until the "
    "mirror process restarts).", (
        Arg("bulk_id", "id", "The `bulk_id` bulk answered.", required=True),
    ), ok=("bulk_id", "status", "action", "total", "done", "affected", "skipped", "errors", "error_count",
           "duration_ms"), errors=("NOT_FOUND",))

_op("rebuild_mirror", "mirror", "Build a fresh SQLite mirror from LMDB in a side file and swap it in; searches "
    "keep being answered from the old file meanwhile. Answers once the new file is in place.", (),
    ok=("jobs", "applied_index", "duration_ms"))


# --------------------------------------------------------------------------- checks

def check_filter(args: dict, prefix: str = ""):
    """State names and attempt bounds of a validated filter map (search_jobs args or bulk.filter)."""
    states = args.get("state")
    if states is not None:
        if not 1 <= len(states) <= len(STATE_NAMES):
            _bad(f"{prefix}state must name 1 to {len(STATE_NAMES)} states", prefix + "state", "out_of_range")
        for i, s in enumerate(states):
            if type(s) is not str:
                _bad(f"{prefix}state[{i}] must be a string, got {_type_name(s)}", f"{prefix}state[{i}]", "wrong_type")
            if s not in STATE_NAMES:
                _bad(f"{prefix}state[{i}] must be one of {', '.join(STATE_NAMES)}; got {s[:64]!r}",
                     f"{prefix}state[{i}]", "invalid_choice")
        args["state"] = list(dict.fromkeys(states))
    low, high = args.get("attempt_min"), args.get("attempt_max")
    if low is not None and high is not None and low > high:
        _bad(f"{prefix}attempt_min is above {prefix}attempt_max", prefix + "attempt_max", "out_of_range")


def check_job_ids(ids: list, most: int) -> list:
    """A `job_ids` list: 1 to `most` job ids, each a printable id; duplicates dropped, order kept."""
    if not 1 <= len(ids) <= most:
        _bad(f"job_ids must hold 1 to {most} ids; got {len(ids)}", "job_ids", "too_large")
    for i, job_id in enumerate(ids):
        if type(job_id) is not str:
            _bad(f"job_ids[{i}] must be a string, got {_type_name(job_id)}", f"job_ids[{i}]", "wrong_type")
        if not PRINTABLE_ID.match(job_id):
            _bad(f"job_ids[{i}] must be 1-128 printable ASCII characters without spaces", f"job_ids[{i}]",
                 "invalid_name")
    return list(dict.fromkeys(ids))


def _check_search(args, limits, frame_bytes, now_ms):
    check_filter(args)


def _check_bulk(args, limits, frame_bytes, now_ms):
    ids, flt = args.get("job_ids"), args.get("filter")
    if ids is not None and flt is not None:
        _bad("give job_ids or filter, not both", "filter", "conflicting_fields")
    if ids is None and flt is None:
        _bad("bulk needs job_ids or filter", "job_ids", "missing_field")
    if ids is not None:
        args["job_ids"] = check_job_ids(ids, BULK_IDS_MAX)
    if flt is not None:
        if not flt:
            _bad("filter needs at least one criterion (a bulk action on every job is not offered)", "filter",
                 "empty_filter")
        check_filter(flt, "filter.")
    action = args["action"]
    if action == "move" and args.get("move_to_queue") is None:
        _bad("action move needs move_to_queue", "move_to_queue", "missing_field")
    if action == "change_priority" and args.get("priority") is None:
        _bad("action change_priority needs priority", "priority", "missing_field")
    for name in ("note", "actor"):
        if name in args and action not in ("approve", "reject"):
            _bad(f"{name} goes with action approve or reject", name, "conflicting_fields")


_EXTRA_CHECKS["search_jobs"] = _check_search
_EXTRA_CHECKS["bulk"] = _check_bulk
