"""The protocol's ops, declared once.

Each `Op` row names its arguments (type, default, bounds), the fields of its
`ok` answer and its path through a node:

- ``write``: validated at the gateway, stamped with ids and time, committed
  through admission and raft, applied by the state machine;
- ``read``: answered by the gateway from its read-only LMDB view;
- ``local``: answered by the gateway from what it knows (cluster status);
- ``control``: passed through admission to the raft actor, which acts on
  pysyncobj directly (membership changes);
- ``mirror`` / ``usage``: handed by the gateway to the mirror (search, bulk) or
  the usage actor (usage summaries), which answer from their own views;
- ``internal``: proposed by jobbie's own actors, refused from clients.

The gateway's validator, docs/protocol.md's tables and the bad-input tests all
read these rows, so they cannot drift apart.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from msgpack import Timestamp

from .errors import InvalidArgument

INT64_MAX = 2**63 - 1
DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS

PRIORITIES = ("critical", "high", "normal", "low")
BACKOFF_STRATEGIES = ("none", "fixed", "linear", "exponential")
QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
PRINTABLE_ID = re.compile(r"[\x21-\x7e]{1,128}\Z")
RAFT_ADDRESS = re.compile(r"[A-Za-z0-9.\-]{1,253}:[0-9]{1,5}\Z")
#: Nesting allowed inside payload, result, checkpoint and other free values.
DEPTH_MAX = 64


KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Node-local input limits, applied at the gateway before anything is proposed.

    Every free value a write may carry has a cap, and so has the whole write
    (`op_bytes_max`): a write becomes one op of a raft entry, and pysyncobj
    pickles, compresses and sends each entry to every follower on its one tick
    thread, so an entry of several MiB stalls heartbeats past the election
    timeout. The admission cuts entries at about the same size.
    """

    #: Largest encoded payload of one job (protocol default 1 MiB; also its hard cap).
    payload_bytes_max: int = MIB
    #: Largest encoded `result` of an ack (<= op_bytes_max).
    result_bytes_max: int = MIB
    #: Largest encoded `checkpoint` (ack, fail, or one heartbeat entry).
    checkpoint_bytes_max: int = 256 * KIB
    #: Largest encoded `progress` of one heartbeat entry.
    progress_bytes_max: int = 64 * KIB
    #: Largest encoded `trace` of an ack.
    trace_bytes_max: int = 256 * KIB
    #: Largest encoded `hold_payload` of an ack.
    hold_payload_bytes_max: int = 256 * KIB
    #: Largest request frame of one write (its op and every value in it): payload_bytes_max
    #: plus 64 KiB for the rest. A heartbeat whose checkpoints add up to more is refused whole
    #: (`jobs`, too_large); the worker library splits its heartbeats below this.
    op_bytes_max: int = MIB + 64 * KIB
    #: Jobs in one enqueue_batch.
    batch_jobs_max: int = 1000
    #: Encoded payload bytes of one enqueue_batch (<= op_bytes_max: a batch is one raft op).
    batch_bytes_max: int = MIB


#: Free values with a byte cap: (op, field) -> the Limits attribute. Heartbeat entries are
#: checked per job (`jobs.ID.checkpoint`, `jobs.ID.progress`).
VALUE_CAPS = {
    ("enqueue", "payload"): "payload_bytes_max",
    ("ack", "result"): "result_bytes_max",
    ("ack", "checkpoint"): "checkpoint_bytes_max",
    ("ack", "trace"): "trace_bytes_max",
    ("ack", "hold_payload"): "hold_payload_bytes_max",
    ("fail", "checkpoint"): "checkpoint_bytes_max",
    ("heartbeat", "checkpoint"): "checkpoint_bytes_max",
    ("heartbeat", "progress"): "progress_bytes_max",
}


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str  # str | int | float | bool | any | queue | queues | id | raft_address | str_map | map | list | struct
    doc: str = ""
    required: bool = False
    default: object = None
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    length_max: int | None = None
    fields: tuple = ()  # for kind == "struct": nested Arg rows


