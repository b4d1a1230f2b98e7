"""The JSON API against a real node: every resource route, every error mapping, bad input of every kind.

One node (usage actor off, so its ops answer 503) serves the whole module; the tests use their own
queue names so they do not see each other's jobs.
"""
from __future__ import annotations

import re
import subprocess
import uuid

import httpx
import pytest

from jobbie.transport.client import Client

from .conftest import Node, wait_for

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def api_node(tmp_path_factory):
    node = Node(tmp_path_factory.mktemp("http") / "node", ["--usage=false"], http=True)
    node.start()
    wait_for(lambda: _up(node.http_url), 15, message="the http actor")
    yield node
    node.stop(timeout=15)
    node.kill_everything()


def _up(url):
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def http(api_node):
    with httpx.Client(base_url=api_node.http_url, timeout=15) as c:
        yield c


@pytest.fixture(scope="module")
def zmq(api_node):
    c = Client(api_node.endpoint, timeout=5, retry_for=0)
    yield c
    c.close()


def queue_name(prefix="q"):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_of(response):
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# --------------------------------------------------------------------------- resource routes

def test_enqueue_get_cancel_retry_delete_round_trip(http):
    q = queue_name()
    r = http.post(f"/v1/queues/{q}/jobs", json={"payload": {"to": "ada", "blob": {"$base64": "AAE="}},
                                                "priority": "high", "tags": {"team": "a"}})
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    assert r.json()["state"] == "pending"
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["payload"] == {"to": "ada", "blob": {"$base64": "AAE="}}  # bytes came back in the same encoding
    assert (job["queue"], job["priority"], job["tags"]) == (q, "high", {"team": "a"})
    assert http.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    assert http.post(f"/v1/jobs/{job_id}/retry").json()["state"] == "pending"
    assert http.delete(f"/v1/jobs/{job_id}").status_code == 200
    assert http.get(f"/v1/jobs/{job_id}").status_code == 404


def test_queue_routes(http):
    q = queue_name()
    http.post(f"/v1/queues/{q}/jobs", json={"payload": 1})
    assert http.post(f"/v1/queues/{q}/pause").status_code == 200
    row = next(x for x in http.get("/v1/queues").json()["queues"] if x["name"] == q)
    assert row["paused"] is True and row["pending"] == 1
    assert http.post(f"/v1/queues/{q}/resume").status_code == 200
    assert http.put(f"/v1/queues/{q}/concurrency", json={"max": 3}).status_code == 200
    assert http.put(f"/v1/queues/{q}/throttle", json={"rate": 10, "period_ms": 1000}).status_code == 200
    row = next(x for x in http.get("/v1/queues").json()["queues"] if x["name"] == q)
    assert (row["paused"], row["max_concurrency"], row["throttle"]["rate"]) == (False, 3, 10)
    assert http.delete(f"/v1/queues/{q}/throttle").status_code == 200


def test_search_bulk_and_listings(http):
    q = queue_name()
    ids = [http.post(f"/v1/queues/{q}/jobs", json={"payload": {"n": i}, "tags": {"k": "v" if i % 2 else "w"}})
           .json()["job_id"] for i in range(4)]
    found = http.get("/v1/search", params={"queue": q, "tag": "k=v", "state": "pending,held", "limit": 10}).json()
    assert sorted(j["id"] for j in found["jobs"]) == sorted(ids[1::2]) and found["total"] == 2
    bulk = http.post("/v1/bulk", json={"action": "cancel", "filter": {"queue": q}}).json()
    status = wait_for(lambda: (s := http.get(f"/v1/bulk/{bulk['bulk_id']}").json()).get("done") and s, 15,
                      message="the bulk run")
    assert status["done"]
    cancelled = http.get("/v1/search", params={"queue": q, "state": "cancelled"}).json()
    assert cancelled["total"] == 4
    for path in ("/v1/workers", "/v1/dead", "/v1/schedules", "/v1/prices", "/v1/budgets", "/v1/audit", "/v1/held"):
        assert http.get(path).status_code == 200, path
    assert http.get("/v1/cluster/status").json()["role"] == "leader"
    assert http.post("/v1/admin/mirror/rebuild").status_code == 200


