"""The http actor's pure parts: JSON rules, query strings, routes, statuses, OpenAPI, metrics, charts."""
from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobbie.actors.http import charts, core, metrics
from jobbie.actors.http.ui import Rates, Ui
from jobbie.transport import ops as opsdef
from jobbie.transport.errors import CODES, InvalidArgument


# ------------------------------------------------------------------ JSON bodies

def reason_of(data: bytes) -> str:
    with pytest.raises(InvalidArgument) as info:
        core.parse_body(data)
    return info.value.reason


def test_body_rules_match_the_payload_rules_of_the_zeromq_path():
    # Given bodies that break one rule each, then each is refused with its own reason.
    assert reason_of(b'{"a": 1, "a": 2}') == "malformed"  # duplicate key
    assert reason_of(b'{"a": NaN}') == "out_of_range"
    assert reason_of(b'{"a": Infinity}') == "out_of_range"
    assert reason_of(b'{"a": ' + b"[" * 80 + b"]" * 80 + b"}") == "too_deep"
    assert reason_of(b"[" * 100_000 + b"]" * 100_000) == "too_deep"  # the parser's own recursion limit
    assert reason_of(b'{"a": 18446744073709551616}') == "out_of_range"  # 2**64: msgpack cannot carry it
    assert reason_of(b'{"a": -9223372036854775809}') == "out_of_range"
    assert reason_of(b'{"a": ') == "malformed"
    assert reason_of(b'\xff\xfe') == "malformed"
    assert reason_of(b'{"$base64": "not base64!"}') == "wrong_type"
    assert reason_of(b'{"$base64": 5}') == "wrong_type"
    assert reason_of(b" " * (core.BODY_BYTES_MAX + 1)) == "too_large"


