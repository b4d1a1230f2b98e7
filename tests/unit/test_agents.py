"""Agent loops (storage/agents.py) on a real LMDB store: iterations, their records, guardrails,
loop detection, approvals that resume an agent, iteration time-outs, replay, and bad input.
"""
from __future__ import annotations

import pytest

from jobbie.storage import reads
from jobbie.storage.states import ACTIVE, CANCELLED, COMPLETED, DEAD, HELD, PENDING

from .conftest import T0


def agent_job(h, queue="ai.agent", **agent):
    return h.enqueue(queue=queue, payload={"goal": "g"}, agent=agent)


def step(h, jid, status="continue", checkpoint=None, result=None, cost=None, now=T0, worker="w1", **extra):
    """Fetch the job's next iteration and ack it; returns (fetched job, ack answer)."""
    (job,) = h.fetch(now=now, queues=("ai.agent",), worker_id=worker)
    assert job["job_id"] == jid
    args = {"job_id": jid, "attempt": job["attempt"], "agent_status": status, **extra}
    if checkpoint is not None:
        args["checkpoint"] = checkpoint
    if result is not None:
        args["result"] = result
    if cost is not None:
        args["usage"] = {"cost_usd": cost}
    return job, h.run("ack", args, now=now)


def iterations(h, jid, full=False):
    with h.store.begin() as txn:
        return reads.READERS["list_iterations"](txn, h.dbs, {"job_id": jid, "full": full})["iterations"]


def test_continue_records_the_iteration_and_hands_out_the_next_with_the_checkpoint(h):
    jid = agent_job(h, max_iterations=10)
    job, ack = step(h, jid, checkpoint={"step": 1}, result="thought 1", cost=0.01)
    assert job["iteration"] == 1 and job["approval"] is None
    assert ack == {"ok": {"state": PENDING, "iteration": 2}}
    job, ack = step(h, jid, checkpoint={"step": 2}, result="thought 2", cost=0.02)
    assert (job["iteration"], job["checkpoint"], job["attempt"]) == (2, {"step": 1}, 2)
    job, ack = step(h, jid, status="done", result="answer")
    assert job["checkpoint"] == {"step": 2} and ack["ok"]["state"] == COMPLETED
    recs = iterations(h, jid)
    assert [(r["n"], r["status"], r["result"]) for r in recs] == [(1, "continue", "thought 1"),
                                                                  (2, "continue", "thought 2"), (3, "done", "answer")]
    assert [r["cost_usd"] for r in recs] == [0.01, 0.02, 0.0]
    assert all(r["worker_id"] == "w1" and r["attempts"] == 1 for r in recs)
    assert "checkpoint" not in recs[0] and iterations(h, jid, full=True)[0]["checkpoint"] == {"step": 1}
    with h.store.begin() as txn:
        one = reads.READERS["get_iteration"](txn, h.dbs, {"job_id": jid, "n": 2})["iteration"]
    assert one["checkpoint"] == {"step": 2}
    h.assert_consistent()


def test_iterations_do_not_spend_retries_but_failed_attempts_do(h):
    jid = h.enqueue(queue="ai.agent", payload={}, agent={"max_iterations": 50}, max_retries=1)
    for i in range(5):
        step(h, jid, checkpoint={"i": i}, result=i)
    # iteration 6 fails once: retried (a retry left), the same iteration again
    (job,) = h.fetch(queues=("ai.agent",))
    assert job["iteration"] == 6
    assert h.ok("fail", {"job_id": jid, "attempt": job["attempt"], "error": "tool down"})["state"] == "retrying"
    h.tick(now=T0 + 10 * 60_000)
    (job,) = h.fetch(now=T0 + 10 * 60_000, queues=("ai.agent",))
    assert job["iteration"] == 6
    rec = iterations(h, jid)[-1]
    assert (rec["n"], rec["status"], rec["error"]) == (6, "failed", "tool down")
    # a second failure of the same iteration spends its last retry
    assert h.ok("fail", {"job_id": jid, "attempt": job["attempt"], "error": "still down"},
                now=T0 + 10 * 60_000)["state"] == DEAD


def test_max_iterations_holds_the_job_and_extend_lets_it_go_on(h):
    jid = agent_job(h, max_iterations=2)
    step(h, jid, checkpoint={"i": 1}, result=1)
    _, ack = step(h, jid, checkpoint={"i": 2}, result=2)
    assert ack["ok"]["state"] == HELD
    assert h.raw_job(jid)["hold_reason"] == "max_iterations"
    err = h.run("approve_job", {"job_id": jid, "extend": {"usd": 1}})["err"]
    assert (err["field"], err["reason"]) == ("extend", "conflicting_fields")
    assert h.ok("approve_job", {"job_id": jid, "extend": {"iterations": 2}, "note": "two more"})["state"] == PENDING
    assert h.raw_job(jid)["agent"]["max_iterations"] == 4
    job, ack = step(h, jid, checkpoint={"i": 3}, result=3)
    assert job["iteration"] == 3 and job["approval"]["decision"] == "approved" and ack["ok"]["state"] == PENDING
    _, ack = step(h, jid, checkpoint={"i": 4}, result=4)
    assert ack["ok"]["state"] == HELD  # at 4 again


