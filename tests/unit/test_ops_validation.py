"""Client-input validation (transport/ops.py), generated from the `OPS` rows.

For every client op and every argument (nested struct fields, enqueue_batch's job maps and
heartbeat's per-job maps included) the bad values of its kind are tried one at a time on
top of otherwise valid args; each must raise `InvalidArgument` naming the field and the
stable reason. Hand-written tests follow for the rules that are not per-argument.
"""
from __future__ import annotations

import copy
import math

import pytest

from jobbie.transport import ops
from jobbie.transport.errors import InvalidArgument
from jobbie.transport.ops import DEPTH_MAX, ENQUEUE_ARGS, INT64_MAX, OPS, YEAR_MS, Limits, validate

CLIENT_OPS = sorted(name for name, op in OPS.items() if op.path != "internal")
KINDS = {"raft_address", "str", "int", "float", "bool", "any", "queue", "queues", "id", "str_map", "map", "list", "struct"}

#: Smallest valid args of every client op; every generated case changes exactly one thing.
VALID = {
    "enqueue": {"queue": "q", "payload": 1},
    "enqueue_batch": {"jobs": [{"queue": "q", "payload": 1}]},
    "fetch": {"queues": ["q"], "worker_id": "w1"},
    "ack": {"job_id": "job_1", "agent_status": "hold"},  # hold: its hold_* args are valid too
    "ack_batch": {"acks": [{"job_id": "job_1"}]},
    "fail": {"job_id": "job_1"},
    "heartbeat": {"worker_id": "w1", "jobs": {}},
    "get_job": {"job_id": "job_1"},
    "cancel_job": {"job_id": "job_1"},
    "retry_job": {"job_id": "job_1"},
    "delete_job": {"job_id": "job_1"},
    "pause_queue": {"queue": "q"},
    "resume_queue": {"queue": "q"},
    "list_queues": {},
    "cluster_status": {},
    "cluster_add": {"address": "127.0.0.1:8704"},
    "cluster_remove": {"address": "127.0.0.1:8704"},
    "search_jobs": {},
    "bulk": {"job_ids": ["job_1"], "action": "retry"},
    "bulk_status": {"bulk_id": "blk_1"},
    "rebuild_mirror": {},
    "move_job": {"job_id": "job_1", "queue": "q2"},
    "set_priority": {"job_id": "job_1", "priority": "high"},
    "clear_queue": {"queue": "q"},
    "drain_queue": {"queue": "q"},
    "delete_queue": {"queue": "q", "confirm": True},
    "set_concurrency": {"queue": "q"},
    "set_throttle": {"queue": "q", "rate": 10, "period_ms": 1000},
    "remove_throttle": {"queue": "q"},
    "list_workers": {},
    "list_dead": {},
    "create_schedule": {"name": "nightly", "queue": "q", "cron": "0 3 * * *"},
    "list_schedules": {},
    "digest": {},
    "delete_schedule": {"name": "nightly"},
    "set_price": {"model": "m", "input_usd_per_mtok": 3, "output_usd_per_mtok": 15},
    "list_prices": {},
    "delete_price": {"model": "m"},
    "usage_summary": {},
    "rebuild_usage": {},
    "set_budget": {"budget_id": "daily", "scope": "global", "limit_usd": 10},
    "get_budget": {"budget_id": "daily"},
    "list_budgets": {},
    "delete_budget": {"budget_id": "daily"},
    "approve_job": {"job_id": "job_1"},
    "reject_job": {"job_id": "job_1"},
    "list_held": {},
    "list_audit": {},
    "replay_job": {"job_id": "job_1", "from_iteration": 2},
    "list_iterations": {"job_id": "job_1"},
    "create_token": {"name": "ci", "role": "worker"},
    "list_tokens": {},
    "revoke_token": {"token": "ci"},
    "health": {},
    "get_iteration": {"job_id": "job_1", "n": 1},
}

BAD_QUEUE_NAMES = [
    ("empty", ""), ("leading-dash", "-x"), ("leading-dot", ".x"), ("129-chars", "q" * 129),
    ("space", "a b"), ("nul", "a\x00b"), ("non-ascii", "é"), ("rtl-override", "q\u202e"),
    ("slash", "a/b"), ("at-sign", "a@b"), ("trailing-newline", "q\n"), ("fullwidth-a", "\uff41"),
]
BAD_IDS = [("empty", ""), ("space", "a b"), ("129-chars", "j" * 129), ("nul", "a\x00"), ("non-ascii", "é"),
           ("tab", "a\tb"), ("del", "a\x7f")]


