"""Queue management, worker, dead-letter and cron schedule ops (their rows join OPS in transport/ops.py).

Writes go through raft like every other write (storage/management.py,
storage/schedules.py); the listings are point reads of LMDB
(storage/reads.py). What the Arg rows cannot say is checked here, before
anything leaves the gateway: `delete_queue` needs `confirm: true`, and a
schedule's cron expression and time zone must parse and fire at least once.
"""
from __future__ import annotations

from .errors import InvalidArgument
from .ops import (_EXTRA_CHECKS, DAY_MS, ENQUEUE_ARGS, JOB_ID, PRIORITIES, REQUEST_ID, Arg, Limits, _bad,
                  _check_enqueue, _op)

#: Jobs one clear_queue / drain_queue / delete_queue call deletes at most, and by default: 2,000
#: deletions apply in about 50 ms, 10,000 in 0.2-0.4 s (other ops of the node wait meanwhile).
QUEUE_OP_JOBS_MAX = 10_000
QUEUE_OP_JOBS_DEFAULT = 2_000

QUEUE = Arg("queue", "queue", "The queue.", required=True)
JOBS_PER_CALL = Arg("limit", "int", "Delete at most this many jobs in this call (one raft entry); when the "
                    "answer has `remaining` > 0, call again.", default=QUEUE_OP_JOBS_DEFAULT, low=1,
                    high=QUEUE_OP_JOBS_MAX)
SCHEDULE_NAME = Arg("name", "id", "The schedule's name (unique; creating an existing name replaces it).",
                    required=True)
#: Enqueue options a schedule passes on to every job it makes (no run_at / delay_ms: the cron says when).
SCHEDULE_JOB_ARGS = tuple(a for a in ENQUEUE_ARGS if a.name not in ("queue", "payload", "run_at", "delay_ms"))

_op("move_job", "write", "Move a job that is not active to another queue, keeping its state; a pending job "
    "goes to the back of its priority tier there, and its unique key goes with it.", (
        JOB_ID, Arg("queue", "queue", "The queue to move the job to.", required=True), REQUEST_ID,
    ), ok=("state",), errors=("NOT_FOUND", "FAILED_PRECONDITION/job_active", "FAILED_PRECONDITION/unique_conflict"))
_op("set_priority", "write", "Change a job's priority; a pending job goes to the back of its new tier, "
    "any other job keeps the priority for its next run.", (
        JOB_ID, Arg("priority", "str", "The new tier.", required=True, choices=PRIORITIES), REQUEST_ID,
    ), ok=("state", "priority"), errors=("NOT_FOUND",))
_op("clear_queue", "write", "Delete the queue's pending, scheduled, retrying and held jobs (active and "
    "finished jobs stay).", (QUEUE, JOBS_PER_CALL, REQUEST_ID), ok=("deleted", "remaining"))
_op("drain_queue", "write", "Delete the queue's pending and scheduled jobs, as BullMQ's `drain` (with "
    "delayed jobs) does; retrying, held, active and finished jobs stay, and the queue keeps taking jobs.",
    (QUEUE, JOBS_PER_CALL, REQUEST_ID), ok=("deleted", "remaining"))
_op("delete_queue", "write", "Delete every job of the queue and then the queue itself (its pause flag and "
    "limits). Refused while jobs of the queue are active.", (
        QUEUE, Arg("confirm", "bool", "Must be true: this cannot be undone.", required=True),
        JOBS_PER_CALL, REQUEST_ID,
    ), ok=("deleted", "remaining"),
    errors=("INVALID_ARGUMENT/confirm_required", "NOT_FOUND", "FAILED_PRECONDITION/jobs_active"))
_op("set_concurrency", "write", "Let fetch make at most `max` jobs of the queue active at once "
    "(1: a singleton queue); nil or absent: unlimited.", (
        QUEUE, Arg("max", "int", "Active jobs at most; nil = unlimited.", low=1, high=1_000_000), REQUEST_ID,
    ), ok=())
