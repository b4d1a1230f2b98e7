"""Fault tests on a real node: killed actors, SIGTERM mid-flight, paused workers, retried writes, replay.

Each test runs one `jobbie server` from the `node` fixture (torn down by pid);
any extra process a test starts is killed by pid in its `finally`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jobbie.actors.config import ACTORS, NodeConfig
from jobbie.transport.client import Client
from jobbie.transport.errors import FailedPrecondition

from .helpers import (Enqueuer, FastBackoffNode, actor_row, child_pids, first_answer, get_jobs,
                      kill_pid, pid_alive, queue_row, total_jobs, wait_for, wait_restarted)

#: A killed actor must be back, and the node answering, within this long.
RECOVERY_LIMIT_S = 3.0


def assert_all_present(client: Client, payloads: dict, queue: str):
    """Every acknowledged enqueue is a job of `queue` with its payload."""
    replies = get_jobs(client, payloads)
    missing = {j: r["err"] for j, r in replies.items() if "ok" not in r}
    assert not missing, f"{len(missing)} of {len(payloads)} acknowledged jobs are gone: {list(missing.items())[:5]}"
    wrong = [j for j, r in replies.items() if r["ok"]["queue"] != queue or r["ok"]["payload"] != payloads[j]]
    assert not wrong, f"jobs with the wrong queue or payload: {wrong[:5]}"
    return {j: r["ok"] for j, r in replies.items()}


# --------------------------------------------------------------------------- 1
@pytest.mark.timeout(60)
@pytest.mark.parametrize("actor", ACTORS)
def test_kill9_actor_is_restarted_and_keeps_acknowledged_enqueues(node_factory, actor):
    # Given a node (with its http actor when that is the one killed) taking a steady stream of enqueues
    node = node_factory(http=actor == "http")
    client = node.client()
    old = actor_row(node.status(), actor)
    assert old and old["alive"] and old["restarts"] == 0
    enqueuer = Enqueuer(node.endpoint, "faults", timeout=1.0, retry_for=20.0)
    enqueuer.start()
    try:
        enqueuer.wait_acked(20, 10.0)
        # When the actor's process is killed with SIGKILL
        os.kill(old["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        # Then the node answers a fresh request (status and enqueue) within the limit
        elapsed = first_answer(node.endpoint, "probe", killed_at, limit=15.0)
        print(f"\nrecovery after kill -9 of {actor}: {elapsed:.3f}s")
        assert elapsed < RECOVERY_LIMIT_S, f"node answered {elapsed:.2f}s after the {actor} actor was killed"
        # And the supervisor restarted the actor under a new pid
        row = wait_restarted(node, actor, old["pid"], timeout=10.0)
        assert row["restarts"] >= 1 and row["alive"] and row["pid"] != old["pid"]
        assert not pid_alive(old["pid"])
        # And the stream of enqueues goes on after the restart
        enqueuer.wait_acked(len(enqueuer.acked) + 20, 20.0, " after the restart")
    finally:
        enqueuer.stop()
    assert not enqueuer.errors, enqueuer.errors[:5]
    print(f"{len(enqueuer.acked)} enqueues acknowledged, the slowest in {enqueuer.max_latency:.3f}s")
    # And every acknowledged enqueue is still there, once
    acked = enqueuer.acked
    assert len(set(acked)) == len(acked), "two enqueues were answered with the same job id"
    assert_all_present(client, enqueuer.payloads, "faults")
    row = queue_row(client, "faults")
    assert row["pending"] >= len(acked)
    assert total_jobs(row) == len(set(acked)), (
        f"queue holds {total_jobs(row)} jobs for {len(set(acked))} acknowledged enqueues (duplicates?)")
    for a in node.status()["actors"]:
        assert a["alive"], f"actor {a['name']} is not alive after the restart"


# --------------------------------------------------------------------------- 2
@pytest.mark.timeout(90)
def test_sigterm_with_jobs_in_flight_stops_cleanly_and_loses_nothing(node):
    # Given jobs pending and active, and a client enqueuing
    client = node.client()
    queued = {client.enqueue("work", {"n": i}): {"n": i} for i in range(30)}
    fetched = client.fetch("work", "w1", count=10, lease_ms=120_000)
    active = {j["job_id"] for j in fetched}
    assert len(active) == 10
    node.status()  # remember the actor pids
    first_run = set(node.known_pids) | {node.proc.pid}
    assert len(first_run) >= 5
    enqueuer = Enqueuer(node.endpoint, "during-stop", timeout=1.0, retry_for=30.0, pause=0.001)
    enqueuer.start()
    try:
        enqueuer.wait_acked(20, 10.0)
        # When the supervisor gets SIGTERM
        code = node.stop(timeout=20)
        # Then it exits 0, says it stopped cleanly, and leaves no process behind
        assert code == 0, node.supervisor_log()
        assert "node stopped cleanly" in node.supervisor_log()
        left = [pid for pid in first_run if pid_alive(pid)]
        assert not left, f"processes of the first run still alive: {left}"
        acked_while_down = len(enqueuer.acked)
        # When the node is started again on the same data dir
        node.start()
        enqueuer.wait_acked(acked_while_down + 20, 30.0, " after the restart")
    finally:
        enqueuer.stop()
    assert not enqueuer.errors, enqueuer.errors[:5]
    print(f"\n{len(enqueuer.acked)} enqueues acknowledged around the restart, the slowest in "
          f"{enqueuer.max_latency:.3f}s")
    # Then every acknowledged enqueue is there, in its state
    client = node.client()
    jobs = assert_all_present(client, queued, "work")
    for job_id, job in jobs.items():
        if job_id in active:
            assert job["state"] in ("active", "pending"), (job_id, job["state"])
            assert job["attempt"] == 1
        else:
            assert job["state"] == "pending", (job_id, job["state"])
    row = queue_row(client, "work")
    assert total_jobs(row) == 30 and row["active"] + row["pending"] == 30
    assert_all_present(client, enqueuer.payloads, "during-stop")
    row = queue_row(client, "during-stop")
    acked = enqueuer.acked
    assert len(set(acked)) == len(acked)
    assert total_jobs(row) == len(acked), f"{total_jobs(row)} jobs for {len(acked)} acknowledged enqueues"


# --------------------------------------------------------------------------- 3
WORKER_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from jobbie.transport.client import Client
    from jobbie.transport.errors import JobbieError

    endpoint, queue, go_file = sys.argv[1:4]

    def say(**fields):
        print(json.dumps(fields), flush=True)

    with Client(endpoint, timeout=2.0, retry_for=5.0) as client:
        jobs = client.fetch(queue, "w1", lease_ms=1000)
        say(event="fetched", jobs=[{"job_id": j["job_id"], "attempt": j["attempt"]} for j in jobs])
        if not jobs:
            sys.exit(1)
        deadline = time.monotonic() + 45
        while not os.path.exists(go_file):
            if time.monotonic() > deadline:
                say(event="gave_up")
                sys.exit(2)
            time.sleep(0.01)
        try:
            answer = client.ack(jobs[0]["job_id"], attempt=1, result={"by": "w1"})
            say(event="acked", answer=answer)
        except JobbieError as exc:
            say(event="refused", code=exc.code, reason=exc.reason, message=exc.message)
""")


