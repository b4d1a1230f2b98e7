"""The job lifecycle through a real node: every rule seen from a client."""
from __future__ import annotations

import threading
import time

import pytest

from jobbie.transport.errors import FailedPrecondition

from .conftest import wait_for

pytestmark = pytest.mark.timeout(60)


def test_enqueue_fetch_ack(client):
    # Given a job on a queue
    job_id = client.enqueue("emails", {"to": "a@example.com"})
    # When a worker fetches and acks it
    jobs = client.fetch("emails", "w1")
    assert [j["job_id"] for j in jobs] == [job_id]
    assert jobs[0]["payload"] == {"to": "a@example.com"} and jobs[0]["attempt"] == 1
    assert client.ack(job_id, attempt=1, result={"sent": True}) == {"state": "completed"}
    # Then it is completed with its result, and the queue counts agree
    job = client.get_job(job_id)
    assert job["state"] == "completed" and job["result"] == {"sent": True}
    assert job["worker_id"] == "w1" and job["started_at"] <= job["completed_at"]
    (row,) = client.queues()
    assert row["name"] == "emails" and row["completed"] == 1 and row["pending"] == 0 and row["active"] == 0


def test_fail_retries_with_backoff_then_dead(client):
    # Given a job with two retries and a fixed 300 ms backoff
    job_id = client.enqueue("q", 1, max_retries=2, backoff={"strategy": "fixed", "base_ms": 300, "max_ms": 300})
    (job,) = client.fetch("q", "w")
    for attempt in (1, 2):
        # When an attempt fails with attempts left
        failed_at = time.monotonic()
        answer = client.fail(job_id, f"boom {attempt}", attempt=attempt)
        # Then the job is retrying, not fetchable before its backoff, and fetchable after it
        assert answer["state"] == "retrying" and answer["attempts_remaining"] == 3 - attempt
        assert client.get_job(job_id)["state"] == "retrying"
        assert client.fetch("q", "w") == []
        again = client.fetch("q", "w", wait_ms=3000)
        assert time.monotonic() - failed_at >= 0.28
        assert [j["job_id"] for j in again] == [job_id] and again[0]["attempt"] == attempt + 1
    # When the last attempt fails, the job is dead with every error kept
    assert client.fail(job_id, "boom 3", attempt=3) == {"state": "dead", "next_attempt_at": None,
                                                        "attempts_remaining": 0}
    job = client.get_job(job_id)
    assert job["state"] == "dead" and job["attempt"] == 3 and job["last_error"] == "boom 3"
    assert [(e["attempt"], e["error"]) for e in job["errors"]] == [(1, "boom 1"), (2, "boom 2"), (3, "boom 3")]


@pytest.mark.parametrize("strategy,expected_ms", [("none", 0), ("fixed", 200), ("linear", 400),
                                                  ("exponential", 400)])
def test_backoff_strategies_set_next_attempt_at(client, strategy, expected_ms):
    job_id = client.enqueue("bo", 1, max_retries=5, backoff={"strategy": strategy, "base_ms": 200,
                                                             "max_ms": 10_000})
    for attempt in (1, 2):
        client.fetch("bo", "w", wait_ms=3000)
        answer = client.fail(job_id, "x", attempt=attempt)
    job = client.get_job(job_id)
    # next_attempt_at is the failure time (the job's failed_at) plus the strategy's delay for attempt 2
    assert answer["next_attempt_at"] - job["failed_at"] == expected_ms


def test_lease_expiry_returns_the_job_with_its_checkpoint(client):
    # Given a job leased for 1 s whose worker saved a checkpoint, then went silent
    job_id = client.enqueue("q", "work", max_retries=5)
    (job,) = client.fetch("q", "w1", lease_ms=1000)
    answer = client.heartbeat("w1", {job_id: {"attempt": 1, "checkpoint": {"step": 7}, "progress": 70}})
    assert answer[job_id]["status"] == "ok"
    # When the lease runs out
    again = client.fetch("q", "w2", wait_ms=5000, lease_ms=5000)
    # Then the job is fetched again, with the next attempt and the checkpoint kept
    assert [j["job_id"] for j in again] == [job_id]
    assert again[0]["attempt"] == 2 and again[0]["checkpoint"] == {"step": 7}
    # And the first worker has lost it
    assert client.heartbeat("w1", {job_id: {"attempt": 1}})[job_id]["status"] == "lost"
    with pytest.raises(FailedPrecondition) as err:
        client.ack(job_id, attempt=1)
    assert err.value.reason == "lease_lost"
    assert "lease expired" in [e["error"] for e in client.get_job(job_id)["errors"]]


def test_waiting_fetch_returns_soon_after_an_enqueue(node, client):
    # Given a worker long-polling an empty queue
    other = node.client()
    result = {}

    def fetch():
        result["jobs"] = other.fetch("lp", "w", wait_ms=10_000)
        result["at"] = time.monotonic()

    t = threading.Thread(target=fetch)
    t.start()
    time.sleep(0.5)  # let the fetch park at the gateway
    # When a job arrives on its queue
    sent_at = time.monotonic()
    job_id = client.enqueue("lp", "x")
    t.join(timeout=10)
    # Then the waiting fetch returns it within 50 ms of the enqueue
    assert [j["job_id"] for j in result["jobs"]] == [job_id]
    assert result["at"] - sent_at < 0.05, f"woke after {(result['at'] - sent_at) * 1000:.1f} ms"