@dataclass(frozen=True)
class Op:
    name: str
    path: str  # write | read | local | internal
    doc: str
    args: tuple = ()
    ok: tuple = ()
    errors: tuple = ()

    @property
    def arg_names(self):
        return {a.name for a in self.args}


REQUEST_ID = Arg("request_id", "id", "Idempotency key: a retry with the same value returns the first outcome.")
ATTEMPT = Arg("attempt", "int", "Lease token: the `attempt` fetch returned. A mismatch is refused "
              "(`lease_lost`; heartbeat answers status `lost`).", low=1, high=10_000)
JOB_ID = Arg("job_id", "id", "The job's id.", required=True)

USAGE = Arg("usage", "struct", "Token usage and cost of this attempt so far (cumulative: a later report of the "
            "same attempt replaces it). With tokens and a model the price table knows, the server computes "
            "the cost itself (docs/ai.md).", fields=(
    Arg("input_tokens", "int", "Prompt tokens, not counting cache reads and writes.", low=0, high=INT64_MAX),
    Arg("output_tokens", "int", "Completion tokens.", low=0, high=INT64_MAX),
    Arg("cache_read_tokens", "int", "Prompt tokens read from the provider's cache.", low=0, high=INT64_MAX),
    Arg("cache_write_tokens", "int", "Prompt tokens written to the provider's cache.", low=0, high=INT64_MAX),
    Arg("model", "str", "Model name, as in the price table.", length_max=256),
    Arg("provider", "str", "Provider name, as in the price table.", length_max=256),
    Arg("cost_usd", "float", "Cost as the worker computed it (kept as `reported_cost_usd` when the price "
        "table prices the report).", low=0, high=1e9),
    Arg("latency_ms", "int", low=0, high=INT64_MAX),
))

BACKOFF = Arg("backoff", "struct", "Delay between attempts.", fields=(
    Arg("strategy", "str", choices=BACKOFF_STRATEGIES, default="exponential"),
    Arg("base_ms", "int", low=0, high=DAY_MS, default=1000),
    Arg("max_ms", "int", low=0, high=30 * DAY_MS, default=600_000),
))

AGENT = Arg("agent", "struct", "Makes the job an agent loop: one iteration per fetch, `agent_status` on ack says "
            "what comes next, and the server enforces these guardrails (docs/ai.md, agent loops).", fields=(
    Arg("max_iterations", "int", "Iterations at most; the one that reaches it holds the job (max_iterations).",
        low=1, high=100_000),
    Arg("max_cost_usd", "float", "Spend cap over all iterations: reserved at fetch, checked at heartbeat and "
        "after each iteration; reaching it holds the job (max_cost).", low=0, high=1e9),
    Arg("iteration_timeout", "int", "Milliseconds one attempt of an iteration may take: its lease ends there "
        "whatever the heartbeats, and the attempt counts as failed.", low=1000, high=YEAR_MS),
    Arg("loop_window", "int", "This many identical consecutive iterations (same checkpoint and result) hold "
        "the job (loop_detected); default 3.", low=2, high=100),
))

HOLD_TIMEOUT = Arg("hold_timeout_ms", "int", "While held, act on the job after this long (see "
                   "timeout_action).", low=1000, high=YEAR_MS)
TIMEOUT_ACTION = Arg("timeout_action", "str", "What a hold time-out does: approve (back to pending) or reject "
                     "(cancelled).", choices=("approve", "reject"))
ACTOR = Arg("actor", "str", "Who does this, for the audit trail (default: the request's `client` key).",
            length_max=128)
NOTE = Arg("note", "str", "Kept in the audit trail.", length_max=4096)