def read_events(path) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip().startswith("{")]
    except OSError:
        return []


@pytest.mark.timeout(60)
def test_worker_paused_past_its_lease_cannot_ack_and_job_completes_once(node, tmp_path):
    # Given a job, fetched by a worker process with a 1 s lease
    client = node.client()
    job_id = client.enqueue("paused", {"task": 1})
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    out_path, go_file = tmp_path / "worker.out", tmp_path / "go"
    with open(out_path, "wb") as out:
        worker = subprocess.Popen([sys.executable, str(script), node.endpoint, "paused", str(go_file)],
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        fetched = wait_for(lambda: [e for e in read_events(out_path) if e["event"] == "fetched"], 15.0,
                           message="the worker to fetch")[0]
        assert fetched["jobs"] == [{"job_id": job_id, "attempt": 1}]
        # When the worker is paused past its lease
        os.kill(worker.pid, signal.SIGSTOP)
        wait_for(lambda: client.get_job(job_id)["state"] == "pending", 15.0, interval=0.05,
                 message="the expired lease to put the job back to pending")
        # And another worker fetches it (attempt 2) and acks it
        jobs = client.fetch("paused", "w2", lease_ms=30_000)
        assert [(j["job_id"], j["attempt"]) for j in jobs] == [(job_id, 2)]
        assert client.ack(job_id, attempt=2, result={"by": "w2"}) == {"state": "completed"}
        # And the first worker wakes up and acks with its old attempt
        go_file.write_text("go")
        os.kill(worker.pid, signal.SIGCONT)
        assert worker.wait(timeout=20) == 0, out_path.read_text()
    finally:
        if worker.poll() is None:
            kill_pid(worker.pid, signal.SIGCONT)
            kill_pid(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
    # Then its ack is refused as lease_lost
    events = read_events(out_path)
    outcome = events[-1]
    assert outcome["event"] == "refused", events
    assert (outcome["code"], outcome["reason"]) == ("FAILED_PRECONDITION", "lease_lost"), outcome
    # And the job completed once, with the second worker's result
    job = client.get_job(job_id)
    assert job["state"] == "completed"
    assert job["result"] == {"by": "w2"}
    assert job["attempt"] == 2
    row = queue_row(client, "paused")
    assert (row["completed"], total_jobs(row)) == (1, 1)


# --------------------------------------------------------------------------- 4
@pytest.mark.timeout(60)
def test_retried_write_with_the_same_request_id_is_applied_once(node):
    client = node.client()
    # Given an enqueue sent twice with one request_id, one after the other
    first = client.call("enqueue", queue="dedupe-call", payload={"x": 1}, request_id="req-call-1")
    again = client.call("enqueue", queue="dedupe-call", payload={"x": 1}, request_id="req-call-1")
    # Then both answers name the same job and one job exists
    assert first["job_id"] == again["job_id"]
    row = queue_row(client, "dedupe-call")
    assert (row["pending"], total_jobs(row)) == (1, 1)

    # Given the same enqueue submitted twice at once (both in flight together)
    args = {"queue": "dedupe-submit", "payload": {"x": 2}, "request_id": "req-submit-1"}
    replies = [f.result(timeout=10) for f in [client.submit("enqueue", args), client.submit("enqueue", args)]]
    assert all("ok" in r for r in replies), replies
    assert replies[0]["ok"]["job_id"] == replies[1]["ok"]["job_id"]
    row = queue_row(client, "dedupe-submit")
    assert (row["pending"], total_jobs(row)) == (1, 1)

    # When the same request_id comes with another payload
    with pytest.raises(FailedPrecondition) as refused:
        client.call("enqueue", queue="dedupe-call", payload={"x": 999}, request_id="req-call-1")
    # Then it is refused as request_id_reused, and nothing is added
    assert refused.value.reason == "request_id_reused"
    assert total_jobs(queue_row(client, "dedupe-call")) == 1


# --------------------------------------------------------------------------- 5
@pytest.mark.timeout(60)
def test_raft_restart_replays_the_journal_without_applying_twice(node):
    # Given 200 jobs, 50 of them acked
    client = node.client()
    futures = [client.submit("enqueue", {"queue": "replay", "payload": {"n": i}, "request_id": f"replay-{i}"})
               for i in range(200)]
    replies = [f.result(timeout=20) for f in futures]
    assert all("ok" in r for r in replies), [r for r in replies if "ok" not in r][:3]
    jobs = client.fetch("replay", "w1", count=50, lease_ms=120_000)
    assert len(jobs) == 50
    for j in jobs:
        assert client.ack(j["job_id"], attempt=j["attempt"], result={"ok": True}) == {"state": "completed"}
    before = queue_row(client, "replay")
    assert (before["pending"], before["completed"], total_jobs(before)) == (150, 50, 200)
    applied_before = node.status()["applied_index"]
    # When the raft actor is killed with SIGKILL and restarted
    old_pid = node.actor_pid("raft")
    os.kill(old_pid, signal.SIGKILL)
    wait_restarted(node, "raft", old_pid, timeout=15.0)
    wait_for(lambda: node.status()["role"] == "leader", 15.0, interval=0.05, message="raft to lead again")
    # Then the counts are exactly as before (the journal replay did not re-apply entries to LMDB)
    after = queue_row(client, "replay")
    assert after == before
    assert node.status()["applied_index"] >= applied_before
    for j in jobs[:5]:
        job = client.get_job(j["job_id"])
        assert job["state"] == "completed" and job["attempt"] == 1
    # And new enqueues work and count once
    new_id = client.enqueue("replay", {"n": "new"})
    assert client.get_job(new_id)["state"] == "pending"
    row = queue_row(client, "replay")
    assert (row["pending"], row["completed"], total_jobs(row)) == (151, 50, 201)


# --------------------------------------------------------------------------- 6
#: An actor's command line before and after it sets its process title.
LIFECYCLE_CMDLINES = ("jobbie.actors.launch lifecycle", "jobbie-lifecycle ")


@pytest.mark.timeout(60)
def test_an_actor_that_keeps_dying_stops_the_node_with_a_reason(tmp_path):
    # Given a node whose restart backoff is cut to 10-20 ms (the restart-intensity rule is unchanged:
    # more than 10 deaths of one actor within 60 s stops the node)
    node = FastBackoffNode(tmp_path / "node")
    try:
        node.start()
        supervisor = node.proc.pid
        others = {a["pid"] for a in node.status()["actors"] if a["name"] not in ("lifecycle", "supervisor")}
        assert len(others) == len(NodeConfig(data_dir=".", http=False).actors()) - 1
        killed: list[int] = []

        def fresh_lifecycle():
            pids = [p for p in child_pids(supervisor, *LIFECYCLE_CMDLINES) if p not in killed]
            return pids[0] if pids else None

        # When the lifecycle actor is killed 11 times in a row
        for _ in range(11):
            if node.proc.poll() is not None:
                break
            pid = wait_for(lambda: fresh_lifecycle() or node.proc.poll() is not None, 10.0, interval=0.005,
                           message="a new lifecycle process")
            if pid is True:
                break
            kill_pid(pid)
            killed.append(pid)
        # Then the supervisor gives up: exit code 3 and one line saying why
        code = node.proc.wait(timeout=20)
        assert len(killed) == 11, f"the node stopped after {len(killed)} kills"
        assert code == 3, node.supervisor_log()
        log = node.supervisor_log()
        reasons = [line for line in log.splitlines() if line.startswith("jobbie: stopping the node:")]
        assert len(reasons) == 1, log
        assert "lifecycle actor died 11 times within 60s" in reasons[0], reasons[0]
        # And the other actors were stopped with it
        assert not [pid for pid in others | set(killed) if pid_alive(pid)]
    finally:
        node.stop(timeout=10)
        node.kill_everything()