def test_approval_without_extend_allows_exactly_one_more_iteration(h):
    jid = agent_job(h, max_iterations=1)
    _, ack = step(h, jid, checkpoint=1, result=1)
    assert ack["ok"]["state"] == HELD
    h.ok("approve_job", {"job_id": jid})
    _, ack = step(h, jid, checkpoint=2, result=2)
    assert ack["ok"]["state"] == PENDING
    _, ack = step(h, jid, checkpoint=3, result=3)
    assert ack["ok"]["state"] == HELD


def test_max_cost_over_all_iterations_holds_the_job(h):
    jid = agent_job(h, max_cost_usd=0.05)
    step(h, jid, checkpoint=1, result=1, cost=0.03)
    _, ack = step(h, jid, checkpoint=2, result=2, cost=0.03)
    assert ack["ok"]["state"] == HELD and h.raw_job(jid)["hold_reason"] == "max_cost"
    # extend raises the cap; the next fetch reserves against it
    h.ok("approve_job", {"job_id": jid, "extend": {"usd": 0.05}})
    assert h.raw_job(jid)["agent"]["max_cost_usd"] == pytest.approx(0.10)
    job, ack = step(h, jid, status="done", cost=0.01)
    assert ack["ok"]["state"] == COMPLETED


def test_max_cost_is_checked_at_heartbeat_too(h):
    jid = agent_job(h, max_cost_usd=0.05)
    (job,) = h.fetch(queues=("ai.agent",))
    beat = h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {"usage": {"cost_usd": 0.06}, "checkpoint": 9}}})
    assert beat["jobs"][jid]["budget_exceeded"] is True
    assert h.ok("fail", {"job_id": jid, "error": "paused"})["state"] == HELD
    assert (h.raw_job(jid)["hold_reason"], h.raw_job(jid)["checkpoint"]) == ("max_cost", 9)


def test_a_job_that_repeats_itself_is_held_and_extend_lets_it_go_on(h):
    jid = agent_job(h, loop_window=3)
    step(h, jid, checkpoint={"s": "same"}, result="same")
    step(h, jid, checkpoint={"s": "same"}, result="same")
    _, ack = step(h, jid, checkpoint={"s": "same"}, result="same")
    assert ack["ok"]["state"] == HELD and h.raw_job(jid)["hold_reason"] == "loop_detected"
    h.ok("approve_job", {"job_id": jid, "extend": {"iterations": 1}, "note": "it is fine"})
    _, ack = step(h, jid, checkpoint={"s": "same"}, result="same")
    assert ack["ok"]["state"] == PENDING  # the window starts over
    _, ack = step(h, jid, checkpoint={"s": "other"}, result="other")
    assert ack["ok"]["state"] == PENDING


def test_different_iterations_are_not_a_loop(h):
    jid = agent_job(h)
    for i in range(10):
        _, ack = step(h, jid, checkpoint={"i": i}, result="same text")
        assert ack["ok"]["state"] == PENDING


def test_hold_then_approval_hands_the_decision_to_the_next_iteration(h):
    jid = agent_job(h)
    _, ack = step(h, jid, status="hold", checkpoint={"plan": "rm -rf"}, hold_reason="tool call needs approval",
                  hold_payload={"tool": "shell", "cmd": "rm -rf /tmp/x"})
    assert ack["ok"]["state"] == HELD
    job = h.raw_job(jid)
    assert (job["hold_reason"], job["hold_payload"]["tool"]) == ("tool call needs approval", "shell")
    h.ok("approve_job", {"job_id": jid, "note": "ok, only /tmp", "payload": {"allow": True}, "actor": "ana"})
    (again,) = h.fetch(queues=("ai.agent",))
    assert again["iteration"] == 2 and again["checkpoint"] == {"plan": "rm -rf"}
    assert {k: again["approval"][k] for k in ("decision", "note", "payload", "by")} == \
        {"decision": "approved", "note": "ok, only /tmp", "payload": {"allow": True}, "by": "ana"}
    assert [r["status"] for r in iterations(h, jid)] == ["hold"]


