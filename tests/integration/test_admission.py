"""Admission through a real node: overload answers with retry hints, and per-client limits."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def small_node(node_factory):
    return node_factory("small", extra_args=["--inflight-max", "400", "--inflight-per-client-max", "20"])


def test_a_flooding_client_gets_resource_exhausted_with_a_retry_hint(small_node):
    flood = small_node.client(client_key="flood")
    # Given one client pipelining far more requests than its in-flight limit
    futures = [flood.submit("enqueue", {"queue": "f", "payload": i}) for i in range(400)]
    replies = [f.result(timeout=30) for f in futures]
    refused = [r["err"] for r in replies if "err" in r]
    accepted = [r["ok"]["job_id"] for r in replies if "ok" in r]
    # Then some are refused as overload, each with a retry hint, and nothing else goes wrong
    assert refused and accepted
    assert {e["code"] for e in refused} == {"RESOURCE_EXHAUSTED"}
    assert all(e["reason"] == "overloaded" and 5 <= e["retry_after_ms"] <= 5000 for e in refused)
    # And every accepted job exists, and only those
    (row,) = [q for q in flood.queues() if q["name"] == "f"]
    assert row["pending"] == len(accepted)
    assert {flood.get_job(j)["state"] for j in accepted[:20]} == {"pending"}


def test_the_client_library_rides_out_overload_by_honouring_the_hint(small_node):
    import threading
    client = small_node.client(client_key="patient", retry_for=60)
    ids, errors = [], []

    def producer(n):
        try:
            for i in range(50):
                ids.append(client.enqueue("p", {"t": n, "i": i}))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=80)
    assert not errors
    assert len(ids) == len(set(ids)) == 1500
    (row,) = [q for q in client.queues() if q["name"] == "p"]
    assert row["pending"] == 1500  # retried with the same request_id: applied once each
    status = client.status()
    assert status["pipeline"]["admission"]["limits"]["inflight_per_client_max"] == 20


def test_a_light_client_is_not_refused_while_another_floods(small_node):
    flood = small_node.client(client_key="flood")
    light = small_node.client(client_key="light", retry_for=0)
    futures = [flood.submit("enqueue", {"queue": "f", "payload": i}) for i in range(300)]
    # While the flood is in flight, the light client's own requests are admitted
    for i in range(10):
        assert light.call("enqueue", queue="light", payload=i)["state"] == "pending"
    for f in futures:
        f.result(timeout=30)