_op("set_throttle", "write", "Let fetch hand out at most `rate` jobs of the queue per `period_ms` window "
    "(fixed windows of the state clock: floor(now / period_ms)); a throttled fetch returns fewer jobs.", (
        QUEUE, Arg("rate", "int", "Jobs per window.", required=True, low=1, high=1_000_000),
        Arg("period_ms", "int", "Window length.", required=True, low=1, high=DAY_MS), REQUEST_ID,
    ), ok=())
_op("remove_throttle", "write", "Remove the queue's throttle.", (QUEUE, REQUEST_ID), ok=())
_op("list_workers", "read", "Workers seen by fetch or heartbeat, by worker id, with the jobs each holds now.", (
    Arg("limit", "int", "Workers at most.", default=1000, low=1, high=10_000),
    Arg("after", "id", "Cursor: list workers after this worker id (the previous page's `cursor`)."),
), ok=("workers", "cursor"))
_op("list_dead", "read", "Dead jobs (the dead-letter list) with their last error, by job id.", (
    Arg("queue", "queue", "Only this queue's dead jobs."),
    Arg("limit", "int", "Jobs at most.", default=50, low=1, high=1000),
    Arg("after", "id", "Cursor: list jobs after this job id (the previous page's `cursor`)."),
), ok=("jobs", "cursor"))
_op("create_schedule", "write", "Create (or replace) a cron schedule that enqueues a job on `queue` at every "
    "fire time (docs/management.md).", (
        SCHEDULE_NAME,
        Arg("queue", "queue", "Queue of the jobs it makes.", required=True),
        Arg("cron", "str", "Cron expression: minute hour day-of-month month day-of-week (`*`, lists, ranges, "
            "steps, JAN-DEC, SUN-SAT, @daily ...); a leading sixth field is seconds (jobbie extension).",
            required=True, length_max=256),
        Arg("timezone", "str", "IANA time zone the expression is read in.", default="UTC", length_max=64),
        Arg("payload", "any", "Payload of every job it makes (default nil)."),
        *SCHEDULE_JOB_ARGS,
        REQUEST_ID,
    ), ok=("name", "queue", "cron", "timezone", "payload", "options", "next_fire_at", "last_fire_at",
           "last_job_id", "fires", "skipped", "created_at", "updated_at", "replaced"))
_op("list_schedules", "read", "Every cron schedule, by name.", (), ok=("schedules",))
_op("digest", "read", "A hash of this node's whole store at its applied index: replicas at the same "
    "`applied_index` must answer the same `digest` (`jobbie admin digest`). Reads every record, so it takes "
    "about a second per million jobs.", (), ok=("applied_index", "digest", "dbs"))
_op("delete_schedule", "write", "Delete a cron schedule (jobs it already made stay).", (
    Arg("name", "id", "The schedule's name.", required=True), REQUEST_ID,
), ok=(), errors=("NOT_FOUND",))


def _check_delete_queue(args, limits, frame_bytes, now_ms):
    if args.get("confirm") is not True:
        _bad("delete_queue deletes every job of the queue and cannot be undone; send confirm: true",
             "confirm", "confirm_required")


def _check_create_schedule(args, limits: Limits, frame_bytes, now_ms):
    _check_enqueue(dict(args, payload=args.get("payload")), limits, frame_bytes, now_ms)
    # The one import of storage from transport: the gateway checks an expression with the very
    # parser the state machine runs (pure, stdlib only), so the two cannot disagree.
    from jobbie.storage import cron

    try:
        cron.parse(args["cron"])
    except cron.CronError as exc:
        raise InvalidArgument(f"cron: {exc}", field="cron", reason="invalid_cron") from None
    try:
        cron.zone(args["timezone"])
    except cron.CronError as exc:
        raise InvalidArgument(str(exc), field="timezone", reason="invalid_timezone") from None
    if cron.next_fire(args["cron"], args["timezone"], now_ms) is None:
        _bad(f"cron {args['cron']!r} never fires (no matching day within {cron.SEARCH_DAYS // 366} years)",
             "cron", "invalid_cron")


_EXTRA_CHECKS["delete_queue"] = _check_delete_queue
_EXTRA_CHECKS["create_schedule"] = _check_create_schedule