def test_held_jobs_approve_reject_and_budgets(http):
    q = queue_name("review")
    a = http.post(f"/v1/queues/{q}/jobs", json={"payload": 1, "hold": True, "hold_reason": "look first"}).json()
    b = http.post(f"/v1/queues/{q}/jobs", json={"payload": 2, "hold": True}).json()
    held = http.get("/v1/held", params={"queue": q}).json()["jobs"]
    assert {j["job_id"] for j in held} == {a["job_id"], b["job_id"]}
    assert http.post(f"/v1/jobs/{a['job_id']}/approve", json={"note": "fine"}).json()["state"] == "pending"
    assert http.post(f"/v1/jobs/{b['job_id']}/reject", json={"note": "no"}).json()["state"] == "cancelled"
    audit = http.get("/v1/audit", params={"job_id": a["job_id"]}).json()["events"]
    assert any(e["kind"] == "approved" and e.get("note") == "fine" for e in audit), audit
    budget = f"b-{uuid.uuid4().hex[:6]}"
    assert http.put(f"/v1/budgets/{budget}", json={"scope": "queue", "target": q, "limit_usd": 5,
                                                   "window": "day"}).status_code == 200
    got = http.get(f"/v1/budgets/{budget}").json()["budget"]
    assert got["limit_usd"] == 5.0 and got["remaining_usd"] == 5.0
    assert http.delete(f"/v1/budgets/{budget}").status_code == 200
    assert http.get(f"/v1/budgets/{budget}").status_code == 404


def test_agent_iterations_and_replay(http, zmq):
    q = queue_name("agent")
    job_id = http.post(f"/v1/queues/{q}/jobs", json={"payload": {"goal": "x"},
                                                    "agent": {"max_iterations": 5}}).json()["job_id"]
    job = zmq.fetch([q], "w-http")[0]
    zmq.ack(job_id, attempt=job["attempt"], result={"step": 1}, checkpoint={"n": 1}, agent_status="continue")
    its = http.get(f"/v1/jobs/{job_id}/iterations").json()["iterations"]
    assert [i["n"] for i in its] == [1]
    one = http.get(f"/v1/jobs/{job_id}/iterations/1").json()["iteration"]
    assert one["checkpoint"] == {"n": 1}
    replay = http.post(f"/v1/jobs/{job_id}/replay", json={"from_iteration": 1}).json()
    assert http.get(f"/v1/jobs/{replay['job_id']}").json()["agent"]["max_iterations"] == 5


def test_every_op_through_the_generic_route(http, zmq):
    q = queue_name()
    r = http.post("/v1/ops/enqueue", json={"queue": q, "payload": [1, 2]})
    assert r.status_code == 200
    assert http.post("/v1/ops/get_job", json={"job_id": r.json()["job_id"]}).json()["payload"] == [1, 2]
    fetched = http.post("/v1/ops/fetch", json={"queues": [q], "worker_id": "http-worker"}).json()["jobs"]
    assert len(fetched) == 1
    done = http.post("/v1/ops/ack", json={"job_id": fetched[0]["job_id"], "attempt": fetched[0]["attempt"],
                                          "result": {"ok": True}})
    assert done.json()["state"] == "completed"
    assert zmq.get_job(fetched[0]["job_id"])["result"] == {"ok": True}
    assert http.post("/v1/ops/cluster_status").json()["role"] == "leader"