def test_waiting_fetch_times_out_with_no_jobs(client):
    started = time.monotonic()
    assert client.fetch("empty", "w", wait_ms=300) == []
    assert 0.25 <= time.monotonic() - started < 2.0


def test_cancel_of_an_active_job_reaches_the_worker_on_its_next_heartbeat(client):
    job_id = client.enqueue("q", "long")
    (job,) = client.fetch("q", "w")
    assert client.heartbeat("w", {job_id: {"attempt": 1}})[job_id] == {"status": "ok", "budget_exceeded": False}
    # When an operator cancels the running job
    assert client.cancel(job_id) == {"state": "active", "cancel_requested": True}
    # Then the next heartbeat says cancel, and the worker's fail ends it cancelled
    assert client.heartbeat("w", {job_id: {"attempt": 1}})[job_id]["status"] == "cancel"
    assert client.fail(job_id, "cancelled by request", attempt=1)["state"] == "cancelled"
    assert client.get_job(job_id)["state"] == "cancelled"


def test_cancel_of_a_pending_job(client):
    job_id = client.enqueue("q", 1)
    assert client.cancel(job_id)["state"] == "cancelled"
    assert client.fetch("q", "w") == []


def test_priority_order_and_fifo_within_a_tier(client):
    # Given jobs of every tier, enqueued interleaved
    order = [("low", 1), ("normal", 1), ("critical", 1), ("high", 1), ("normal", 2), ("critical", 2),
             ("low", 2), ("high", 2)]
    ids = {}
    for priority, n in order:
        ids[(priority, n)] = client.enqueue("prio", f"{priority}-{n}", priority=priority)
    # When a worker takes them one at a time
    taken = [client.fetch("prio", "w")[0]["job_id"] for _ in order]
    # Then tiers come out best first, FIFO inside each tier
    expected = [ids[(p, n)] for p in ("critical", "high", "normal", "low") for n in (1, 2)]
    assert taken == expected


def test_fetch_several_queues_and_count(client):
    a = [client.enqueue("qa", i) for i in range(3)]
    b = [client.enqueue("qb", i, priority="high") for i in range(2)]
    jobs = client.fetch(["qa", "qb"], "w", count=4)
    assert [j["job_id"] for j in jobs] == b + a[:2]


def test_unique_key_inside_its_period(client):
    first = client.call("enqueue", queue="u", payload=1, unique_key="order-1", unique_period_ms=1500)
    second = client.call("enqueue", queue="u", payload=2, unique_key="order-1", unique_period_ms=1500)
    assert second["job_id"] == first["job_id"] and second["unique_existing"] is True
    assert first["unique_existing"] is False
    # After the period a new job is accepted
    time.sleep(1.6)
    third = client.call("enqueue", queue="u", payload=3, unique_key="order-1", unique_period_ms=1500)
    assert third["job_id"] != first["job_id"] and third["unique_existing"] is False


def test_delayed_job_is_not_fetchable_before_its_time(client):
    enqueued_at = time.time()
    job_id = client.enqueue("later", "x", delay_ms=800)
    assert client.get_job(job_id)["state"] == "scheduled"
    assert client.fetch("later", "w") == []
    jobs = client.fetch("later", "w", wait_ms=5000)
    assert [j["job_id"] for j in jobs] == [job_id]
    assert time.time() - enqueued_at >= 0.79


def test_paused_queue_hands_out_nothing_until_resumed(client):
    job_id = client.enqueue("pq", 1)
    client.pause("pq")
    assert client.fetch("pq", "w") == []
    assert [q["paused"] for q in client.queues() if q["name"] == "pq"] == [True]
    client.resume("pq")
    assert [j["job_id"] for j in client.fetch("pq", "w")] == [job_id]


def test_retry_and_delete(client):
    job_id = client.enqueue("rd", 1, max_retries=0)
    client.fetch("rd", "w")
    assert client.fail(job_id, "x", attempt=1)["state"] == "dead"
    assert client.retry(job_id) == {"state": "pending"}
    assert client.fetch("rd", "w")[0]["attempt"] == 1
    assert client.delete(job_id) == {}
    from jobbie.transport.errors import NotFound
    with pytest.raises(NotFound):
        client.get_job(job_id)


def test_expired_job_goes_dead(client):
    job_id = client.enqueue("ttl", 1, expire_after_ms=300, delay_ms=2000)
    job = wait_for(lambda: (j := client.get_job(job_id))["state"] == "dead" and j, 5, message="expiry")
    assert job["last_error"] == "expired"


def test_batch_callback_fires_once_when_the_last_member_finishes(client):
    answer = client.enqueue_batch([{"queue": "b", "payload": i} for i in range(3)],
                                  batch={"callback_queue": "b-done", "callback_payload": {"report": 1}})
    assert len(answer["job_ids"]) == 3 and answer["batch_id"].startswith("bat_")
    jobs = client.fetch("b", "w", count=3)
    client.ack(jobs[0]["job_id"], attempt=1)
    client.ack(jobs[1]["job_id"], attempt=1)
    assert client.fetch("b-done", "w") == []
    client.call("fail", job_id=jobs[2]["job_id"], attempt=1, error="x")  # retrying: not finished yet
    assert client.fetch("b-done", "w") == []
    client.cancel(jobs[2]["job_id"])
    (callback,) = client.fetch("b-done", "w", wait_ms=2000)
    assert callback["payload"] == {"batch_id": answer["batch_id"], "total": 3, "succeeded": 2, "failed": 1,
                                   "payload": {"report": 1}}
    assert client.fetch("b-done", "w", wait_ms=300) == []