def nested(depth: int):
    """A value `depth` levels deep, counted as check_depth does: the outer value is level 1 and
    the innermost scalar is a level too (nested(1) == 0, nested(2) == [0])."""
    value = 0
    for _ in range(depth - 1):
        value = [value]
    return value


def bad_values(arg):
    """(label, value, field suffix, reason) for every bad value of this argument's kind."""
    kind = arg.kind
    out = []
    if kind == "int":
        out += [("bool", True, "", "wrong_type"), ("false", False, "", "wrong_type"),
                ("float", 1.0, "", "wrong_type"), ("string", "1", "", "wrong_type"),
                ("list", [1], "", "wrong_type"), ("map", {"a": 1}, "", "wrong_type"), ("bytes", b"1", "", "wrong_type")]
        if arg.low is not None:
            out.append(("below-low", int(arg.low) - 1, "", "out_of_range"))
        if arg.high is not None:
            out.append(("above-high", int(arg.high) + 1, "", "out_of_range"))
            out.append(("2**63", 2**63, "", "out_of_range"))
            out.append(("2**64", 2**64, "", "out_of_range"))
    elif kind == "float":
        out += [("bool", True, "", "wrong_type"), ("string", "1.5", "", "wrong_type"),
                ("list", [1.5], "", "wrong_type"), ("nan", math.nan, "", "out_of_range"),
                ("inf", math.inf, "", "out_of_range"), ("-inf", -math.inf, "", "out_of_range")]
        if arg.low is not None:
            out.append(("below-low", arg.low - 0.5, "", "out_of_range"))
        if arg.high is not None:
            out.append(("above-high", arg.high * 2 + 1, "", "out_of_range"))
    elif kind in ("str", "id", "queue"):
        out += [("int", 1, "", "wrong_type"), ("bool", True, "", "wrong_type"), ("bytes", b"x", "", "wrong_type"),
                ("list", ["x"], "", "wrong_type"), ("map", {"x": "y"}, "", "wrong_type")]
        if kind == "queue":
            out += [(f"name-{label}", v, "", "invalid_name") for label, v in BAD_QUEUE_NAMES]
        elif kind == "id":
            out += [(f"id-{label}", v, "", "invalid_name") for label, v in BAD_IDS]
        else:
            if arg.length_max is not None:
                out.append(("too-long", "x" * (arg.length_max + 1), "", "too_large"))
            if arg.choices:
                out.append(("bad-choice", "bogus", "", "invalid_choice"))
    elif kind == "raft_address":
        out += [("int", 8704, "", "invalid_name"), ("no-port", "127.0.0.1", "", "invalid_name"),
                ("url", "tcp://127.0.0.1:1", "", "invalid_name"), ("space", "a b:1", "", "invalid_name"),
                ("long-port", "h:123456", "", "invalid_name")]
    elif kind == "bool":
        out += [("int", 1, "", "wrong_type"), ("zero", 0, "", "wrong_type"), ("string", "true", "", "wrong_type"),
                ("list", [True], "", "wrong_type")]
    elif kind == "queues":
        out += [("string", "q", "", "wrong_type"), ("map", {"q": 1}, "", "wrong_type"),
                ("empty", [], "", "out_of_range"), ("65-names", [f"q{i}" for i in range(65)], "", "out_of_range"),
                ("int-item", [1], "[0]", "wrong_type"), ("bad-second", ["q", "-x"], "[1]", "invalid_name"),
                ("non-ascii-item", ["é"], "[0]", "invalid_name")]
    elif kind == "str_map":
        out += [("list", [["k", "v"]], "", "wrong_type"), ("string", "k=v", "", "wrong_type"),
                ("int-value", {"k": 1}, ".k", "wrong_type"), ("nil-value", {"k": None}, ".k", "wrong_type"),
                ("33-entries", {f"k{i}": "v" for i in range(33)}, "", "too_large"),
                ("long-key", {"k" * 65: "v"}, "." + "k" * 64, "too_large"),
                ("empty-key", {"": "v"}, ".", "too_large"), ("long-value", {"k": "v" * 257}, ".k", "too_large")]
    elif kind == "map":
        out += [("list", [], "", "wrong_type"), ("string", "x", "", "wrong_type"), ("int", 1, "", "wrong_type")]
    elif kind == "list":
        out += [("map", {}, "", "wrong_type"), ("string", "x", "", "wrong_type"), ("int", 1, "", "wrong_type")]
    elif kind == "struct":
        out += [("list", [], "", "wrong_type"), ("string", "x", "", "wrong_type"), ("int", 1, "", "wrong_type"),
                ("unknown-field", {"bogus": 1}, ".bogus", "unknown_field")]
    elif kind == "any":
        out += [("too-deep-list", nested(DEPTH_MAX + 1), "", "too_deep"),
                ("too-deep-map", {"a": nested(DEPTH_MAX)}, "", "too_deep"),
                ("too-deep-mixed", [1, {"a": [nested(DEPTH_MAX - 1)]}], "", "too_deep")]
    else:
        raise AssertionError(f"no bad values for kind {kind}")
    return out