def test_openapi_health_and_readiness(http):
    spec = http.get("/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/v1/ops/enqueue" in spec["paths"]
    assert http.get("/healthz").json() == {"status": "up"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


# --------------------------------------------------------------------------- errors and bad input

def test_status_codes_for_each_error_code(http, zmq):
    q = queue_name()
    # 400
    r = http.post(f"/v1/queues/{q}/jobs", json={"payload": 1, "priority": "urgent"})
    assert r.status_code == 400 and error_of(r)["reason"] == "invalid_choice" and error_of(r)["field"] == "priority"
    # 404
    r = http.get("/v1/jobs/job_nope")
    assert r.status_code == 404 and error_of(r) == {"code": "NOT_FOUND", "reason": None, "field": "job_id",
                                                    "message": "job_id job_nope not found"}
    assert http.get("/v1/no/such/route").status_code == 404
    # 409
    job_id = http.post(f"/v1/queues/{q}/jobs", json={"payload": 1}).json()["job_id"]
    r = http.post(f"/v1/jobs/{job_id}/retry")
    assert r.status_code == 409 and error_of(r)["reason"] == "wrong_state"
    # 429 with Retry-After: a spent budget that rejects
    capped = queue_name("capped")
    zmq.call("set_budget", budget_id=f"cap-{capped}", scope="queue", target=capped, limit_usd=0.0,
             window="day", on_exceed="reject")
    r = http.post(f"/v1/queues/{capped}/jobs", json={"payload": 1})
    assert r.status_code == 429, r.text
    assert error_of(r)["reason"] == "budget_exceeded" and int(r.headers["retry-after"]) >= 1
    # 503 with Retry-After: the usage actor is off on this node
    r = http.get("/v1/usage")
    assert r.status_code == 503 and error_of(r)["reason"] == "usage_disabled" and r.headers["retry-after"]


BAD_INPUTS = [
    ("enqueue", {"queue": "q", "payload": 1, "priorty": "high"}),        # unknown field
    ("enqueue", {"queue": "q", "payload": 1, "max_retries": "3"}),       # wrong type
    ("enqueue", {"queue": "q", "payload": 1, "max_retries": 10 ** 6}),   # out of range
    ("enqueue", {"queue": "_q", "payload": 1}),                          # invalid name
    ("enqueue", {"payload": 1}),                                          # missing field
    ("enqueue", {"queue": "q", "payload": 1, "run_at": 1, "delay_ms": 5}),  # conflicting
    ("enqueue", {"queue": "q", "payload": 1, "tags": {"k": 5}}),         # wrong type, nested field
    ("enqueue", {"queue": "q", "payload": "x" * (1024 * 1024 + 10)}),    # too large
    ("fetch", {"queues": [], "worker_id": "w"}),
    ("heartbeat", {"worker_id": "w", "jobs": {"j": {"progress": 1, "nope": 2}}}),
    ("search_jobs", {"state": ["nonsense"]}),
    ("bulk", {"action": "retry"}),
    ("nonexistent_op", {}),
    ("tick", {}),
]


def raw_request(endpoint: str, op: str, args: dict) -> dict:
    """One request frame sent as is over ZeroMQ (the Python client would refuse the oversized one itself)."""
    import zmq as pyzmq
    from jobbie.transport import codec
    sock = pyzmq.Context.instance().socket(pyzmq.DEALER)
    sock.setsockopt(pyzmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(codec.encode({"id": 7, "op": op, "args": args}))
        assert sock.poll(10_000), "no reply over ZeroMQ"
        return codec.decode(sock.recv())
    finally:
        sock.close()


@pytest.mark.parametrize("op,args", BAD_INPUTS, ids=[f"{o}-{i}" for i, (o, _) in enumerate(BAD_INPUTS)])
def test_bad_input_gets_the_same_field_and_reason_as_over_zeromq(api_node, http, op, args):
    over_zmq = raw_request(api_node.endpoint, op, args)["err"]
    r = http.post(f"/v1/ops/{op}", json=args)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert (err["code"], err["field"], err["reason"]) == (over_zmq["code"], over_zmq.get("field"),
                                                          over_zmq.get("reason"))


@pytest.mark.parametrize("body,headers,status,reason", [
    (b'{"queue": "q", "payload": 1', JSON, 400, "malformed"),
    (b'{"queue": "q", "queue": "r", "payload": 1}', JSON, 400, "malformed"),
    (b'{"queue": "q", "payload": NaN}', JSON, 400, "out_of_range"),
    (b'{"queue": "q", "payload": 99999999999999999999999}', JSON, 400, "out_of_range"),
    (b'{"queue": "q", "payload": ' + b"[" * 70 + b"]" * 70 + b"}", JSON, 400, "too_deep"),
    (b'[1, 2]', JSON, 400, "wrong_type"),
    (b'{"queue": "q", "payload": 1}', {"content-type": "text/plain"}, 400, "malformed"),
    (b"x" * (9 * 1024 * 1024), JSON, 413, "too_large"),
])
def test_malformed_bodies(http, body, headers, status, reason):
    r = http.post("/v1/ops/enqueue", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert error_of(r)["reason"] == reason


def test_bad_query_strings_and_path_contradictions(http):
    r = http.get("/v1/search", params={"queue": "q", "limit": "many"})
    assert r.status_code == 400 and (error_of(r)["field"], error_of(r)["reason"]) == ("limit", "wrong_type")
    r = http.get("/v1/search", params={"queue": "q", "colour": "red"})
    assert r.status_code == 400 and (error_of(r)["field"], error_of(r)["reason"]) == ("colour", "unknown_field")
    r = http.post("/v1/queues/a/jobs", json={"queue": "b", "payload": 1})
    assert r.status_code == 400 and (error_of(r)["field"], error_of(r)["reason"]) == ("queue", "conflicting_fields")


def test_the_node_keeps_serving_after_bad_input(http, zmq):
    for body in (b"{", b"\xff" * 100, b'{"a":' * 5000):
        http.post("/v1/ops/enqueue", content=body, headers=JSON)
    assert http.get("/healthz").status_code == 200
    assert http.post(f"/v1/queues/{queue_name()}/jobs", json={"payload": 1}).status_code == 200
    assert zmq.call("cluster_status")["role"] == "leader"


def test_metrics_endpoint(http, zmq):
    q = queue_name("metrics")
    http.post(f"/v1/queues/{q}/jobs", json={"payload": 1})
    text = http.get("/metrics").text
    assert re.search(rf'^jobbie_jobs\{{queue="{q}",state="pending"\}} 1\.0$', text, re.M), text[:2000]
    assert re.search(r'^jobbie_ops_total\{code="OK",op="enqueue"\} \d+', text, re.M)
    assert re.search(r'^jobbie_raft_role\{role="leader"\} 1\.0$', text, re.M)
    assert re.search(r'^jobbie_http_request_duration_seconds_bucket\{le="0\.005",method="POST",'
                     r'route="/v1/queues/\{queue\}/jobs"\}', text, re.M)
    assert 'jobbie_scrape_source_up{source="usage_summary"} 0.0' in text  # usage actor off here


def test_curl_examples_in_the_operations_doc_work(api_node):
    """Every `curl` line of docs/operations.md's HTTP section, run as written against this node's port."""
    import pathlib
    doc = (pathlib.Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = doc.split("<!-- http-examples -->")[1].split("<!-- /http-examples -->")[0]
    script = "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))
    assert script.count("curl") >= 6, "the examples section lost its curl lines"
    port = api_node.http_url.rsplit(":", 1)[1]
    script = "set -euo pipefail\n" + script.replace("127.0.0.1:7780", f"127.0.0.1:{port}")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"error"' not in proc.stdout.replace('"error":null', ""), proc.stdout
    assert "jobbie_jobs" in proc.stdout


def _path(route) -> str:
    values = {"queue": "bad-input-q", "job_id": "job_nope", "n": "1", "budget_id": "nope", "bulk_id": "nope"}
    path = route.path.replace("{n:int}", "{n}")
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


@pytest.mark.parametrize("route", [r for r in __import__("jobbie.actors.http.core", fromlist=["ROUTES"]).ROUTES],
                         ids=lambda r: f"{r.method} {r.path}")
def test_bad_input_on_every_resource_route(http, route):
    path = _path(route)
    if route.query:
        # An unknown query parameter and a mistyped one (where the op has a typed arg)
        r = http.request(route.method, path, params={"zzz_unknown": "1"})
        assert r.status_code == 400 and (error_of(r)["field"], error_of(r)["reason"]) == ("zzz_unknown",
                                                                                            "unknown_field")
        return
    for body, status, reason, field in ((b'{"a": ', 400, "malformed", None),
                                        (b'{"zzz_unknown": 1}', 400, "unknown_field", "zzz_unknown"),
                                        (b'"a string"', 400, "wrong_type", "args"),
                                        (b" " * (9 * 1024 * 1024), 413, "too_large", None)):
        r = http.request(route.method, path, content=body, headers=JSON)
        assert r.status_code == status, (route.path, body[:20], r.text)
        err = error_of(r)
        assert err["reason"] == reason, (route.path, err)
        if field:
            assert err["field"] == field, (route.path, err)
    assert http.get("/healthz").status_code == 200
