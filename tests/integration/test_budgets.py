"""Budgets, held jobs and the audit trail end to end on real nodes.

- A worker reports usage; `jobbie usage --by model` shows it; a `day` budget with `hold` holds
  the next job once spent; `jobbie held` lists it, `jobbie approve` releases it, `jobbie audit`
  shows both steps with who and when.
- Reservation: 50 concurrent workers on a $1 budget with $0.10 jobs spend at most $1.10, and the
  rest are held, not run.
- Pause: a running job whose budget runs out is told on heartbeat, is held with its checkpoint,
  and approval resumes it from there.
- Three nodes: kill -9 of the leader during budgeted work; afterwards spend counters,
  reservations and audit entries are identical on every node and the budget held.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError
from jobbie.transport.worker import Worker

from .cluster import make_cluster  # noqa: F401 (a fixture)
from .conftest import wait_for
from .helpers import FetchAckLoops, settled_queue


def cli(node, *args, ok=True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "jobbie.cli.main", *args, "--server", node.endpoint],
                         capture_output=True, text=True, timeout=60)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


class Workers(FetchAckLoops):
    """Worker loops that ack every job with `cost` USD of usage."""

    def __init__(self, endpoints: str, queue: str, n: int, cost: float, clients: int = 10, lease_ms: int = 30_000):
        super().__init__(endpoints, queue, n, clients=clients, lease_ms=lease_ms)
        self.cost = cost

    def handle(self, client, job):
        client.ack(job["job_id"], attempt=job["attempt"], usage={"cost_usd": self.cost})
        return job["job_id"]


# --------------------------------------------------------------------- the story a user follows
@pytest.mark.timeout(90)
def test_usage_budget_hold_approve_and_audit_from_the_command_line(node):
    client = node.client()
    cli(node, "price", "set", "model-a", "2", "8")
    cli(node, "budget", "set", "llm-daily", "--limit-usd", "0.5", "--window", "day", "--scope", "namespace",
        "--target", "ai", "--on-exceed", "hold", "--note", "team limit", "--actor", "ana")
    first = client.enqueue("ai.chat", {"n": 1})

    def handler(job):
        job.add_usage(input_tokens=200_000, output_tokens=25_000, model="model-a")  # $0.40 + $0.20
        return "ok"

    worker = Worker({"ai.chat": handler}, client=client, concurrency=1, wait_ms=200)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: client.get_job(first)["state"] == "completed", 20, message="first job done")
        # usage shows it, by model
        table = cli(node, "usage", "--by", "model").stdout
        assert "model-a" in table and "0.600000" in table, table
        # the budget is spent; the next job of the namespace is held, not run
        shown = json.loads(cli(node, "budget", "show", "llm-daily", "--output", "json").stdout)["budget"]
        assert shown["exceeded"] and shown["spent_usd"] == pytest.approx(0.6)
        second = client.enqueue("ai.chat", {"n": 2})
        assert client.get_job(second)["state"] == "held"
        held = cli(node, "held").stdout
        assert second in held and "budget:llm-daily" in held, held
        rows = json.loads(cli(node, "held", "--output", "json").stdout)["jobs"]
        assert [r["job_id"] for r in rows] == [second]
        # approve releases it, and the worker runs it (past the budget, this once)
        out = cli(node, "approve", second, "--note", "release is due", "--actor", "bob").stdout
        assert "approved 1 job" in out
        wait_for(lambda: client.get_job(second)["state"] == "completed", 20, message="approved job done")
    finally:
        worker.stop()
        t.join(10)
    # the audit trail shows both steps, with who and when
    events = json.loads(cli(node, "audit", "--job", second, "--output", "json").stdout)["events"]
    steps = [(e["kind"], e["who"]) for e in reversed(events)]
    assert steps == [("held", "server"), ("approved", "bob"), ("released", "bob")], steps
    assert all(abs(e["at"] - time.time() * 1000) < 60_000 for e in events)
    assert next(e for e in events if e["kind"] == "approved")["note"] == "release is due"
    table = cli(node, "audit").stdout
    assert "budget_set" in table and "ana" in table and "price_set" in table and "budget_exceeded" in table
    # and get_job carries the job's own entries
    assert [e["kind"] for e in client.get_job(second)["audit"]] == ["held", "approved", "released"]


@pytest.mark.timeout(60)
def test_bad_budget_input_is_answered_and_changes_nothing(node):
    client = node.client()
    bad = [
        ({"budget_id": "b", "scope": "queue", "limit_usd": 1}, "target", "missing_field"),
        ({"budget_id": "b", "scope": "global", "limit_usd": -1}, "limit_usd", "out_of_range"),
        ({"budget_id": "b", "scope": "global", "limit_usd": float("nan")}, "limit_usd", "out_of_range"),
        ({"budget_id": "b", "scope": "global"}, "limit_usd", "missing_field"),
        ({"budget_id": "b", "scope": "global", "limit_usd": 1, "window": "hours", "hours": 10_000}, "hours",
         "out_of_range"),
        ({"budget_id": "b", "scope": "global", "limit_usd": 1, "window": "week"}, "window", "invalid_choice"),
        ({"budget_id": "b", "scope": "tag", "target": "nokey", "limit_usd": 1}, "target", "invalid_name"),
        ({"budget_id": "job", "scope": "global", "limit_usd": 1}, "budget_id", "invalid_name"),
        ({"budget_id": "b", "scope": "global", "limit_usd": 1, "bogus": 1}, "bogus", "unknown_field"),
    ]
    for args, field, reason in bad:
        with pytest.raises(JobbieError) as info:
            client.call("set_budget", **args)
        assert (info.value.code, info.value.field, info.value.reason) == ("INVALID_ARGUMENT", field, reason), args
    assert client.list_budgets() == []
    with pytest.raises(JobbieError) as info:
        client.get_budget("nope")
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(JobbieError) as info:
        client.approve("job_nope")
    assert info.value.code == "NOT_FOUND"
    # the CLI refuses a bad amount before sending anything
    out = cli(node, "budget", "set", "b", "--limit-usd", "ten", ok=False)
    assert out.returncode == 2 and "--limit-usd" in out.stderr
    assert client.list_budgets() == []


@pytest.mark.timeout(60)
def test_approve_and_reject_by_queue_go_through_the_bulk_path(node):
    client = node.client()
    held = [client.enqueue("review.a", {"n": i}, hold=True) for i in range(5)]
    waiting = client.enqueue("review.a", {"n": 99})  # not held: skipped by the filter
    out = cli(node, "approve", "--queue", "review.a", "--note", "batch ok", "--actor", "cy").stdout
    assert "approved 5 job(s)" in out, out
    assert {client.get_job(j)["state"] for j in held} == {"pending"}
    assert client.get_job(waiting)["state"] == "pending"
    assert {e["who"] for e in client.audit(kind="approved")} == {"cy"}
    more = [client.enqueue("review.b", {"n": i}, hold=True) for i in range(3)]
    out = cli(node, "reject", "--queue", "review.b", "--note", "stale").stdout
    assert "rejected 3 job(s)" in out, out
    assert {client.get_job(j)["last_error"] for j in more} == {"rejected: stale"}


# --------------------------------------------------------------------- reservation
@pytest.mark.timeout(90)
def test_fifty_concurrent_workers_on_a_dollar_spend_at_most_one_job_more(node):
    client = node.client()
    client.set_budget("dollar", limit_usd=1.0, window="total", on_exceed="hold")
    ids = [client.enqueue("ai.res", {"n": i}) for i in range(40)]
    workers = Workers(node.endpoint, "ai.res", n=50, cost=0.10).start()
    try:
        final = wait_for(lambda: settled_queue(client, "ai.res"), 60, interval=0.1, message="every job completed or held")
    finally:
        workers.stop()
    assert not workers.errors, workers.errors[:3]
    b = client.get_budget("dollar")
    print(f"\nreservation: {final['completed']} completed, {final['held']} held, spent ${b['spent_usd']:.2f}")
    assert b["spent_usd"] <= 1.10 + 1e-9
    assert final["completed"] + final["held"] == len(ids) and final["held"] >= 29
    assert (b["reserved_usd"], b["running"]) == (0, 0)
    assert {client.get_job(j)["state"] for j in ids} <= {"completed", "held"}


# --------------------------------------------------------------------- pause, not kill
@pytest.mark.timeout(60)
def test_a_job_whose_budget_runs_out_is_paused_with_its_checkpoint_and_resumed(node):
    client = node.client()
    client.set_budget("tight", scope="queue", target="ai.pause", limit_usd=1.0, window="day")
    jid = client.enqueue("ai.pause", {"steps": 10}, max_retries=0)
    (job,) = client.fetch("ai.pause", "w1")
    # a heartbeat reports spend that reaches the limit: the answer says budget_exceeded
    beat = client.heartbeat("w1", {jid: {"attempt": 1, "usage": {"cost_usd": 1.0}, "checkpoint": {"step": 6}}})
    assert beat[jid] == {"status": "ok", "budget_exceeded": True}
    # the worker saves its checkpoint and fails the attempt: the job is held, the checkpoint kept
    out = client.fail(jid, "budget exceeded", attempt=1, checkpoint={"step": 7})
    assert out["state"] == "held" and out["attempts_remaining"] == 1
    held = client.get_job(jid)
    assert (held["state"], held["hold_reason"], held["checkpoint"]) == ("held", "budget:tight", {"step": 7})
    # approval resumes it from that checkpoint
    assert client.approve(jid, note="finish it")["state"] == "pending"
    (again,) = client.fetch("ai.pause", "w2")
    assert (again["job_id"], again["checkpoint"], again["attempt"]) == (jid, {"step": 7}, 2)
    client.ack(jid, attempt=2, usage={"cost_usd": 0.3})
    assert client.get_job(jid)["state"] == "completed"


@pytest.mark.timeout(60)
def test_the_python_worker_pauses_on_budget_exceeded_and_resumes_from_its_checkpoint(node):
    client = node.client()
    client.set_budget("steps", scope="queue", target="ai.steps", limit_usd=1.0, window="day")
    jid = client.enqueue("ai.steps", {"steps": 6})
    seen = []

    def handler(job):
        step = (job.checkpoint or {}).get("step", 0)
        seen.append((job.attempt, step))
        while step < job.payload["steps"]:
            step += 1
            job.add_usage(cost_usd=0.4)
            job.save_checkpoint({"step": step})
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and not job.budget_exceeded:
                time.sleep(0.02)  # a slow LLM call; heartbeats go out meanwhile
            job.check()  # raises BudgetExceeded once a heartbeat said so
        return {"steps": step}

    worker = Worker({"ai.steps": handler}, client=client, concurrency=1, wait_ms=200, heartbeat_ms=100)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        held = wait_for(lambda: (lambda j: j if j["state"] == "held" else None)(client.get_job(jid)), 20,
                        message="the job paused")
        assert held["hold_reason"] == "budget:steps"
        paused_at = held["checkpoint"]["step"]
        assert 3 <= paused_at < 6  # $0.40 a step: the third reaches $1.00
        assert client.get_budget("steps")["spent_usd"] == pytest.approx(0.4 * paused_at)
        client.approve(jid, note="finish it")
        wait_for(lambda: client.get_job(jid)["state"] == "completed", 30, message="resumed and completed")
    finally:
        worker.stop()
        t.join(10)
    assert seen == [(1, 0), (2, paused_at)]  # the second attempt started from the checkpoint
    assert client.get_job(jid)["result"] == {"steps": 6}


@pytest.mark.timeout(60)
def test_a_handler_can_hold_its_job_for_a_person(node):
    client = node.client()
    jid = client.enqueue("review", {"doc": "d1"})

    def handler(job):
        if job.attempt == 1:
            job.hold("needs a human look", {"summary": "draft"})
            return None
        return "published"

    worker = Worker({"review": handler}, client=client, concurrency=1, wait_ms=200)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: client.get_job(jid)["state"] == "held", 20, message="held by its handler")
        job = client.get_job(jid)
        assert (job["hold_reason"], job["hold_payload"]) == ("needs a human look", {"summary": "draft"})
        assert client.audit(job_id=jid)[0]["who"].startswith("worker:")
        client.approve(jid)
        wait_for(lambda: client.get_job(jid)["state"] == "completed", 20, message="published")
    finally:
        worker.stop()
        t.join(10)


# --------------------------------------------------------------------- three nodes
@pytest.mark.timeout(180)
def test_leader_kill9_during_budgeted_work_leaves_identical_budgets_everywhere(make_cluster):
    cluster = make_cluster()
    leader = cluster.start()
    client = cluster.client()
    client.set_budget("shared", limit_usd=3.0, window="total", on_exceed="hold")
    client.enqueue_batch([{"queue": "ai.ha", "payload": {"n": i}, "estimate_usd": 0.05} for i in range(80)])
    workers = Workers(cluster.endpoints, "ai.ha", n=10, cost=0.05, clients=5, lease_ms=5_000).start()
    try:
        wait_for(lambda: len(workers.acked) >= 20, 30, message="budgeted work under way")
        leader.kill9()
        survivors = [n for n in cluster.nodes if n is not leader]
        cluster.wait_leader(survivors, timeout=20.0)
        final = wait_for(lambda: settled_queue(client, "ai.ha"), 90, interval=0.2, message="every job completed or held after the failover")
    finally:
        workers.stop()
    cluster.restart(leader)
    digests = cluster.wait_converged(timeout=60.0)
    assert len(set(digests.values())) == 1, digests  # spend, reservations, audit: byte-identical
    views = []
    for n in cluster.nodes:
        with Client(n.endpoint, timeout=2.0, retry_for=10.0) as c:
            b = c.get_budget("shared")
            views.append((b["spent_usd"], b["reserved_usd"], b["running"], b["held"],
                          len(c.audit(budget_id="shared", limit=1000))))
    print(f"\nafter kill -9 of the leader: {final['completed']} completed, {final['held']} held; "
          f"per node (spent, reserved, running, held, audit events): {views}")
    assert len(set(views)) == 1, views
    spent, reserved, running, held_n, audits = views[0]
    assert spent <= 3.0 + 0.05 + 1e-9 and reserved == 0 and running == 0
    assert final["completed"] + final["held"] == 80 and held_n == final["held"]
    assert audits >= 2 + final["held"]  # budget_set, budget_exceeded, and one "held" per job it holds