def valid_value(arg):
    if arg.kind == "struct":
        return {f.name: valid_value(f) for f in arg.fields if f.required}
    return {"queue": "q", "id": "x1", "str": arg.choices[0] if arg.choices else "s", "bool": False, "any": 1,
            "int": int(arg.low or 0), "float": float(arg.low or 0), "queues": ["q"], "str_map": {},
            "map": {}, "list": [], "raft_address": "127.0.0.1:8704"}[arg.kind]


def row_cases(op_name, rows, base, wrap, prefix):
    """Cases for a group of Arg rows checked against `base` (a valid map) and wrapped into full args."""
    for arg in rows:
        field = prefix + arg.name
        for label, value, suffix, reason in bad_values(arg):
            yield op_name, wrap({**base, arg.name: value}), field + suffix, reason, f"{op_name}:{field}:{label}"
        if arg.required:
            rest = {k: v for k, v in base.items() if k != arg.name}
            yield op_name, wrap(rest), field, "missing_field", f"{op_name}:{field}:missing"
            if arg.kind != "any":
                yield op_name, wrap({**rest, arg.name: None}), field, "missing_field", f"{op_name}:{field}:nil"
        if arg.kind == "struct":
            inner_base = valid_value(arg)
            yield from row_cases(op_name, arg.fields, inner_base,
                                 lambda inner, arg=arg: wrap({**base, arg.name: inner}), field + ".")
    yield op_name, wrap({**base, "bogus_field": 1}), prefix + "bogus_field", "unknown_field", \
        f"{op_name}:{prefix}bogus_field:unknown"


def all_cases():
    for name in CLIENT_OPS:
        op = OPS[name]
        yield from row_cases(name, op.args, VALID[name], lambda args: args, "")
    # the maps inside enqueue_batch.jobs are enqueue args (no request_id)
    yield from row_cases("enqueue_batch", ENQUEUE_ARGS, {"queue": "q", "payload": 1},
                         lambda job: {"jobs": [job]}, "jobs[0].")
    # the maps inside ack_batch.acks and .fails are ack and fail args (no request_id)
    for name, base in (("ack", VALID["ack"]), ("fail", {"job_id": "job_1"})):
        rows = tuple(a for a in OPS[name].args if a.name != "request_id")
        yield from row_cases("ack_batch", rows, base, lambda item, name=name: {f"{name}s": [item]}, f"{name}s[0].")
    # the per-job maps of heartbeat.jobs
    yield from row_cases("heartbeat", ops._HEARTBEAT_JOB, {},
                         lambda entry: {"worker_id": "w1", "jobs": {"job_1": entry}}, "jobs.job_1.")


CASES = list(all_cases())


# ------------------------------------------------------------------------------- the rows themselves

def test_valid_args_exist_for_every_client_op_and_pass():
    # Given the smallest valid args of every client op
    assert sorted(VALID) == CLIENT_OPS
    for name, args in VALID.items():
        # When validated / Then they pass, and the op row comes back
        op, clean = validate(name, copy.deepcopy(args))
        assert op is OPS[name]