ENQUEUE_ARGS = (
    Arg("queue", "queue", "Queue name: 1-128 chars of ASCII letters, digits, `.`, `_`, `:` and `-`, starting with a letter or digit.", required=True),
    Arg("payload", "any", "Any msgpack value; encoded size at most the payload cap (1 MiB by default).", required=True),
    Arg("priority", "str", "Tier; FIFO within a tier.", default="normal", choices=PRIORITIES),
    Arg("max_retries", "int", "Retries after the first attempt before the job goes `dead`.", default=3, low=0, high=1000),
    BACKOFF,
    Arg("run_at", "int", "Do not run before this time (ms since epoch; a time in the past, 0 included, "
        "means now; at most 10 years ahead). Excludes `delay_ms`.", low=0, high=INT64_MAX),
    Arg("delay_ms", "int", "Do not run before now + this. Excludes `run_at`.", low=0, high=YEAR_MS),
    Arg("timeout_ms", "int", "Time limit of one attempt: its lease ends at started_at + timeout_ms whatever "
        "the heartbeats, and the attempt counts as failed (last_error `timeout after N ms`); fetch returns it "
        "so workers can stop the handler then. With agent.iteration_timeout, the smaller one applies.",
        low=100, high=YEAR_MS),
    Arg("expire_after_ms", "int", "TTL: a job still waiting (pending, scheduled, retrying, held) this long after "
        "enqueue goes `dead` with last_error `expired`; an attempt that fails after it is not retried.",
        low=1, high=YEAR_MS),
    Arg("unique_key", "str", "At most one live job per (queue, key); a duplicate returns the existing job.", length_max=256),
    Arg("unique_period_ms", "int", "Keep the unique key for this long (default: until the job finishes).", low=1, high=YEAR_MS),
    Arg("tags", "str_map", "String map, at most 32 entries, keys ≤ 64 and values ≤ 256 chars."),
    Arg("hold", "bool", "Enqueue in state `held`: not handed out until approve_job (or reject_job, cancel_job, "
        "its hold time-out, its TTL).", default=False),
    Arg("hold_reason", "str", "Why the job is held.", length_max=4096),
    AGENT,
    Arg("budget_usd", "float", "This job's own spend cap across its attempts (the `job` budget layer; "
        "agent.max_cost_usd is the same for agent jobs). Also its cost estimate for reservations.",
        low=0, high=1e9),
    Arg("estimate_usd", "float", "Expected cost of one attempt, reserved against the budgets at fetch "
        "(default: the job's remaining cap, else the budget's recent cost per attempt).", low=0, high=1e9),
    HOLD_TIMEOUT,
    TIMEOUT_ACTION,
)

OPS: dict[str, Op] = {}


def _op(*args, **kwargs):
    op = Op(*args, **kwargs)
    OPS[op.name] = op
    return op


_op("enqueue", "write", "Add one job.", ENQUEUE_ARGS + (REQUEST_ID,),
    ok=("job_id", "state", "unique_existing"))
_op("enqueue_batch", "write", "Add many jobs in one raft entry; optionally fire a callback job when all have finished.", (
    Arg("jobs", "list", "Enqueue arg maps (without request_id), 1-1000.", required=True),
    Arg("batch", "struct", "Callback when every job of the batch has finished.", fields=(
        Arg("callback_queue", "queue", required=True),
        Arg("callback_payload", "any"),
    )),
    REQUEST_ID,
), ok=("job_ids", "batch_id"))
_op("fetch", "write", "Lease up to `count` of the best pending jobs of the given queues.", (
    Arg("queues", "queues", "Queues to take from, 1-64 names.", required=True),
    Arg("worker_id", "id", "Who holds the lease.", required=True),
    Arg("hostname", "str", length_max=255),
    Arg("count", "int", "Jobs to lease at most.", default=1, low=1, high=1000),
    Arg("wait_ms", "int", "Long-poll: wait up to this long for a job (0: answer at once).", default=0, low=0, high=600_000),
    Arg("lease_ms", "int", "Lease length; extended by heartbeat.", default=30_000, low=1000, high=12 * 3_600_000),
    REQUEST_ID,
), ok=("jobs",))
_op("ack", "write", "Complete an active job.", (
    JOB_ID, ATTEMPT,
    Arg("result", "any", "Stored with the job."),
    USAGE,
    Arg("checkpoint", "any"),
    Arg("agent_status", "str", "done (the default: the job completes), hold (the job goes `held` with "
        "hold_reason and hold_payload, for a person to approve or reject), or continue (agent jobs: the "
        "iteration is recorded, the guardrails checked, and the job goes back to pending for its next "
        "iteration with this checkpoint).", choices=("done", "hold", "continue")),
    Arg("hold_reason", "str", "With agent_status hold: why.", length_max=4096),
    Arg("hold_payload", "any", "With agent_status hold: what the person deciding needs to see."),
    HOLD_TIMEOUT, TIMEOUT_ACTION,
    Arg("trace", "any", "Stored with the job (`trace`)."),
    REQUEST_ID,
), ok=("state", "iteration"), errors=("NOT_FOUND", "FAILED_PRECONDITION/lease_lost",
                                      "FAILED_PRECONDITION/not_agent_job"))
