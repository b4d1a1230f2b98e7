"""Agent loops end to end on real nodes.

- The CLI story: an agent job runs iterations, `jobbie iterations` lists them, `jobbie replay
  --from N` runs it again from there (the same iterations with a deterministic model), and with
  an override `jobbie compare` shows where the two runs part.
- Loop detection holds a job that repeats itself; `jobbie approve --extend-iterations` lets it go on.
- Three nodes, kill -9 of the leader mid-run, 100 agent jobs of up to 20 iterations: every
  acknowledged iteration is recorded exactly once, no job passes max_iterations, no job's cost
  passes max_cost_usd by more than one iteration, and the three nodes hold identical records.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jobbie.transport.client import Client

from .cluster import make_cluster  # noqa: F401 (a fixture)
from .conftest import wait_for
from .helpers import FetchAckLoops, settled_queue

COST = 0.01  # every fake iteration costs this much


def cli(node, *args) -> str:
    out = subprocess.run([sys.executable, "-m", "jobbie.cli.main", *args, "--server", node.endpoint],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def fake_model(payload: dict, checkpoint, n: int):
    """A deterministic stand-in for an LLM agent: (status, checkpoint, result) of iteration n."""
    state = dict(checkpoint or {"total": payload.get("start", 0)})
    state["total"] += payload.get("step", 1)
    if payload.get("stuck"):
        return "continue", {"total": 0}, "thinking..."
    if n >= payload["stop_at"]:
        return "done", state, f"answer {state['total']}"
    return "continue", state, f"n={n} total={state['total']}"


class AgentWorkers(FetchAckLoops):
    """Worker loops running fake_model; they remember every iteration whose ack was answered ok."""

    prefix = "agent-w"

    def __init__(self, endpoints: str, queue: str, n: int = 10, clients: int = 5, lease_ms: int = 5_000):
        super().__init__(endpoints, queue, n, clients=clients, lease_ms=lease_ms)

    def handle(self, client, job):
        status, checkpoint, result = fake_model(job["payload"], job["checkpoint"], job["iteration"])
        client.ack(job["job_id"], attempt=job["attempt"], agent_status=status, checkpoint=checkpoint,
                   result=result, usage={"cost_usd": COST, "input_tokens": 100, "output_tokens": 10})
        return job["job_id"], job["iteration"], status


@pytest.mark.timeout(90)
def test_iterations_replay_and_compare_from_the_command_line(node):
    client = node.client()
    jid = client.enqueue("ai.agent", {"stop_at": 5, "step": 2}, agent={"max_iterations": 20})
    workers = AgentWorkers(node.endpoint, "ai.agent", n=2, clients=1).start()
    try:
        wait_for(lambda: client.get_job(jid)["state"] == "completed", 30, message="agent done")
        table = cli(node, "iterations", jid)
        assert "5 iteration(s)" in table and "answer 10" in table, table
        recs = json.loads(cli(node, "iterations", jid, "--output", "json"))["iterations"]
        assert [(r["n"], r["status"]) for r in recs] == [(1, "continue"), (2, "continue"), (3, "continue"),
                                                          (4, "continue"), (5, "done")]
        # a replay from iteration 3 without overrides does the same from there
        out = cli(node, "replay", jid, "--from", "3")
        same = out.split()[1]
        wait_for(lambda: client.get_job(same)["state"] == "completed", 30, message="replay done")
        assert [r["digest"] for r in client.iterations(same)] == [r["digest"] for r in recs[2:]]
        assert client.get_job(same)["replay_of"]["job_id"] == jid and same in client.get_job(jid)["replays"]
        # with an override the runs part, and compare says where
        other = cli(node, "replay", jid, "--from", "3", "--set", "step=3").split()[1]
        wait_for(lambda: client.get_job(other)["state"] == "completed", 30, message="replay with override done")
        text = cli(node, "compare", jid, other)
        assert "they first differ at iteration 3" in text, text
        result = json.loads(cli(node, "compare", jid, same, "--output", "json"))
        assert result["first_difference"] is None
        assert [row["same"] for row in result["iterations"]] == [None, None, True, True, True]  # 1-2: only in A
    finally:
        workers.stop()


@pytest.mark.timeout(60)
def test_a_looping_agent_is_held_and_approve_extend_lets_it_go_on(node):
    client = node.client()
    jid = client.enqueue("ai.loop", {"stop_at": 100, "stuck": True}, agent={"loop_window": 3, "max_iterations": 6})
    workers = AgentWorkers(node.endpoint, "ai.loop", n=1, clients=1).start()
    try:
        wait_for(lambda: client.get_job(jid)["state"] == "held", 20, message="loop detected")
        assert client.get_job(jid)["hold_reason"] == "loop_detected"
        assert len(client.iterations(jid)) == 3
        cli(node, "approve", jid, "--extend-iterations", "1", "--note", "let it try")
        # it goes on: three more identical iterations, then max_iterations (6) holds it
        wait_for(lambda: client.get_job(jid)["state"] == "held" and len(client.iterations(jid)) == 6, 20,
                 message="held again")
        assert client.get_job(jid)["hold_reason"] in ("loop_detected", "max_iterations")
    finally:
        workers.stop()
    kinds = [e["kind"] for e in client.audit(job_id=jid)]
    assert kinds.count("held") == 2 and "approved" in kinds


@pytest.mark.timeout(240)
def test_leader_kill9_mid_run_records_every_acknowledged_iteration_once(make_cluster):
    cluster = make_cluster()
    leader = cluster.start()
    client = cluster.client()
    jobs = []
    for i in range(100):
        agent = {"max_iterations": 12 if i % 4 == 0 else 20}
        if i % 5 == 0:
            agent["max_cost_usd"] = 0.05
        jobs.append({"queue": "ai.ha", "payload": {"stop_at": 5 + i % 16, "step": 1 + i % 3}, "agent": agent})
    ids = client.enqueue_batch(jobs)["job_ids"]
    workers = AgentWorkers(cluster.endpoints, "ai.ha", n=10, clients=5).start()
    try:
        wait_for(lambda: len(workers.acked) >= 300, 60, message="iterations under way")
        leader.kill9()
        cluster.wait_leader([n for n in cluster.nodes if n is not leader], timeout=20.0)
        final = wait_for(lambda: settled_queue(client, "ai.ha"), 150, interval=0.25, message="every agent job settled")
    finally:
        workers.stop()
    assert not workers.errors, workers.errors[:3]
    cluster.restart(leader)
    digests = cluster.wait_converged(timeout=60.0)
    assert len({d for _, d in digests.values()}) == 1
    acked = {(j, n) for j, n, _ in workers.acked}
    per_node = []
    for node in cluster.nodes:
        with Client(node.endpoint, timeout=5.0, retry_for=10.0) as c:
            per_node.append({j: c.iterations(j) for j in ids})
    assert per_node[0] == per_node[1] == per_node[2]
    over_iterations = over_cost = 0
    for jid, spec in zip(ids, jobs):
        recs = per_node[0][jid]
        numbers = [r["n"] for r in recs]
        assert numbers == list(range(1, len(numbers) + 1)), (jid, numbers)  # each once, in order
        over_iterations += len(recs) > spec["agent"]["max_iterations"]
        cap = spec["agent"].get("max_cost_usd")
        if cap is not None:
            over_cost += sum(r["cost_usd"] for r in recs) > cap + COST + 1e-9
    recorded = {(j, r["n"]) for j in ids for r in per_node[0][j]}
    missing = acked - recorded
    assert not missing, sorted(missing)[:5]
    assert over_iterations == 0 and over_cost == 0
    states = {}
    for j in ids:
        states[client.get_job(j)["state"]] = states.get(client.get_job(j)["state"], 0) + 1
    print(f"\n100 agent jobs, kill -9 of the leader: {len(recorded)} iterations recorded, {len(acked)} acked "
          f"answers; states {states}; queue {final}")
    assert set(states) <= {"completed", "held"}


@pytest.mark.timeout(90)
def test_the_agent_example_runs_as_the_readme_says(node):
    out = subprocess.run([sys.executable, "examples/agent_loop.py", "--server", node.endpoint],
                         capture_output=True, text=True, timeout=80,
                         cwd=__import__("pathlib").Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "finishes: " in text and "is completed" in text
    assert "(hold_reason max_cost)" in text
    assert "asks, after approval" in text and "approved by example" in text
    assert "they first differ at iteration 3" in text