def test_rows_use_known_kinds_and_bounded_numbers():
    # Given every Arg row, nested ones included / Then its kind is known and numbers are bounded
    def walk(rows):
        for arg in rows:
            yield arg
            yield from walk(arg.fields)
    rows = [a for op in OPS.values() for a in walk(op.args)] + list(walk(ops._HEARTBEAT_JOB))
    for arg in rows:
        assert arg.kind in KINDS, arg
        if arg.kind in ("int", "float"):
            # both bounds: an unbounded int would take any msgpack integer (and the message needs both)
            assert arg.low is not None and arg.high is not None, arg
            assert arg.high <= INT64_MAX
        if arg.kind == "struct":
            assert arg.fields
    for op in OPS.values():
        assert len(op.arg_names) == len(op.args), f"{op.name} repeats an argument"
    assert ops.WRITE_OPS == {n for n, o in OPS.items() if o.path == "write"}


def test_generated_cases_cover_every_client_arg():
    # Given the generated cases / Then every argument of every client op has some
    fields = {(c[0], c[2].split("[")[0].split(".")[0]) for c in CASES}
    for name in CLIENT_OPS:
        for arg in OPS[name].args:
            assert (name, arg.name) in fields, (name, arg.name)
    assert len(CASES) > 500


# ------------------------------------------------------------------------------- generated bad input

@pytest.mark.parametrize("op_name,args,field,reason", [pytest.param(*c[:4], id=c[4]) for c in CASES])
def test_bad_argument_is_refused_with_its_field_and_reason(op_name, args, field, reason):
    # Given a client request with exactly one bad argument
    # When it is validated
    with pytest.raises(InvalidArgument) as info:
        validate(op_name, args)
    # Then it is INVALID_ARGUMENT naming that field, with the stable reason
    exc = info.value
    assert (exc.field, exc.reason) == (field, reason), exc.message
    assert exc.to_wire() == {"code": "INVALID_ARGUMENT", "message": exc.message, "field": field, "reason": reason}


#: Free-value args that this version refuses whatever their value.
UNSUPPORTED = set()


@pytest.mark.parametrize("name", CLIENT_OPS)
def test_max_depth_payload_is_accepted_where_any_value_is(name):
    # Given a value exactly DEPTH_MAX levels deep in every free-value argument of the op
    anys = [a for a in OPS[name].args if a.kind == "any" and (name, a.name) not in UNSUPPORTED]
    for arg in anys:
        for value in (nested(DEPTH_MAX), {"a": nested(DEPTH_MAX - 1)}):
            args = {**VALID[name], arg.name: value}
            # When validated / Then it passes unchanged
            assert validate(name, args)[1][arg.name] == value


@pytest.mark.parametrize("field,value", [("hold_reason", "why"), ("hold_payload", {"a": 1}), ("hold_payload", None),
                                         ("hold_timeout_ms", 60_000), ("timeout_action", "approve")])
def test_ack_hold_fields_need_agent_status_hold(field, value):
    # Given an ack with a hold field but agent_status done / When validated / Then conflicting_fields on it
    with pytest.raises(InvalidArgument) as info:
        validate("ack", {"job_id": "j", "agent_status": "done", field: value})
    assert (info.value.field, info.value.reason) == (field, "conflicting_fields")
    # With agent_status hold the same field is accepted
    assert validate("ack", {"job_id": "j", "agent_status": "hold", field: value})[1]["agent_status"] == "hold"


# ------------------------------------------------------------------------------- ops and envelopes

@pytest.mark.parametrize("name", ["frobnicate", "", "ENQUEUE", "tick"])
def test_unknown_and_internal_ops_are_refused(name):
    # Given an op name that is not a client op (tick is internal)
    # When validated / Then unknown_op on field op
    with pytest.raises(InvalidArgument) as info:
        validate(name, {})
    assert (info.value.field, info.value.reason) == ("op", "unknown_op")
    assert "tick" not in info.value.message.split(": ", 1)[1]


@pytest.mark.parametrize("name", [1, None, b"enqueue", ["enqueue"]])
def test_op_name_must_be_a_string(name):
    # Given an op that is not a str / When validated / Then wrong_type on op
    with pytest.raises(InvalidArgument) as info:
        validate(name, {})
    assert (info.value.field, info.value.reason) == ("op", "wrong_type")


@pytest.mark.parametrize("args", [[], "x", 1, b"{}"])
def test_args_must_be_a_map(args):
    # Given args that are not a map / When validated / Then wrong_type on args
    with pytest.raises(InvalidArgument) as info:
        validate("list_queues", args)
    assert (info.value.field, info.value.reason) == ("args", "wrong_type")