def test_body_values_that_pass():
    assert core.parse_body(b"") == {}
    assert core.parse_body(b"  \n") == {}
    assert core.parse_body(b'{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert core.parse_body(b'{"a": 18446744073709551615}') == {"a": 2**64 - 1}
    # 64 levels inside the payload, inside the args map: accepted.
    deep = b'{"payload": ' + b"[" * 64 + b"]" * 64 + b"}"
    assert core.parse_body(deep)["payload"] is not None


def test_binary_has_one_encoding_both_ways():
    value = {"blob": b"\x00\x01\xff", "nested": [b"ab"], "$base64": "kept: the map has another key"}
    text = core.dump_json(value)
    back = core.parse_body(text)
    assert back["blob"] == b"\x00\x01\xff" and back["nested"] == [b"ab"]
    assert back["$base64"] == "kept: the map has another key"
    assert json.loads(text)["blob"] == {"$base64": "AAH/"}


def test_dump_json_never_writes_nan():
    assert json.loads(core.dump_json({"x": float("nan"), "y": [float("inf")]})) == {"x": None, "y": [None]}


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("code,status", [("INVALID_ARGUMENT", 400), ("NOT_FOUND", 404),
                                         ("FAILED_PRECONDITION", 409), ("ALREADY_EXISTS", 409),
                                         ("RESOURCE_EXHAUSTED", 429), ("UNAVAILABLE", 503), ("INTERNAL", 500)])
def test_every_code_has_a_status(code, status):
    got, body, headers = core.error_answer({"code": code, "message": "m", "field": "f", "reason": "r"})
    assert got == status
    assert body == {"error": {"code": code, "reason": "r", "field": "f", "message": "m"}}
    assert ("Retry-After" in headers) == (status in (429, 503))


def test_every_protocol_code_is_mapped():
    assert set(CODES) == set(core.STATUS)


def test_retry_after_is_whole_seconds_rounded_up():
    _, body, headers = core.error_answer({"code": "UNAVAILABLE", "message": "m", "retry_after_ms": 1500})
    assert headers["Retry-After"] == "2" and body["error"]["retry_after_ms"] == 1500
    _, _, headers = core.error_answer({"code": "RESOURCE_EXHAUSTED", "message": "m", "retry_after_ms": 10})
    assert headers["Retry-After"] == "1"


# ------------------------------------------------------------------ query strings and routes

def test_query_values_are_typed_by_the_op_rows():
    args = core.args_from_query("search_jobs", [("queue", "emails"), ("state", "dead,retrying"), ("state", "held"),
                                                ("limit", "5"), ("has_errors", "true"), ("tag", "a=1,b=2"),
                                                ("nonsense", "x")])
    assert args == {"queue": "emails", "state": ["dead", "retrying", "held"], "limit": 5, "has_errors": True,
                    "tags": {"a": "1", "b": "2"}, "nonsense": "x"}  # unknown: left for the gateway to refuse


@pytest.mark.parametrize("items,field,reason", [
    ([("limit", "x")], "limit", "wrong_type"),
    ([("has_errors", "maybe")], "has_errors", "wrong_type"),
    ([("tag", "novalue")], "tags", "wrong_type"),
    ([("limit", "1"), ("limit", "2")], "limit", "conflicting_fields"),
])
def test_bad_query_values_name_the_field(items, field, reason):
    with pytest.raises(InvalidArgument) as info:
        core.args_from_query("search_jobs", items)
    assert (info.value.field, info.value.reason) == (field, reason)


def test_route_args_take_path_parameters_and_refuse_a_contradiction():
    route = next(r for r in core.ROUTES if r.op == "enqueue")
    assert core.route_args(route, {"queue": "q"}, {"payload": 1}) == {"payload": 1, "queue": "q"}
    assert core.route_args(route, {"queue": "q"}, {"payload": 1, "queue": "q"})["queue"] == "q"
    with pytest.raises(InvalidArgument) as info:
        core.route_args(route, {"queue": "q"}, {"queue": "other"})
    assert (info.value.field, info.value.reason) == ("queue", "conflicting_fields")
    with pytest.raises(InvalidArgument) as info:
        core.route_args(route, {"queue": "q"}, [1, 2])
    assert info.value.reason == "wrong_type"


def test_every_route_names_a_client_op_and_its_path_args_exist():
    for route in core.ROUTES:
        op = opsdef.OPS[route.op]
        assert op.path != "internal", route
        for _, arg in route.params:
            assert arg in op.arg_names, (route.path, arg)
        assert route.query == (route.method == "GET"), route.path


# ------------------------------------------------------------------ OpenAPI

def test_openapi_has_every_client_op_and_route():
    spec = core.openapi("1.2.3")
    json.dumps(spec)  # plain JSON
    for op in core.client_ops():
        body = spec["paths"][f"/v1/ops/{op.name}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert set(body["properties"]) == op.arg_names
        assert body["additionalProperties"] is False
    for route in core.ROUTES:
        assert route.method.lower() in spec["paths"][route.path.replace(":int", "")]
    assert "tick" not in {p.rsplit("/", 1)[-1] for p in spec["paths"]}
    enqueue = spec["paths"]["/v1/ops/enqueue"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert enqueue["required"] == ["queue", "payload"]
    assert enqueue["properties"]["priority"]["enum"] == list(opsdef.PRIORITIES)
    assert enqueue["properties"]["max_retries"]["maximum"] == 1000
    ids = [m["operationId"] for p in spec["paths"].values() for m in p.values() if "operationId" in m]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------ metrics

SNAPSHOT = {
    "cluster_status": {
        "node_id": "n1", "role": "leader", "leader": "127.0.0.1:1", "term": 3, "commit_index": 40,
        "applied_index": 39, "actors": [{"name": "raft", "pid": 1, "restarts": 2, "alive": True},
                                        {"name": "gateway", "pid": 2, "restarts": 0, "alive": False}],
        "gateway": {"pending": 1, "parked_fetches": 4, "invalid": 7, "timeouts": 1,
                    "answers": [["enqueue", "OK", 10], ["enqueue", "INVALID_ARGUMENT", 2]]},
        "pipeline": {"apply_ms": {"count": 3, "p50": 0.5, "p90": 0.9, "p99": 1.5, "max": 2.0},
                     "queue_wait_ms": {"count": 0, "p50": None, "p90": None, "p99": None, "max": None},
                     "admission": {"rejected": 5, "in_flight": 3}},
        "mirror": {"lag": 12, "stale": False}, "usage": {"lag": 0, "stale": True},
    },
    "list_queues": {"queues": [{"name": "emails", "paused": True, "pending": 3, "dead": 1}]},
    "usage_summary": {"groups": [{"key": {"queue": "llm", "model": "m1"}, "cost_usd": 0.25, "input_tokens": 1000,
                                  "output_tokens": 10, "cache_read_tokens": 0, "cache_write_tokens": 0}]},
    "list_budgets": {"budgets": [{"id": "daily", "limit_usd": 5.0, "spent_usd": 1.0, "reserved_usd": 0.5,
                                  "remaining_usd": 3.5}]},
}


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_names_and_labels_follow_prometheus_conventions():
    got = samples(metrics.exposition(SNAPSHOT).decode())
    assert got[("jobbie_up", ())] == 1
    assert got[("jobbie_jobs", (("queue", "emails"), ("state", "pending")))] == 3
    assert got[("jobbie_jobs", (("queue", "emails"), ("state", "completed")))] == 0
    assert got[("jobbie_queue_paused", (("queue", "emails"),))] == 1
    assert got[("jobbie_ops_total", (("code", "OK"), ("op", "enqueue")))] == 10
    assert got[("jobbie_ops_total", (("code", "INVALID_ARGUMENT"), ("op", "enqueue")))] == 2
    assert got[("jobbie_raft_term", ())] == 3
    assert got[("jobbie_raft_commit_index", ())] == 40
    assert got[("jobbie_raft_applied_index", ())] == 39
    assert got[("jobbie_raft_role", (("role", "leader"),))] == 1
    assert got[("jobbie_actor_restarts_total", (("actor", "raft"),))] == 2
    assert got[("jobbie_actor_up", (("actor", "gateway"),))] == 0
    assert got[("jobbie_mirror_lag_entries", ())] == 12
    assert got[("jobbie_usage_up", ())] == 0
    assert got[("jobbie_admission_rejected_total", ())] == 5
    assert got[("jobbie_pipeline_latency_ms", (("quantile", "0.99"), ("stage", "apply")))] == 1.5
    assert ("jobbie_pipeline_latency_ms", (("quantile", "0.99"), ("stage", "queue_wait"))) not in got
    assert got[("jobbie_cost_usd_total", (("model", "m1"), ("queue", "llm")))] == 0.25
    assert got[("jobbie_tokens_total", (("kind", "input"), ("model", "m1"), ("queue", "llm")))] == 1000
    assert got[("jobbie_budget_remaining_usd", (("budget", "daily"),))] == 3.5
    assert got[("jobbie_budget_reserved_usd", (("budget", "daily"),))] == 0.5


def test_metrics_when_sources_do_not_answer():
    got = samples(metrics.exposition({"cluster_status": None, "list_queues": None, "usage_summary": None,
                                      "list_budgets": None}).decode())
    assert got[("jobbie_up", ())] == 0
    assert got[("jobbie_scrape_source_up", (("source", "usage_summary"),))] == 0
    assert not any(name == "jobbie_jobs" for name, _ in got)


# ------------------------------------------------------------------ charts and the UI's pure parts

def test_charts_escape_labels_and_scale_to_the_largest():
    svg = charts.hbars([("<script>", 2.0), ("b", 1.0)], title="t")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    widths = [float(part.split('"')[0]) for part in svg.split('width="')[2:]]
    assert widths[0] == pytest.approx(2 * widths[1])
    assert "No usage" in charts.vbars([])
    assert svg.count("<rect") == 2 and charts.vbars([("a", 0.0), ("b", 3.0)]).count("<rect") == 2


def test_rates_from_two_samples():
    rates = Rates()
    assert rates.per_second() is None
    rates.add(10.0, {"gateway": {"answers": [["enqueue", "OK", 100], ["ack", "OK", 50], ["fail", "UNAVAILABLE", 9]]}})
    rates.add(20.0, {"gateway": {"answers": [["enqueue", "OK", 300], ["enqueue_batch", "OK", 10],
                                             ["ack", "OK", 150], ["fail", "OK", 5]]}})
    got = rates.per_second()
    assert got["enqueued"] == 21.0 and got["completed"] == 10.0 and got["failed"] == 0.5 and got["window_s"] == 10


def test_ui_forms_become_ops():
    ui = Ui(link=None, version="x")
    assert ui.action("retry", {}, {"job_id": ["j1"]})[:2] == ("retry_job", {"job_id": "j1"})
    assert ui.action("approve", {"note": "ok"}, {"job_id": ["a", "b"]})[:2] == (
        "approve_job", {"job_ids": ["a", "b"], "actor": "ui", "note": "ok"})
    assert ui.action("throttle", {"queue": "q", "rate": "5", "period_ms": "1000"}, {})[:2] == (
        "set_throttle", {"queue": "q", "rate": 5, "period_ms": 1000})
    assert ui.action("throttle", {"queue": "q", "rate": ""}, {})[0] == "remove_throttle"
    assert ui.action("concurrency", {"queue": "q", "max": ""}, {})[1] == {"queue": "q", "max": None}
    op, args, _ = ui.action("bulk_retry", {"filter": json.dumps([["queue", "q"], ["state", "dead"]])}, {})
    assert (op, args) == ("bulk", {"action": "retry", "filter": {"queue": "q", "state": ["dead"]}})
    for action, one, form in (("retry", {}, {}), ("approve", {}, {}), ("concurrency", {"max": "x"}, {}),
                              ("bulk_retry", {"filter": "[]"}, {}), ("explode", {}, {})):
        with pytest.raises(ValueError):
            ui.action(action, one, form)