_op("fail", "write", "Fail the current attempt: retry with backoff, or `dead` when attempts are spent or the job expired.", (
    JOB_ID, ATTEMPT,
    Arg("error", "str", "Error message.", length_max=65_536, default=""),
    Arg("backtrace", "str", length_max=262_144),
    USAGE,
    Arg("checkpoint", "any", "Kept for the next attempt."),
    REQUEST_ID,
), ok=("state", "next_attempt_at", "attempts_remaining"))
_op("ack_batch", "write", "Complete and fail many active jobs in one frame (a worker whose jobs finish together); "
    "each one is applied on its own, as if sent alone, and answered in its place.", (
    Arg("acks", "list", "Ack arg maps (job_id, attempt, result, usage, ...; no request_id)."),
    Arg("fails", "list", "Fail arg maps (job_id, attempt, error, backtrace, ...; no request_id)."),
    REQUEST_ID,
), ok=("acks", "fails"))
_op("heartbeat", "write", "Extend leases and store progress; answers per job ok, cancel or lost.", (
    Arg("worker_id", "id", required=True),
    Arg("jobs", "map", "job_id → {progress, checkpoint, usage, attempt}; at most 1000.", required=True),
    REQUEST_ID,
), ok=("jobs",))
_op("get_job", "read", "The job record: every field of the job model, `errors` per attempt among them.", (JOB_ID,),
    ok=("job",))
_op("cancel_job", "write", "Cancel a job; an active job is told on its next heartbeat.",
    (JOB_ID, ACTOR, NOTE, REQUEST_ID),
    ok=("state", "cancel_requested"))
_op("retry_job", "write", "Run a dead, cancelled, completed, retrying or scheduled job again now.", (JOB_ID, REQUEST_ID), ok=("state",))
_op("delete_job", "write", "Remove a job and its indexes.", (JOB_ID, ACTOR, REQUEST_ID), ok=())
_op("pause_queue", "write", "Stop handing out jobs of a queue.", (Arg("queue", "queue", required=True), REQUEST_ID), ok=())
_op("resume_queue", "write", "Hand out jobs of a queue again.", (Arg("queue", "queue", required=True), REQUEST_ID), ok=())
_op("list_queues", "read", "Every known queue with counts per state.", (), ok=("queues",))
_op("cluster_status", "local", "This node's raft role, indexes, durability mode and actor processes.", (),
    ok=("node_id", "role", "leader", "term", "commit_index", "applied_index", "durable", "actors"))