def test_missing_args_count_as_empty():
    # Given args nil / When validated / Then they are {} (so required args are missing)
    assert validate("list_queues", None)[1] == {}
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue", None)
    assert (info.value.field, info.value.reason) == ("queue", "missing_field")


def test_non_string_arg_keys_are_refused():
    # Given a non-str key in args or a struct / When validated / Then wrong_type on the map
    for key in (1, b"queue", None):
        with pytest.raises(InvalidArgument) as info:
            validate("enqueue", {"queue": "q", "payload": 1, key: 2})
        assert (info.value.field, info.value.reason) == ("args", "wrong_type")
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue", {"queue": "q", "payload": 1, "backoff": {1: 2}})
    assert (info.value.field, info.value.reason) == ("backoff", "wrong_type")


# ------------------------------------------------------------------------------- defaults

def test_defaults_are_filled_as_the_protocol_says():
    # Given minimal args / When validated / Then the protocol's defaults are filled in
    assert validate("enqueue", {"queue": "q", "payload": None})[1] == \
        {"queue": "q", "payload": None, "priority": "normal", "max_retries": 3, "hold": False}
    assert validate("enqueue", {"queue": "q", "payload": 1, "backoff": {}})[1]["backoff"] == \
        {"strategy": "exponential", "base_ms": 1000, "max_ms": 600_000}
    assert validate("fetch", {"queues": ["a", "b", "a"], "worker_id": "w"})[1] == \
        {"queues": ["a", "b"], "worker_id": "w", "count": 1, "wait_ms": 0, "lease_ms": 30_000}
    assert validate("fail", {"job_id": "j"})[1] == {"job_id": "j", "error": ""}
    assert validate("heartbeat", {"worker_id": "w", "jobs": {"j": None}})[1] == {"worker_id": "w", "jobs": {"j": {}}}
    assert validate("enqueue_batch", {"jobs": [{"queue": "q", "payload": 1}]})[1] == \
        {"jobs": [{"queue": "q", "payload": 1, "priority": "normal", "max_retries": 3, "hold": False}]}
    # an int where a float is expected is taken as a float
    clean = validate("ack", {"job_id": "j", "usage": {"cost_usd": 1}})[1]
    assert clean["usage"] == {"cost_usd": 1.0} and type(clean["usage"]["cost_usd"]) is float


@pytest.mark.parametrize("name", ["q", "Q", "0", "a.b:c-d_e", "q" * 128, "A9"])
def test_valid_queue_names(name):
    # Given a valid queue name / When used in every queue argument / Then it is accepted as is
    assert validate("enqueue", {"queue": name, "payload": 1})[1]["queue"] == name
    assert validate("fetch", {"queues": [name], "worker_id": "w"})[1]["queues"] == [name]
    assert validate("enqueue_batch", {"jobs": [{"queue": name, "payload": 1}],
                                      "batch": {"callback_queue": name}})[1]["batch"] == {"callback_queue": name}


