"""The Python Worker runtime against a live node.

In-process workers run `Worker.run()` in a thread and are stopped with
`worker.stop()` (a graceful drain), joined with a bound. The SIGTERM test runs
a worker in a subprocess written to tmp_path and kills it by pid in a finally.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from jobbie.transport.client import Client
from jobbie.transport.worker import Cancelled, Worker

from .conftest import wait_for

pytestmark = pytest.mark.timeout(60)

FAST_BACKOFF = {"strategy": "fixed", "base_ms": 100, "max_ms": 100}


@contextlib.contextmanager
def running(worker: Worker, join_timeout: float = 15.0):
    """Run `worker` in a thread; on exit drain it and make sure the thread ended."""
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=join_timeout)
        assert not thread.is_alive(), "the worker did not stop"


def make_worker(node, handlers, **options) -> Worker:
    options.setdefault("wait_ms", 200)  # short long-polls: stop() takes effect quickly
    options.setdefault("drain_timeout", 5.0)
    return Worker(handlers, server=node.endpoint, **options)


def job_state(client, job_id):
    return client.get_job(job_id)["state"]


def wait_state(client, job_id, states, timeout=15.0):
    states = {states} if isinstance(states, str) else set(states)
    return wait_for(lambda: (job := client.get_job(job_id))["state"] in states and job, timeout, interval=0.05,
                    message=f"job {job_id} to be {'/'.join(sorted(states))}")


# --------------------------------------------------------------------------- (a)
def test_jobs_on_two_queues_are_completed_with_the_handler_result(node, client):
    # Given 24 jobs on two queues
    ids = {}
    for n in range(12):
        ids[client.enqueue("alpha", {"n": n})] = ("alpha", n)
        ids[client.enqueue("beta", {"n": n})] = ("beta", n)

    def handler(job):
        time.sleep(0.01)
        return {"queue": job.queue, "double": job.payload["n"] * 2, "attempt": job.attempt}

    # When a worker with concurrency 4 serves both queues
    worker = make_worker(node, {"alpha": handler, "beta": handler}, concurrency=4)
    with running(worker):
        wait_for(lambda: all(job_state(client, j) == "completed" for j in ids), 30.0, interval=0.1,
                 message="every job to be completed")
    # Then each job's result is its handler's return value
    for job_id, (queue, n) in ids.items():
        job = client.get_job(job_id)
        assert job["result"] == {"queue": queue, "double": n * 2, "attempt": 1}
        assert job["worker_id"] == worker.worker_id and job["errors"] == []
    assert worker.completed == len(ids) and worker.failed == 0
    rows = {q["name"]: q for q in client.queues()}
    assert rows["alpha"]["completed"] == 12 and rows["beta"]["completed"] == 12
    assert all(rows[q]["active"] == rows[q]["pending"] == 0 for q in rows)


# --------------------------------------------------------------------------- (b)
def test_raising_handler_is_retried_then_dead_with_both_errors(node, client):
    # Given a job with one retry and a 100 ms fixed backoff
    job_id = client.enqueue("flaky", {"x": 1}, max_retries=1, backoff=FAST_BACKOFF)
    attempts = []

    def handler(job):
        attempts.append(job.attempt)
        raise ValueError(f"boom on attempt {job.attempt}")

    # When a handler raises on every attempt
    with running(make_worker(node, {"flaky": handler}, concurrency=1)):
        job = wait_state(client, job_id, "dead")
    # Then it ran twice and is dead, with both errors recorded
    assert attempts == [1, 2]
    errors = job["errors"]
    assert len(errors) == 2, errors
    assert [e["attempt"] for e in errors] == [1, 2]
    for attempt, entry in zip((1, 2), errors):
        assert f"ValueError: boom on attempt {attempt}" in entry["error"]
    assert "boom on attempt 2" in job["last_error"]


# --------------------------------------------------------------------------- (c)
def test_cooperative_cancellation_reaches_the_handler(node, client):
    job_id = client.enqueue("long", {"x": 1})
    started = threading.Event()
    saw_cancel = threading.Event()
    checks = []

    def handler(job):
        started.set()
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            try:
                job.check()
            except Cancelled:
                saw_cancel.set()
                raise
            checks.append(1)
            time.sleep(0.02)
        return "ran to the end"

    # Given a handler running that checks for cancellation, with 200 ms heartbeats
    with running(make_worker(node, {"long": handler}, concurrency=1, heartbeat_ms=200)):
        assert started.wait(10.0), "the handler never started"
        # When the job is cancelled
        answer = client.cancel(job_id)
        cancelled_at = time.monotonic()
        assert answer["state"] == "active" and answer["cancel_requested"] is True
        # Then the handler sees Cancelled within a few heartbeat intervals
        assert saw_cancel.wait(5.0), "the handler never saw the cancellation"
        took = time.monotonic() - cancelled_at
        assert took < 2.0, f"cancellation reached the handler after {took:.2f}s (heartbeat every 0.2s)"
        # And the job ends cancelled
        job = wait_state(client, job_id, "cancelled", timeout=10.0)
    assert job["result"] is None and checks


# --------------------------------------------------------------------------- (d)
def test_checkpoint_saved_before_a_failure_is_seen_by_the_next_attempt(node, client):
    job_id = client.enqueue("resumable", {"steps": 5}, max_retries=1, backoff=FAST_BACKOFF)
    seen = {}

    def handler(job):
        seen[job.attempt] = job.checkpoint
        if job.attempt == 1:
            job.save_checkpoint({"step": 3, "partial": [1, 2, 3]})
            raise RuntimeError("crashed after step 3")
        return {"resumed_from": job.checkpoint["step"]}

    # Given a handler that saves a checkpoint, then raises on attempt 1
    with running(make_worker(node, {"resumable": handler}, concurrency=1)):
        job = wait_state(client, job_id, "completed")
    # Then attempt 1 started from nothing and attempt 2 from the checkpoint
    assert seen == {1: None, 2: {"step": 3, "partial": [1, 2, 3]}}
    assert job["result"] == {"resumed_from": 3} and job["attempt"] == 2
    assert len(job["errors"]) == 1 and "crashed after step 3" in job["errors"][0]["error"]


# --------------------------------------------------------------------------- (e)
WORKER_SCRIPT = """
import pathlib, sys, time
from jobbie.transport.worker import Worker