_op("cluster_add", "control", "Add a voter to the raft cluster (start it afterwards with --peers and --rejoin).", (
    Arg("address", "raft_address", "The new node's raft address, host:port.", required=True),
), ok=())
_op("cluster_remove", "control", "Remove a voter from the raft cluster (then stop it).", (
    Arg("address", "raft_address", "The node's raft address, host:port.", required=True),
), ok=())
_op("tick", "internal", "Lifecycle: promote due jobs, reclaim expired leases, expire TTLs, drop old dedupe records, "
    "fire due cron schedules, wake throttled queues whose window reopened, prune old finished jobs and "
    "long-unseen worker records.", (
    Arg("limit", "int", "Items of each kind handled at most.", default=1000, low=1, high=100_000),
    Arg("completed_retention_ms", "int", "Delete completed and cancelled jobs that finished at least this long "
        "ago (the lifecycle's `--completed-retention-ms`; absent: keep them).", low=1, high=100 * YEAR_MS),
    Arg("worker_retention_ms", "int", "Delete worker records not seen by fetch or heartbeat for this long "
        "(the lifecycle's `--worker-retention-ms`; absent: keep them).", low=1, high=100 * YEAR_MS),
), ok=("promoted", "reclaimed", "expired", "fired", "woken", "pruned", "workers_pruned"))

HEARTBEAT_JOB_FIELDS = ("progress", "checkpoint", "usage", "attempt")


# --------------------------------------------------------------------------- validation

def _bad(message, field, reason):
    raise InvalidArgument(message, field=field, reason=reason)


def check_depth(value, field, depth_max=DEPTH_MAX):
    """Reject values nested deeper than `depth_max`, and msgpack timestamps, without recursion.

    msgpack-python decodes the timestamp extension (-1) by itself, past the
    codec's ext_hook, so it is refused here: jobbie values are plain msgpack.
    """
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > depth_max:
            _bad(f"{field} nests deeper than {depth_max} levels", field, "too_deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            stack.extend((k, depth + 1) for k in node if type(k) is not str)
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, Timestamp):
            _bad(f"{field} holds a msgpack timestamp extension; send times as integer ms", field, "wrong_type")


def _check_value(arg: Arg, value, field: str):
    kind = arg.kind
    if kind == "any":
        if isinstance(value, (dict, list, Timestamp)):
            check_depth(value, field)
        return value
    if kind in ("str", "queue", "id"):
        if type(value) is not str:
            _bad(f"{field} must be a string, got {_type_name(value)}", field, "wrong_type")
        if kind == "queue":
            if not QUEUE_NAME.match(value):
                _bad(f"{field} {value[:64]!r} is not a valid queue name (ASCII letters, digits and ._:-, "
                     "1-128 chars, starting with a letter or digit)", field, "invalid_name")
        elif kind == "id":
            if not PRINTABLE_ID.match(value):
                _bad(f"{field} must be 1-128 printable ASCII characters without spaces", field, "invalid_name")
        else:
            if arg.length_max is not None and len(value) > arg.length_max:
                _bad(f"{field} is longer than {arg.length_max} characters", field, "too_large")
            if arg.choices and value not in arg.choices:
                _bad(f"{field} must be one of {', '.join(arg.choices)}; got {value[:64]!r}", field, "invalid_choice")
        return value
    if kind == "raft_address":
        if type(value) is not str or not RAFT_ADDRESS.match(value):
            _bad(f"{field} must be host:port, got {str(value)[:64]!r}", field, "invalid_name")
        return value
    if kind == "int":
        if type(value) is not int:
            _bad(f"{field} must be an integer, got {_type_name(value)}", field, "wrong_type")
        if (arg.low is not None and value < arg.low) or (arg.high is not None and value > arg.high):
            _bad(f"{field} must be between {arg.low:g} and {arg.high:g}; got {value}", field, "out_of_range")
        return value
    if kind == "float":
        if type(value) not in (int, float):
            _bad(f"{field} must be a number, got {_type_name(value)}", field, "wrong_type")
        if not math.isfinite(value):
            _bad(f"{field} must be a finite number", field, "out_of_range")
        if (arg.low is not None and value < arg.low) or (arg.high is not None and value > arg.high):
            _bad(f"{field} must be between {arg.low:g} and {arg.high:g}; got {value}", field, "out_of_range")
        return float(value)
    if kind == "bool":
        if type(value) is not bool:
            _bad(f"{field} must be true or false, got {_type_name(value)}", field, "wrong_type")
        return value
    if kind == "queues":
        if type(value) is not list:
            _bad(f"{field} must be a list of queue names, got {_type_name(value)}", field, "wrong_type")
        if not 1 <= len(value) <= 64:
            _bad(f"{field} must name 1 to 64 queues", field, "out_of_range")
        item = Arg(arg.name, "queue")
        out = [_check_value(item, q, f"{field}[{i}]") for i, q in enumerate(value)]
        return list(dict.fromkeys(out))
    if kind == "str_map":
        if type(value) is not dict:
            _bad(f"{field} must be a map of strings, got {_type_name(value)}", field, "wrong_type")
        if len(value) > 32:
            _bad(f"{field} has more than 32 entries", field, "too_large")
        for k, v in value.items():
            if type(k) is not str:
                _bad(f"{field} keys must be strings, got {_type_name(k)}", field, "wrong_type")
            if type(v) is not str:
                _bad(f"{field}.{k} must be a string, got {_type_name(v)}", f"{field}.{k}", "wrong_type")
            if not 1 <= len(k) <= 64 or len(v) > 256:
                _bad(f"{field}.{k[:64]}: keys are 1-64 chars and values at most 256", f"{field}.{k[:64]}", "too_large")
        return value
    if kind == "map":
        if type(value) is not dict:
            _bad(f"{field} must be a map, got {_type_name(value)}", field, "wrong_type")
        return value
    if kind == "list":
        if type(value) is not list:
            _bad(f"{field} must be a list, got {_type_name(value)}", field, "wrong_type")
        return value
    if kind == "struct":
        if type(value) is not dict:
            _bad(f"{field} must be a map, got {_type_name(value)}", field, "wrong_type")
        return validate_fields(arg.fields, value, prefix=field + ".")
    raise AssertionError(f"unknown arg kind {kind}")