@pytest.mark.parametrize("label,name", BAD_QUEUE_NAMES, ids=[b[0] for b in BAD_QUEUE_NAMES])
def test_invalid_queue_names_everywhere(label, name):
    # Given a bad queue name / When used in every queue argument / Then invalid_name on that field
    for op_name, args, field in [
        ("enqueue", {"queue": name, "payload": 1}, "queue"),
        ("pause_queue", {"queue": name}, "queue"),
        ("resume_queue", {"queue": name}, "queue"),
        ("fetch", {"queues": [name], "worker_id": "w"}, "queues[0]"),
        ("enqueue_batch", {"jobs": [{"queue": name, "payload": 1}]}, "jobs[0].queue"),
        ("enqueue_batch", {"jobs": [{"queue": "q", "payload": 1}], "batch": {"callback_queue": name}},
         "batch.callback_queue"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            validate(op_name, args)
        assert (info.value.field, info.value.reason) == (field, "invalid_name"), (op_name, field)


# ------------------------------------------------------------------------------- sizes

def test_payload_over_the_cap_is_too_large():
    limits = Limits(payload_bytes_max=100)
    at_cap = "x" * 98  # str8 header: 2 + 98 = 100 encoded bytes
    # Given payloads at and over the cap, in a frame larger than the cap
    assert validate("enqueue", {"queue": "q", "payload": at_cap}, limits, frame_bytes=10_000)[1]["payload"] == at_cap
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue", {"queue": "q", "payload": at_cap + "x"}, limits, frame_bytes=10_000)
    # Then only the one over the cap is refused, on field payload
    assert (info.value.field, info.value.reason) == ("payload", "too_large")
    assert info.value.code == "INVALID_ARGUMENT"


def test_payload_cap_applies_to_each_batch_job_and_to_ack_result():
    # Given a 100-byte cap / When a batch job or an ack result is over it / Then too_large on it
    limits = Limits(payload_bytes_max=100, result_bytes_max=100)
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue_batch", {"jobs": [{"queue": "q", "payload": 1}, {"queue": "q", "payload": "x" * 200}]},
                 limits, frame_bytes=10_000)
    assert (info.value.field, info.value.reason) == ("jobs[1].payload", "too_large")
    with pytest.raises(InvalidArgument) as info:
        validate("ack", {"job_id": "j", "result": "x" * 200}, limits, frame_bytes=10_000)
    assert (info.value.field, info.value.reason) == ("result", "too_large")


def test_default_payload_cap_is_one_mib():
    # Given the default limits / When a payload is over 1 MiB / Then too_large
    assert Limits().payload_bytes_max == 1024 * 1024
    big = b"x" * (1024 * 1024)  # bin32: 5 + 1 MiB bytes
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue", {"queue": "q", "payload": big}, frame_bytes=2 * 1024 * 1024)
    assert (info.value.field, info.value.reason) == ("payload", "too_large")


def test_batch_job_count_and_bytes():
    # Given small batch limits / When a batch is over them, empty, or holds a non-map / Then refused
    limits = Limits(batch_jobs_max=3, batch_bytes_max=300)
    job = {"queue": "q", "payload": 1}
    assert len(validate("enqueue_batch", {"jobs": [job] * 3}, limits)[1]["jobs"]) == 3
    for jobs in ([job] * 4, []):
        with pytest.raises(InvalidArgument) as info:
            validate("enqueue_batch", {"jobs": jobs}, limits)
        assert (info.value.field, info.value.reason) == ("jobs", "too_large")
    heavy = {"queue": "q", "payload": "x" * 200}
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue_batch", {"jobs": [heavy, heavy]}, limits, frame_bytes=1_000)
    assert (info.value.field, info.value.reason) == ("jobs", "too_large")
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue_batch", {"jobs": [job, "job"]}, limits)
    assert (info.value.field, info.value.reason) == ("jobs[1]", "wrong_type")


def test_default_batch_job_limit():
    # Given the default limits / Then 1000 jobs pass and 1001 are too_large
    job = {"queue": "q", "payload": 1}
    assert len(validate("enqueue_batch", {"jobs": [job] * 1000})[1]["jobs"]) == 1000
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue_batch", {"jobs": [job] * 1001})
    assert (info.value.field, info.value.reason) == ("jobs", "too_large")


def test_heartbeat_job_map_limits():
    # Given heartbeat job maps over the limits / When validated / Then refused on jobs or jobs.<id>
    with pytest.raises(InvalidArgument) as info:
        validate("heartbeat", {"worker_id": "w", "jobs": {f"j{i}": {} for i in range(1001)}})
    assert (info.value.field, info.value.reason) == ("jobs", "too_large")
    assert len(validate("heartbeat", {"worker_id": "w", "jobs": {f"j{i}": {} for i in range(1000)}})[1]["jobs"]) == 1000
    for key in ("a b", "", "é", "j" * 129):
        with pytest.raises(InvalidArgument) as info:
            validate("heartbeat", {"worker_id": "w", "jobs": {key: {}}})
        assert (info.value.field, info.value.reason) == ("jobs", "invalid_name")
    with pytest.raises(InvalidArgument) as info:
        validate("heartbeat", {"worker_id": "w", "jobs": {"j": 5}})
    assert (info.value.field, info.value.reason) == ("jobs.j", "wrong_type")


def test_heartbeat_job_keys_that_are_not_strings_are_invalid_name():
    # (regression: a bin key, which codec.decode lets through, used to raise TypeError)
    # Given heartbeat job keys that are not str / When validated / Then invalid_name on jobs
    for key in (b"job_1", 1, None):
        with pytest.raises(InvalidArgument) as info:
            validate("heartbeat", {"worker_id": "w", "jobs": {key: {}}})
        assert (info.value.field, info.value.reason) == ("jobs", "invalid_name")


def test_tag_keys_that_are_not_strings_are_wrong_type():
    # (regression: an int key used to raise TypeError and a bin key was stored as bytes)
    # Given tags with a non-str key / When validated / Then wrong_type on tags
    for key in (b"team", 1, None):
        with pytest.raises(InvalidArgument) as info:
            validate("enqueue", {"queue": "q", "payload": 1, "tags": {key: "a"}})
        assert (info.value.field, info.value.reason) == ("tags", "wrong_type")
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue_batch", {"jobs": [{"queue": "q", "payload": 1, "tags": {b"k": "v"}}]})
    assert (info.value.field, info.value.reason) == ("jobs[0].tags", "wrong_type")


# ------------------------------------------------------------------------------- enqueue rules

def test_run_at_and_delay_ms_together_conflict():
    # Given both run_at and delay_ms / When validated / Then conflicting_fields on delay_ms
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue", {"queue": "q", "payload": 1, "run_at": 5, "delay_ms": 5})
    assert (info.value.field, info.value.reason) == ("delay_ms", "conflicting_fields")
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue_batch", {"jobs": [{"queue": "q", "payload": 1, "run_at": 5, "delay_ms": 5}]})
    assert (info.value.field, info.value.reason) == ("jobs[0].delay_ms", "conflicting_fields")


def test_run_at_more_than_ten_years_from_now_is_out_of_range():
    # Given run_at at and past 10 years from now / When validated / Then only past it is refused
    now = 1_700_000_000_000
    ok_at = now + 10 * YEAR_MS
    assert validate("enqueue", {"queue": "q", "payload": 1, "run_at": ok_at}, now_ms=now)[1]["run_at"] == ok_at
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue", {"queue": "q", "payload": 1, "run_at": ok_at + 1}, now_ms=now)
    assert (info.value.field, info.value.reason) == ("run_at", "out_of_range")


@pytest.mark.parametrize("past", [0, 1, 1_700_000_000_000 - 10 * YEAR_MS - 1])
def test_run_at_in_the_past_means_now_and_is_accepted(past):
    # Given run_at at the table's lower bound 0, or long ago / Then it is valid (the job runs now)
    now = 1_700_000_000_000
    assert validate("enqueue", {"queue": "q", "payload": 1, "run_at": past}, now_ms=now)[1]["run_at"] == past


def test_backoff_max_below_base_is_out_of_range():
    # Given backoff.max_ms below base_ms / When validated / Then out_of_range on backoff.max_ms
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue", {"queue": "q", "payload": 1, "backoff": {"base_ms": 2_000, "max_ms": 1_000}})
    assert (info.value.field, info.value.reason) == ("backoff.max_ms", "out_of_range")
    assert validate("enqueue", {"queue": "q", "payload": 1, "backoff": {"base_ms": 2_000, "max_ms": 2_000}})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(value):
    # Given NaN or an infinity in each float field / When validated / Then out_of_range
    for op_name, args, field in [
        ("ack", {"job_id": "j", "usage": {"cost_usd": value}}, "usage.cost_usd"),
        ("fail", {"job_id": "j", "usage": {"cost_usd": value}}, "usage.cost_usd"),
        ("enqueue", {"queue": "q", "payload": 1, "agent": {"max_cost_usd": value}}, "agent.max_cost_usd"),
        ("heartbeat", {"worker_id": "w", "jobs": {"j": {"usage": {"cost_usd": value}}}}, "jobs.j.usage.cost_usd"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            validate(op_name, args)
        assert (info.value.field, info.value.reason) == (field, "out_of_range")


def test_check_depth_is_iterative_for_very_deep_values():
    # Given a value far deeper than Python's recursion limit
    deep = nested(100_000)
    # When validated / Then it is refused as too deep, not with RecursionError
    with pytest.raises(InvalidArgument) as info:
        validate("enqueue", {"queue": "q", "payload": deep})
    assert (info.value.field, info.value.reason) == ("payload", "too_deep")


# ------------------------------------------------------------ caps on free values
@pytest.mark.parametrize("op,args,field", [
    ("ack", {"job_id": "j", "checkpoint": "x" * 300}, "checkpoint"),
    ("ack", {"job_id": "j", "trace": "x" * 300}, "trace"),
    ("ack", {"job_id": "j", "result": "x" * 300}, "result"),
    ("fail", {"job_id": "j", "checkpoint": "x" * 300}, "checkpoint"),
    ("heartbeat", {"worker_id": "w", "jobs": {"j1": {"checkpoint": "x" * 300}}}, "jobs.j1.checkpoint"),
    ("heartbeat", {"worker_id": "w", "jobs": {"j1": {"progress": "x" * 300}}}, "jobs.j1.progress"),
])
def test_every_free_value_has_a_byte_cap(op, args, field):
    # Given caps of 200 bytes on every free value
    limits = Limits(result_bytes_max=200, checkpoint_bytes_max=200, progress_bytes_max=200, trace_bytes_max=200,
                    hold_payload_bytes_max=200)
    # When a value over its cap arrives / Then it is refused on that field, and the value at the cap is fine
    with pytest.raises(InvalidArgument) as info:
        validate(op, args, limits, frame_bytes=10_000)
    assert (info.value.field, info.value.reason) == (field, "too_large")
    smaller = {k: ("x" * 150 if k == field else v) for k, v in args.items()}
    if op == "heartbeat":
        smaller["jobs"] = {"j1": {k: "x" * 150 for k in args["jobs"]["j1"]}}
    assert validate(op, smaller, limits, frame_bytes=10_000)


def test_hold_payload_has_a_byte_cap_before_anything_else_is_said_about_it():
    limits = Limits(hold_payload_bytes_max=200)
    with pytest.raises(InvalidArgument) as info:
        validate("ack", {"job_id": "j", "hold_payload": "x" * 300}, limits, frame_bytes=10_000)
    assert (info.value.field, info.value.reason) == ("hold_payload", "too_large")


def test_a_write_over_the_op_cap_is_refused_naming_its_largest_field():
    # Given a heartbeat whose checkpoints are each within their cap but add up to more than one write may carry
    limits = Limits()
    jobs = {f"j{i}": {"checkpoint": b"x" * (limits.checkpoint_bytes_max - 100)} for i in range(8)}
    # When it is validated with its frame size / Then it is refused whole, on `jobs`
    with pytest.raises(InvalidArgument) as info:
        validate("heartbeat", {"worker_id": "w", "jobs": jobs}, limits, frame_bytes=8 * limits.checkpoint_bytes_max)
    assert (info.value.field, info.value.reason) == ("jobs", "too_large")
    # And reads are not bound by it (nothing of theirs reaches the raft log)
    assert validate("list_queues", {}, limits, frame_bytes=2 * limits.op_bytes_max)


def test_limits_keep_one_write_below_the_raft_entry_budget():
    from jobbie.actors.admission.core import AdmissionLimits
    from jobbie.actors.raft.actor import APPEND_ENTRIES_BATCH_BYTES

    lim = Limits()
    # Every single capped value fits in one write, a batch is one write,
    assert max(lim.payload_bytes_max, lim.result_bytes_max, lim.batch_bytes_max, lim.checkpoint_bytes_max) < lim.op_bytes_max
    # and the largest write, even inflated 1.5x by pysyncobj's pickling, stays below the size at
    # which pysyncobj would chunk it; admission's budget is well below that.
    assert lim.op_bytes_max * 1.5 + 4096 < APPEND_ENTRIES_BATCH_BYTES
    assert AdmissionLimits().entry_bytes_max * 2 <= APPEND_ENTRIES_BATCH_BYTES


def test_worker_splits_heartbeats_below_the_op_cap():
    from jobbie.transport.worker import HEARTBEAT_BYTES_MAX, heartbeat_parts

    entries = {f"j{i}": {"attempt": 1, "checkpoint": b"x" * 200_000} for i in range(10)}
    parts = heartbeat_parts(entries)
    assert sorted(j for p in parts for j in p) == sorted(entries)
    assert all(sum(200_020 for _ in p) <= HEARTBEAT_BYTES_MAX or len(p) == 1 for p in parts)
    assert HEARTBEAT_BYTES_MAX < Limits().op_bytes_max
    assert heartbeat_parts({"a": {"attempt": 1}, "b": {"attempt": 1}}) == [{"a": {"attempt": 1}, "b": {"attempt": 1}}]