endpoint, marks = sys.argv[1], pathlib.Path(sys.argv[2])
COOPERATIVE = sys.argv[3] == "cooperative"


def quick(job):
    (marks / f"quick-{job.id}").write_text("done")
    return {"quick": True}


def slow(job):
    job.save_checkpoint({"step": "started", "attempt": job.attempt})
    (marks / "slow-started").write_text(job.id)
    if COOPERATIVE:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job.check()
            time.sleep(0.05)
    else:
        time.sleep(30)
    return {"slow": True}


Worker({"quick": quick, "slow": slow}, server=endpoint, concurrency=2, drain_timeout=1.0).run()
"""


def run_sigterm_drain(node, client, tmp_path, mode: str):
    script = tmp_path / "drain_worker.py"
    script.write_text(WORKER_SCRIPT)
    marks = tmp_path / "marks"
    marks.mkdir()
    log = open(tmp_path / "drain_worker.log", "wb")
    slow_id = client.enqueue("slow", {"n": 1})
    quick_id = client.enqueue("quick", {"n": 2})
    proc = subprocess.Popen([sys.executable, str(script), node.endpoint, str(marks), mode],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        # Given a worker running one quick job (finished) and one slow job (checkpointed, still running)
        wait_for(lambda: (marks / "slow-started").exists(), 15.0, message="the slow job to start")
        wait_state(client, quick_id, "completed")
        assert client.get_job(slow_id)["state"] == "active"
        # When it receives SIGTERM
        os.kill(proc.pid, signal.SIGTERM)
        sent = time.monotonic()
        try:
            code = proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - sent
        # Then the slow job was handed back with its checkpoint and a shut-down error
        slow = wait_state(client, slow_id, ("retrying", "pending"), timeout=5.0)
        assert slow["checkpoint"] == {"step": "started", "attempt": 1}
        assert any("worker shut down" in e["error"] for e in slow["errors"]), slow["errors"]
        assert slow["result"] is None
        # And the quick job stays completed
        quick = client.get_job(quick_id)
        assert quick["state"] == "completed" and quick["result"] == {"quick": True}
        # And the process exited on its own, promptly, with code 0
        assert code is not None, "the worker was still running 5 s after SIGTERM"
        assert code == 0, f"exit code {code}: {(tmp_path / 'drain_worker.log').read_text()[-2000:]}"
        assert took < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_sigterm_drains_a_cooperative_worker(node, client, tmp_path):
    # The slow handler sleeps in short steps and calls job.check() between them.
    run_sigterm_drain(node, client, tmp_path, "cooperative")


def test_sigterm_drains_a_worker_with_a_blocking_handler(node, client, tmp_path):
    # The slow handler sleeps 30 s in one call (the brief's case).
    run_sigterm_drain(node, client, tmp_path, "blocking")


def test_drain_keeps_the_heartbeat_interval(node, client):
    job_id = client.enqueue("drain-hb", {"x": 1})
    started = threading.Event()

    def handler(job):
        started.set()
        while True:
            job.check()  # raises Cancelled once the drain gives up on the job
            time.sleep(0.02)

    # Given a job running under a worker with 200 ms heartbeats and a 1 s drain
    worker = make_worker(node, {"drain-hb": handler}, concurrency=1, heartbeat_ms=200, drain_timeout=1.0)
    with running(worker):
        assert started.wait(10.0)
        before = node.status()["gateway"]["requests"]
        # When the worker drains (the handler keeps running for the whole drain time-out)
        worker.stop()
        wait_state(client, job_id, ("retrying", "pending"), timeout=10.0)
        after = node.status()["gateway"]["requests"]
    # Then it kept heartbeating about once per interval: well under 50 requests in ~1-2 s
    assert after - before < 50, f"{after - before} requests reached the node during a ~1 s drain"


# --------------------------------------------------------------------------- (f)
def test_concurrency_limit_is_respected(node, client):
    ids = [client.enqueue("slowish", {"n": n}) for n in range(6)]
    lock = threading.Lock()
    running_now = 0
    peak = 0
    order = []

    def handler(job):
        nonlocal running_now, peak
        with lock:
            running_now += 1
            peak = max(peak, running_now)
            order.append(("start", job.payload["n"]))
        try:
            time.sleep(0.3)
        finally:
            with lock:
                running_now -= 1
        return job.payload["n"]

    # Given 6 jobs of 0.3 s and a worker with concurrency 2
    with running(make_worker(node, {"slowish": handler}, concurrency=2)):
        wait_for(lambda: all(job_state(client, j) == "completed" for j in ids), 20.0, interval=0.05,
                 message="every job to be completed")
    # Then at no moment were more than 2 handlers running (and 2 did run together)
    assert peak == 2, f"peak concurrency {peak}"
    assert len(order) == 6
    assert [client.get_job(j)["result"] for j in ids] == list(range(6))


def test_the_worker_logs_a_start_line_and_one_line_per_job(node, tmp_path):
    # Given an app with one handler that succeeds and one job that fails
    app = tmp_path / "app.py"
    app.write_text(
        "from jobbie import Worker\n"
        "def handle(job):\n"
        "    if job.payload.get('bad'):\n"
        "        raise ValueError('no such mailbox')\n"
        "    return {'ok': True}\n"
        f"Worker({{'mail': handle}}, server={node.endpoint!r}, concurrency=2, wait_ms=200).run()\n")
    with Client(node.endpoint) as c:
        good = c.enqueue("mail", {"to": "a"})
        bad = c.enqueue("mail", {"bad": True}, max_retries=0)
    proc = subprocess.Popen([sys.executable, str(app)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        with Client(node.endpoint) as c:
            wait_for(lambda: c.get_job(good)["state"] == "completed" and c.get_job(bad)["state"] == "dead", 20,
                     message="both jobs to finish")
        # When it is interrupted / Then it stops promptly
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
        assert time.monotonic() - started < 5.0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # And the log has the start line, a line per job with its outcome, and the failure's traceback
    assert "INFO worker " in out and "queues mail, concurrency 2" in out
    assert f"mail {good} attempt 1: completed in" in out
    assert f"mail {bad} attempt 1: failed (dead) after" in out and "ValueError: no such mailbox" in out
    assert "Traceback (most recent call last)" in out
    assert proc.returncode == 0


# --------------------------------------------------------------------------- time limits
def test_a_handler_past_its_task_timeout_is_failed_at_once_and_its_slot_freed(node, client):
    from jobbie import App

    # Given an app whose task may run 0.5 s, one worker slot, and a job whose handler sleeps 3 s
    app = App(server=node.endpoint, concurrency=1, wait_ms=200, drain_timeout=1.0)
    release = threading.Event()
    late = []

    @app.task("sleepy", timeout=0.5)
    def handler(job):
        if job.payload.get("slow"):
            release.wait(3.0)
            late.append(job.id)
            return {"late": True}
        return {"quick": job.payload["n"]}

    slow = client.enqueue("sleepy", {"slow": True}, max_retries=0)
    with running(app.worker()):
        job = wait_state(client, slow, "dead", timeout=10.0)
        failed_at = time.monotonic()
        # Then the attempt failed at its limit, with the worker's error
        assert job["last_error"] == "timeout after 0.5 s" and job["result"] is None
        # And the slot is free while the handler still sleeps: the next job runs and completes
        quick = client.enqueue("sleepy", {"n": 1})
        assert wait_state(client, quick, "completed", timeout=10.0)["result"] == {"quick": 1}
        assert not late, "the slow handler should still be running"
        release.set()
        wait_for(lambda: late, 5.0, message="the slow handler to return")
        time.sleep(0.3)
    # And its late result was ignored
    job = client.get_job(slow)
    assert job["state"] == "dead" and job["result"] is None and failed_at


def test_enqueue_timeout_ms_wins_over_the_task_timeout_and_reaches_the_handler(node, client):
    seen = []

    def handler(job):
        seen.append(job.timeout_ms)
        time.sleep(5.0)

    job_id = client.enqueue("limited", {}, timeout_ms=1000, max_retries=0)
    started = time.monotonic()
    with running(make_worker(node, {"limited": handler}, concurrency=1, timeouts={"limited": 30.0}),
                 join_timeout=20.0):
        job = wait_state(client, job_id, "dead", timeout=10.0)
    took = time.monotonic() - started
    # The worker (`timeout after 1 s`) or the server (`timeout after 1000 ms`) ended it, whichever came first
    assert job["last_error"] in ("timeout after 1 s", "timeout after 1000 ms"), job["last_error"]
    assert seen == [1000] and took < 5.0


def test_the_server_ends_an_attempt_at_its_timeout_whatever_the_heartbeats(node, client):
    # Given a job with a 1 s limit fetched by a bare client with a 60 s lease
    job_id = client.enqueue("bare", {}, timeout_ms=1000, max_retries=0)
    (job,) = client.fetch("bare", "w-bare", lease_ms=60_000)
    assert job["timeout_ms"] == 1000
    # When it keeps heartbeating
    answers = []
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        answer = client.heartbeat("w-bare", {job_id: {"attempt": 1}})[job_id]["status"]
        answers.append(answer)
        if answer == "lost":
            break
        time.sleep(0.2)
    # Then the lease still ends at the deadline and the attempt failed with the server's error
    assert answers[0] == "ok" and answers[-1] == "lost"
    rec = client.get_job(job_id)
    assert (rec["state"], rec["last_error"]) == ("dead", "timeout after 1000 ms")


# --------------------------------------------------------------------------- last progress and checkpoint
def test_progress_and_checkpoint_set_right_before_the_end_are_kept(node, client):
    # Given handlers that report progress and a checkpoint just before they return or raise,
    # under a worker whose periodic heartbeat never comes (60 s)
    def handler(job):
        job.progress({"done": 100})
        job.save_checkpoint({"step": "last", "n": job.payload["n"]})
        if job.payload.get("fail"):
            raise RuntimeError("after the last step")
        return "ok"

    ok_id = client.enqueue("last-words", {"n": 1})
    bad_id = client.enqueue("last-words", {"n": 2, "fail": True}, max_retries=0)
    quiet_id = client.enqueue("quiet", {})
    worker = make_worker(node, {"last-words": handler, "quiet": lambda job: "quiet"}, concurrency=1,
                         heartbeat_ms=60_000)
    beats = []
    heartbeat = worker.client.heartbeat
    worker.client.heartbeat = lambda worker_id, jobs: beats.append(dict(jobs)) or heartbeat(worker_id, jobs)
    with running(worker):
        ok = wait_state(client, ok_id, "completed")
        bad = wait_state(client, bad_id, "dead")
        wait_state(client, quiet_id, "completed")
    # Then both outcomes carry the last progress and checkpoint
    assert ok["progress"] == {"done": 100} and ok["checkpoint"] == {"step": "last", "n": 1}
    assert bad["progress"] == {"done": 100} and bad["checkpoint"] == {"step": "last", "n": 2}
    # And exactly one heartbeat per job with unsent progress went out (none for the quiet job)
    assert sorted(j for beat in beats for j in beat) == sorted([ok_id, bad_id])
    assert all(set(entry) == {"progress", "attempt"} for beat in beats for entry in beat.values())


def test_the_default_heartbeat_lets_a_cancel_reach_the_handler_within_about_2_s(node, client):
    job_id = client.enqueue("cancel-default", {})
    started, saw = threading.Event(), threading.Event()

    def handler(job):
        started.set()
        while True:
            try:
                job.check()
            except Cancelled:
                saw.set()
                raise
            time.sleep(0.02)

    # Given a worker with the default lease (30 s) and no heartbeat_ms
    worker = make_worker(node, {"cancel-default": handler}, concurrency=1)
    assert worker.heartbeat_s == 2.0
    with running(worker):
        assert started.wait(10.0)
        # When the job is cancelled / Then the handler sees it within one interval (plus a commit)
        client.cancel(job_id)
        at = time.monotonic()
        assert saw.wait(5.0)
        assert time.monotonic() - at < 2.6
        wait_state(client, job_id, "cancelled")


# --------------------------------------------------------------------------- batched outcomes
def answers(client, op):
    return sum(n for name, code, n in client.status()["gateway"]["answers"] if name == op and code == "OK")


def test_jobs_that_finish_together_are_reported_in_one_ack_batch(node, client):
    # Given 8 jobs, a handler that lets them all finish at the same moment, and 8 slots
    ids = [client.enqueue("together", {"n": n}) for n in range(8)]
    gate = threading.Barrier(8, timeout=10)

    def handler(job):
        gate.wait()
        if job.payload["n"] == 3:
            raise RuntimeError("three fails")
        return {"n": job.payload["n"]}

    before = answers(client, "ack_batch")
    with running(make_worker(node, {"together": handler}, concurrency=8)):
        wait_for(lambda: all(job_state(client, j) == "completed" for j in ids if j != ids[3])
                 and client.get_job(ids[3])["last_error"], 20.0, interval=0.05, message="every job to be reported")
    # Then each job got its own outcome (the failed one is retried) ...
    states = {j: client.get_job(j) for j in ids}
    assert [states[j]["result"] for j in ids if j != ids[3]] == [{"n": n} for n in range(8) if n != 3]
    assert states[ids[3]]["last_error"].startswith("RuntimeError: three fails")
    # ... and most of them travelled together, in ack_batch frames
    assert answers(client, "ack_batch") > before


def test_ack_batch_over_the_wire_answers_each_job_in_its_place(node, client):
    # Given three active jobs
    for n in range(3):
        client.enqueue("wire", {"n": n})
    jobs = client.fetch("wire", worker_id="w-wire", count=3)
    a, b, c = jobs
    # When one frame acks two (one with a stale attempt) and fails one
    answer = client.ack_batch(acks=[{"job_id": a["job_id"], "attempt": a["attempt"], "result": "A"},
                                    {"job_id": b["job_id"], "attempt": b["attempt"] + 1}],
                              fails=[{"job_id": c["job_id"], "attempt": c["attempt"], "error": "no"}])
    # Then the answers are in order, the stale one refused alone
    assert answer["acks"][0] == {"ok": {"state": "completed"}}
    assert answer["acks"][1]["err"]["reason"] == "lease_lost"
    assert answer["fails"][0]["ok"]["state"] == "retrying"
    assert [job_state(client, j["job_id"]) for j in jobs] == ["completed", "active", "retrying"]
    # And a bad item refuses the whole frame, naming it
    from jobbie.transport.errors import InvalidArgument
    with pytest.raises(InvalidArgument) as caught:
        client.ack_batch(acks=[{"job_id": b["job_id"]}, {"job_id": b["job_id"], "bogus": 1}])
    assert caught.value.field == "acks[1].bogus"
    assert job_state(client, b["job_id"]) == "active"


def test_a_slot_takes_the_next_job_while_the_last_outcome_is_reported(node, client):
    # Given a worker with one slot and ten short jobs
    ids = [client.enqueue("quick", {"n": n}) for n in range(10)]
    seen = []
    with running(make_worker(node, {"quick": lambda job: seen.append(job.payload["n"])}, concurrency=1)):
        wait_for(lambda: all(job_state(client, j) == "completed" for j in ids), 20.0, interval=0.05,
                 message="every job to be completed")
    # Then every job ran exactly once, one at a time
    assert sorted(seen) == list(range(10))