def _type_name(value):
    if value is None:
        return "nil"
    return {bool: "bool", int: "integer", float: "float", str: "string", bytes: "binary",
            list: "list", dict: "map"}.get(type(value), type(value).__name__)


def validate_fields(rows, args: dict, prefix: str = "") -> dict:
    """Check a map against Arg rows; returns a new map with defaults filled in."""
    out = {}
    for key in args:
        if type(key) is not str:
            _bad(f"{prefix or 'args'} keys must be strings", prefix.rstrip(".") or "args", "wrong_type")
    names = {a.name for a in rows}
    for key in args:
        if key not in names:
            _bad(f"unknown field {prefix}{key[:64]} (accepted: {', '.join(sorted(names)) or 'none'})",
                 prefix + key[:64], "unknown_field")
    for arg in rows:
        value = args.get(arg.name)
        if value is None and not (arg.kind == "any" and arg.name in args):
            if arg.required:
                _bad(f"{prefix}{arg.name} is required", prefix + arg.name, "missing_field")
            if arg.default is not None:
                out[arg.name] = arg.default
            continue
        out[arg.name] = _check_value(arg, value, prefix + arg.name)
    return out


def validate(op_name, args, limits: Limits = Limits(), frame_bytes: int = 0, now_ms: int = 0) -> tuple[Op, dict]:
    """Validate one request's op and args for a client. Raises InvalidArgument."""
    if type(op_name) is not str:
        _bad("op must be a string", "op", "wrong_type")
    op = OPS.get(op_name)
    if op is None or op.path == "internal":
        known = ", ".join(sorted(n for n, o in OPS.items() if o.path != "internal"))
        _bad(f"unknown op {op_name[:64]!r}; this server speaks protocol v1: {known}", "op", "unknown_op")
    if args is None:
        args = {}
    if type(args) is not dict:
        _bad(f"args must be a map, got {_type_name(args)}", "args", "wrong_type")
    clean = validate_fields(op.args, args)
    extra = _EXTRA_CHECKS.get(op.name)
    if extra is not None:
        extra(clean, limits, frame_bytes, now_ms)
    if frame_bytes > limits.op_bytes_max and op.path not in ("read", "local"):
        _refuse_whole(op, clean, limits, frame_bytes)
    return op, clean