def test_reject_with_revise_requeues_with_the_feedback_and_plain_reject_ends(h):
    jid = agent_job(h)
    step(h, jid, status="hold", hold_reason="draft ready")
    assert h.ok("reject_job", {"job_id": jid, "revise": True, "note": "shorter", "payload": {"max_words": 50}}) \
        == {"affected": 1, "errors": [], "state": PENDING}
    (again,) = h.fetch(queues=("ai.agent",))
    assert (again["approval"]["decision"], again["approval"]["payload"]) == ("revise", {"max_words": 50})
    h.ok("ack", {"job_id": jid, "attempt": again["attempt"], "agent_status": "hold", "hold_reason": "draft 2"})
    assert h.ok("reject_job", {"job_id": jid, "note": "no"})["state"] == CANCELLED
    assert h.raw_job(jid)["last_error"] == "rejected: no"


def test_an_iteration_past_its_timeout_loses_its_lease_and_counts_as_failed(h):
    jid = h.enqueue(queue="ai.agent", payload={}, agent={"iteration_timeout": 5_000}, max_retries=0)
    (job,) = h.fetch(queues=("ai.agent",), lease_ms=60_000)
    assert h.raw_job(jid)["lease_expires_at"] == T0 + 5_000
    # heartbeats cannot extend it past the deadline
    h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {}}}, now=T0 + 4_000)
    assert h.raw_job(jid)["lease_expires_at"] == T0 + 5_000
    h.tick(now=T0 + 5_000)
    job = h.raw_job(jid)
    assert (job["state"], job["last_error"]) == (DEAD, "timeout after 5000 ms")
    assert iterations(h, jid)[0]["status"] == "failed"


def test_continue_is_refused_for_plain_jobs_and_stale_attempts(h):
    plain = h.enqueue()
    h.fetch_one()
    err = h.run("ack", {"job_id": plain, "agent_status": "continue"})["err"]
    assert (err["code"], err["field"], err["reason"]) == ("FAILED_PRECONDITION", "agent_status", "not_agent_job")
    assert h.state(plain) == ACTIVE  # nothing changed
    jid = agent_job(h)
    (job,) = h.fetch(queues=("ai.agent",))
    err = h.run("ack", {"job_id": jid, "attempt": job["attempt"] + 1, "agent_status": "continue"})["err"]
    assert err["reason"] == "lease_lost"
    held = h.enqueue(hold=True)
    err = h.run("reject_job", {"job_id": held, "revise": True})["err"]
    assert (err["field"], err["reason"]) == ("revise", "not_agent_job")


# ------------------------------------------------------------------ replay

def finished_run(h, n=5):
    jid = agent_job(h)
    for i in range(1, n):
        step(h, jid, checkpoint={"i": i}, result=f"r{i}")
    step(h, jid, status="done", result="final")
    return jid


def test_replay_starts_from_the_checkpoint_iteration_n_started_from(h):
    src = finished_run(h)
    ok = h.ok("replay_job", {"job_id": src, "from_iteration": 3, "overrides": {"payload": {"temperature": 0},
                                                                             "tags": {"exp": "t0"}}})
    new = ok["job_id"]
    assert (ok["state"], ok["iteration"]) == (PENDING, 3)
    job = h.raw_job(new)
    assert job["payload"] == {"goal": "g", "temperature": 0} and job["tags"] == {"exp": "t0"}
    assert job["replay_of"]["job_id"] == src and job["replay_of"]["from_iteration"] == 3
    assert h.raw_job(src)["replays"] == [new]
    (fetched,) = h.fetch(queues=("ai.agent",))
    assert (fetched["job_id"], fetched["iteration"], fetched["checkpoint"]) == (new, 3, {"i": 2})
    # from iteration 1: no checkpoint
    first = h.ok("replay_job", {"job_id": src, "from_iteration": 1})["job_id"]
    assert h.raw_job(first)["checkpoint"] is None and h.raw_job(src)["replays"] == [new, first]


def test_replay_refuses_unknown_iterations_and_plain_jobs(h):
    src = finished_run(h, n=2)
    err = h.run("replay_job", {"job_id": src, "from_iteration": 9})["err"]
    assert (err["code"], err["field"]) == ("NOT_FOUND", "from_iteration")
    err = h.run("replay_job", {"job_id": h.enqueue(), "from_iteration": 1})["err"]
    assert err["reason"] == "not_agent_job"
    err = h.run("replay_job", {"job_id": "job_nope", "from_iteration": 1})["err"]
    assert err["code"] == "NOT_FOUND"


def test_deleting_an_agent_job_deletes_its_iteration_records(h):
    src = finished_run(h, n=3)
    assert len(h.keys("iterations")) == 3
    h.ok("delete_job", {"job_id": src})
    assert h.keys("iterations") == []