def check_value_size(value, field: str, cap: int, frame_bytes: int):
    """Refuse a free value whose encoding is over `cap` bytes (skipped when the frame is smaller)."""
    if frame_bytes > cap:
        size = _payload_size(value)
        if size > cap:
            raise InvalidArgument(f"{field} is {size} bytes encoded; the cap is {cap}", field=field,
                                  reason="too_large")


def _check_caps(op_name: str, args: dict, limits: Limits, frame_bytes: int, prefix: str = ""):
    for (name, field), attr in VALUE_CAPS.items():
        if name == op_name and field in args:
            check_value_size(args[field], prefix + field, getattr(limits, attr), frame_bytes)


def _refuse_whole(op: Op, args: dict, limits: Limits, frame_bytes: int):
    """A write over op_bytes_max: refused, naming its largest argument."""
    sizes = {name: _payload_size(value) for name, value in args.items()}
    field = max(sizes, key=sizes.get) if sizes else "args"
    _bad(f"the {op.name} request is {frame_bytes} bytes; one write may carry at most {limits.op_bytes_max} "
         f"(its largest field, {field}, is {sizes.get(field, 0)} bytes); split it or send large data by reference",
         field, "too_large")


def _payload_size(value) -> int:
    from .codec import encode
    return len(encode(value))


def _check_enqueue(args, limits, frame_bytes, now_ms, prefix=""):
    if "run_at" in args and "delay_ms" in args:
        _bad(f"give {prefix}run_at or {prefix}delay_ms, not both", prefix + "delay_ms", "conflicting_fields")
    run_at = args.get("run_at")
    # A time in the past means "now" (0 included); only the far future is a mistake.
    if run_at is not None and now_ms and run_at - now_ms > 10 * YEAR_MS:
        _bad(f"{prefix}run_at is more than 10 years ahead", prefix + "run_at", "out_of_range")
    # A frame no larger than the cap cannot hold a larger payload: skip the re-encode.
    if frame_bytes > limits.payload_bytes_max:
        size = _payload_size(args["payload"])
        if size > limits.payload_bytes_max:
            raise InvalidArgument(f"{prefix}payload is {size} bytes; the cap is {limits.payload_bytes_max}",
                                  field=prefix + "payload", reason="too_large")
    if not args.get("hold"):
        for name in ("hold_timeout_ms", "timeout_action"):
            if name in args:
                _bad(f"{prefix}{name} goes with {prefix}hold true (a budget hold takes the budget's own "
                     "time-out)", prefix + name, "conflicting_fields")
    backoff = args.get("backoff")
    if backoff is not None and backoff["max_ms"] < backoff["base_ms"]:
        _bad(f"{prefix}backoff.max_ms must be at least backoff.base_ms", prefix + "backoff.max_ms", "out_of_range")


def _check_enqueue_batch(args, limits, frame_bytes, now_ms):
    jobs = args["jobs"]
    if not 1 <= len(jobs) <= limits.batch_jobs_max:
        _bad(f"jobs must hold 1 to {limits.batch_jobs_max} jobs; got {len(jobs)}", "jobs", "too_large")
    clean = _check_items("jobs", jobs, ENQUEUE_ARGS,
                         lambda one, prefix: _check_enqueue(one, limits, frame_bytes, now_ms, prefix=prefix))
    if frame_bytes > limits.batch_bytes_max:
        total = sum(_payload_size(j["payload"]) for j in clean)
        if total > limits.batch_bytes_max:
            _bad(f"jobs carry {total} payload bytes; a batch may carry at most {limits.batch_bytes_max}",
                 "jobs", "too_large")
    args["jobs"] = clean


_HEARTBEAT_JOB = (
    Arg("progress", "any"), Arg("checkpoint", "any"), USAGE, ATTEMPT,
)


def _check_heartbeat(args, limits, frame_bytes, now_ms):
    jobs = args["jobs"]
    if len(jobs) > 1000:
        _bad("jobs holds more than 1000 entries", "jobs", "too_large")
    clean = {}
    for job_id, entry in jobs.items():
        if type(job_id) is not str or not PRINTABLE_ID.match(job_id):
            _bad("jobs keys must be job ids (1-128 printable ASCII)", "jobs", "invalid_name")
        if entry is None:
            entry = {}
        if type(entry) is not dict:
            _bad(f"jobs.{job_id} must be a map, got {_type_name(entry)}", f"jobs.{job_id}", "wrong_type")
        one = clean[job_id] = validate_fields(_HEARTBEAT_JOB, entry, prefix=f"jobs.{job_id}.")
        _check_caps("heartbeat", one, limits, frame_bytes, prefix=f"jobs.{job_id}.")
    args["jobs"] = clean


def _check_ack_hold(args, limits, frame_bytes, now_ms=0, prefix=""):
    _check_caps("ack", args, limits, frame_bytes, prefix=prefix)
    if args.get("agent_status") != "hold":
        for name in ("hold_reason", "hold_payload", "hold_timeout_ms", "timeout_action"):
            if name in args:
                _bad(f"{prefix}{name} goes with {prefix}agent_status hold", prefix + name, "conflicting_fields")


#: Jobs one ack_batch may finish (acks and fails together).
ACK_BATCH_MAX = 1000


def _check_ack_batch(args, limits, frame_bytes, now_ms):
    acks, fails = args.get("acks") or [], args.get("fails") or []
    if not 1 <= len(acks) + len(fails) <= ACK_BATCH_MAX:
        _bad(f"acks and fails must hold 1 to {ACK_BATCH_MAX} jobs together; got {len(acks) + len(fails)}",
             "acks", "too_large" if acks or fails else "missing_field")
    rows = {name: tuple(a for a in OPS[name].args if a.name != "request_id") for name in ("ack", "fail")}
    args["acks"] = _check_items("acks", acks, rows["ack"],
                                lambda one, prefix: _check_ack_hold(one, limits, frame_bytes, prefix=prefix))
    args["fails"] = _check_items("fails", fails, rows["fail"],
                                 lambda one, prefix: _check_caps("fail", one, limits, frame_bytes, prefix=prefix))


def _check_items(field: str, items: list, rows, check) -> list:
    """Each map of a list arg checked against `rows` (then `check(clean, prefix)`), named `field[i].name`."""
    clean = []
    for i, item in enumerate(items):
        if type(item) is not dict:
            _bad(f"{field}[{i}] must be a map, got {_type_name(item)}", f"{field}[{i}]", "wrong_type")
        one = validate_fields(rows, item, prefix=f"{field}[{i}].")
        check(one, f"{field}[{i}].")
        clean.append(one)
    return clean


_EXTRA_CHECKS = {
    "enqueue": _check_enqueue,
    "enqueue_batch": _check_enqueue_batch,
    "heartbeat": _check_heartbeat,
    "ack": _check_ack_hold,
    "ack_batch": _check_ack_batch,
    "fail": lambda args, limits, frame_bytes, now_ms: _check_caps("fail", args, limits, frame_bytes),
}


# The search, bulk and mirror ops are declared in their own module; importing it
# here registers them in OPS with the rest.
from . import ops_search  # noqa: E402,F401
# Likewise queue management, worker / dead-letter listings and cron schedules.
from . import ops_manage  # noqa: E402,F401
# Likewise the price table and the usage actor's summaries.
from . import ops_usage  # noqa: E402,F401
# Likewise budgets, held jobs and the audit trail.
from . import ops_budgets  # noqa: E402,F401
# Likewise agent iterations and replay.
from . import ops_agents  # noqa: E402,F401
# Likewise API tokens (and the role each op needs).
from . import ops_auth  # noqa: E402,F401

WRITE_OPS = frozenset(name for name, op in OPS.items() if op.path == "write")
