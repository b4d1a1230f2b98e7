"""Queue management through a real node: concurrency, throttle, cron schedules, retention and the CLI.

Timing checks are tolerant (a shared 2-core box) but each would fail if the rule were broken:
a missing wake-up shows as a wait of a whole long-poll (8 s), a double fire as a duplicate id.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from jobbie.storage.schedules import schedule_job_id
from jobbie.transport.errors import NotFound

from .conftest import wait_for

pytestmark = pytest.mark.timeout(90)

CLI = [sys.executable, "-m", "jobbie.cli.main"]


def jobbie(node, *args, timeout: float = 30.0):
    return subprocess.run([*CLI, *map(str, args), "--server", node.endpoint], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def ok_json(proc) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return json.loads(proc.stdout)


def one_line_error(proc, prefix: str):
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def run_workers(node, n_workers: int, queue: str, work, stop: threading.Event, count: int = 1,
                wait_ms: int = 8000):
    """Threads that long-poll `queue` and call work(client, worker_id, job) for each job until `stop`."""
    errors = []

    def loop(i):
        client = node.client(timeout=5.0, retry_for=15.0)
        worker = f"w{i}"
        try:
            while not stop.is_set():
                for job in client.fetch(queue, worker, count=count, wait_ms=wait_ms):
                    work(client, worker, job)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(n_workers)]
    for t in threads:
        t.start()
    return threads, errors


def finish(threads, stop, errors, client, queue):
    stop.set()
    # Parked long-polls end at wait_ms; one job per worker lets them return at once.
    for _ in threads:
        client.enqueue(queue, "release")
    for t in threads:
        t.join(timeout=15)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors


# ====================================================================== concurrency

def test_concurrency_one_never_lets_two_jobs_of_the_queue_run(node, client):
    # Given a singleton queue with 12 jobs, and 4 workers long-polling it at once
    client.call("set_concurrency", queue="solo", max=1)
    ids = [client.enqueue("solo", i) for i in range(12)]
    lock = threading.Lock()
    running, peak, done = [0], [0], []
    stop = threading.Event()
    watcher = node.client()

    def work(c, worker, job):
        if job["payload"] == "release":
            c.ack(job["job_id"], attempt=job["attempt"])
            return
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        # While it runs, the server shows exactly this job active on the queue
        states = Counter(watcher.get_job(j)["state"] for j in ids)
        assert states["active"] == 1, states
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        c.ack(job["job_id"], attempt=job["attempt"])
        with lock:
            done.append(job["job_id"])

    started = time.monotonic()
    threads, errors = run_workers(node, 4, "solo", work, stop)
    wait_for(lambda: len(done) == 12 or errors, 60, interval=0.05, message="all 12 jobs done")
    elapsed = time.monotonic() - started
    finish(threads, stop, errors, client, "solo")
    # Then they ran one at a time, every one of them, and an ack woke the next parked fetch at once
    # (without that wake-up each job would wait out an 8 s long-poll)
    assert peak[0] == 1 and sorted(done) == sorted(ids)
    assert elapsed < 25, elapsed
    row = next(q for q in client.queues() if q["name"] == "solo")
    assert row["completed"] == 12 + len(threads) and row["max_concurrency"] == 1  # (+ the release jobs)


# ====================================================================== throttle

def test_throttled_queue_never_exceeds_its_rate_per_window(node, client):
    # Given 12 jobs on a queue throttled to 3 per second, and 3 workers asking for 2 at a time
    client.call("set_throttle", queue="slow", rate=3, period_ms=1000)
    ids = [client.enqueue("slow", i) for i in range(12)]
    done, fetched_at = [], []
    lock = threading.Lock()
    stop = threading.Event()

    def work(c, worker, job):
        if job["payload"] == "release":
            c.ack(job["job_id"], attempt=job["attempt"])
            return
        with lock:
            fetched_at.append(time.time())
        c.ack(job["job_id"], attempt=job["attempt"])
        with lock:
            done.append(job["job_id"])

    started = time.monotonic()
    threads, errors = run_workers(node, 3, "slow", work, stop, count=2)
    wait_for(lambda: len(done) == 12 or errors, 60, interval=0.05, message="all 12 jobs done")
    elapsed = time.monotonic() - started
    client.call("remove_throttle", queue="slow")
    finish(threads, stop, errors, client, "slow")
    # Then no window of the state clock handed out more than 3 (started_at is the fetch's state-clock time)
    per_window = Counter(client.get_job(j)["started_at"] // 1000 for j in ids)
    assert max(per_window.values()) <= 3, per_window
    assert len(per_window) >= 4
    # and the client saw at most 3 fetches in any window it measured (its clock is the node's here)
    assert max(Counter(int(t) for t in fetched_at[:12]).values()) <= 3
    # and it took about four windows, not four long-polls: the tick woke the parked fetches
    assert 2.0 <= elapsed < 15, elapsed


# ====================================================================== cron schedules

def test_a_cron_schedule_fires_on_time_and_never_twice(node, client):
    # Given a schedule firing every 2 s (the seconds-field extension)
    created = client.call("create_schedule", name="every2", queue="cron", cron="*/2 * * * * *", payload={"k": 1})
    first = created["next_fire_at"]
    assert first % 2000 == 0
    # When we wait for three fires
    wait_for(lambda: client.call("list_schedules")["schedules"][0]["fires"] >= 3, 15, interval=0.1,
             message="three fires")
    client.call("delete_schedule", name="every2")
    rec_count = next(q for q in client.queues() if q["name"] == "cron")["pending"]
    # Then every fire time made exactly the job whose id derives from it, close to that time
    jobs = []
    fire = first
    while len(jobs) < rec_count:
        job = client.get_job(schedule_job_id("every2", fire))
        jobs.append(job)
        fire += 2000
    for job in jobs:
        assert job["schedule"]["name"] == "every2" and job["payload"] == {"k": 1}
        lateness = job["created_at"] - job["schedule"]["fire_at"]
        assert 0 <= lateness < 1000, lateness
    assert len({j["id"] for j in jobs}) == rec_count >= 3
    # and nothing fires after the delete
    time.sleep(2.5)
    assert next(q for q in client.queues() if q["name"] == "cron")["pending"] == rec_count


def test_missed_fires_after_a_restart_make_one_job(node_factory):
    node = node_factory("restart")
    client = node.client()
    first = client.call("create_schedule", name="s", queue="cron", cron="*/2 * * * * *")["next_fire_at"]
    wait_for(lambda: client.call("list_schedules")["schedules"][0]["fires"] >= 1, 10, message="a first fire")
    # When the node is down for about 7 s (three or four fire times)
    assert node.stop(timeout=20) == 0
    time.sleep(7)
    node.start()
    wait_for(lambda: client.call("list_schedules")["schedules"][0]["fires"] >= 3, 20,
             message="fires after the restart")
    client.call("delete_schedule", name="s")
    time.sleep(0.3)
    # Then every job is the one of its fire time; exactly one of them was made late (the fire times
    # missed while down made one job, not a burst), and the others on time
    pending = next(q for q in client.queues() if q["name"] == "cron")["pending"]
    jobs, fire = [], first
    while len(jobs) < pending and fire < first + 120_000:
        try:
            jobs.append(client.get_job(schedule_job_id("s", fire)))
        except NotFound:
            pass
        fire += 2000
    assert len(jobs) == pending >= 3
    late = [j for j in jobs if j["created_at"] - j["schedule"]["fire_at"] > 1000]
    assert len(late) == 1, [(j["schedule"]["fire_at"], j["created_at"]) for j in jobs]
    # and the schedule went on from the restart: no fire time between the late one and now is missing
    after = [j["schedule"]["fire_at"] for j in jobs if j["schedule"]["fire_at"] > late[0]["schedule"]["fire_at"]]
    assert after and after[0] - late[0]["schedule"]["fire_at"] >= 2000


# ====================================================================== retention

def test_completed_jobs_are_pruned_after_the_retention(node_factory):
    node = node_factory("retention", extra_args=["--completed-retention-ms", "1500"])
    client = node.client()
    done = [client.enqueue("r", i) for i in range(3)]
    dead = client.enqueue("r", "x", max_retries=0)
    for job in client.fetch("r", "w", count=4):
        if job["job_id"] == dead:
            client.fail(dead, "boom", attempt=1)
        else:
            client.ack(job["job_id"], attempt=1)
    acked = time.monotonic()
    # Right after the ack they are still there
    assert all(client.get_job(j)["state"] == "completed" for j in done)

    def gone():
        try:
            client.get_job(done[-1])
        except NotFound:
            return True
        return False

    wait_for(gone, 10, interval=0.05, message="the completed jobs to be pruned")
    waited = time.monotonic() - acked
    # Then they went after about the retention, all of them, and the dead job stays
    assert 1.2 <= waited < 6, waited
    for j in done:
        with pytest.raises(NotFound):
            client.get_job(j)
    assert client.get_job(dead)["state"] == "dead"
    row = next(q for q in client.queues() if q["name"] == "r")
    assert row["completed"] == 0 and row["dead"] == 1


def test_workers_not_seen_for_the_retention_are_forgotten(node_factory):
    node = node_factory("worker-retention", extra_args=["--worker-retention-ms", "800"])
    client = node.client()
    client.enqueue("wr", 1)
    # Given a worker that fetched once and then went away
    assert client.fetch("wr", "w-gone", count=1)
    assert [w["worker_id"] for w in client.call("list_workers")["workers"]] == ["w-gone"]
    seen = time.monotonic()

    def forgotten():
        return client.call("list_workers")["workers"] == []

    # Then the lifecycle's sweep forgets it after about the retention (a pass a second at most)
    wait_for(forgotten, 10, interval=0.05, message="the worker to be forgotten")
    assert 0.7 <= time.monotonic() - seen < 5
    # And it is listed again once it fetches again
    client.fetch("wr", "w-gone", count=1)
    assert [w["worker_id"] for w in client.call("list_workers")["workers"]] == ["w-gone"]


# ====================================================================== CLI

def test_management_commands(node, client):
    a, b = client.enqueue("cli-a", 1), client.enqueue("cli-a", 2)
    assert ok_json(jobbie(node, "move", a, "cli-b", "--output", "json")) == {"state": "pending"}
    assert "moved" in jobbie(node, "move", b, "cli-b").stdout
    assert ok_json(jobbie(node, "priority", b, "critical", "--output", "json")) == \
        {"state": "pending", "priority": "critical"}
    assert [j["job_id"] for j in client.fetch("cli-b", "w", count=2)] == [b, a]
    client.fail(b, "boom", attempt=1)
    client.ack(a, attempt=1)
    for i in range(3):
        client.enqueue("cli-c", i)
    assert ok_json(jobbie(node, "concurrency", "cli-c", "2", "--output", "json")) == {}
    assert ok_json(jobbie(node, "throttle", "cli-c", "5", "1000", "--output", "json")) == {}
    text = jobbie(node, "queues").stdout
    row = next(line.split() for line in text.splitlines() if line.startswith("cli-c"))
    assert row[-2:] == ["2", "5/1000ms"], text
    assert "no concurrency limit" in jobbie(node, "concurrency", "cli-c", "none").stdout
    assert "not throttled" in jobbie(node, "unthrottle", "cli-c").stdout
    assert ok_json(jobbie(node, "drain", "cli-c", "--output", "json"))["deleted"] == 3
    assert ok_json(jobbie(node, "clear", "cli-c", "--output", "json"))["deleted"] == 0
    workers = ok_json(jobbie(node, "workers", "--output", "json"))["workers"]
    assert [w["worker_id"] for w in workers] == ["w"]
    assert jobbie(node, "workers").stdout.splitlines()[0].split() == ["WORKER", "HOSTNAME", "LAST_SEEN", "ACTIVE",
                                                                      "JOBS"]
    # dead: b is retrying (it has retries left); one that has none is listed with its error
    c = client.enqueue("cli-e", 3, max_retries=0)
    client.fetch("cli-e", "w")
    client.fail(c, "out of cheese", attempt=1)
    dead = ok_json(jobbie(node, "dead", "cli-e", "--output", "json"))
    assert [(j["job_id"], j["last_error"]) for j in dead["jobs"]] == [(c, "out of cheese")] and dead["cursor"] is None
    text = jobbie(node, "dead").stdout.splitlines()
    assert text[0].split() == ["JOB", "QUEUE", "ATTEMPTS", "DEAD_AT", "LAST_ERROR"] and text[1].split()[0] == c
    # schedules
    made = ok_json(jobbie(node, "schedule-add", "nightly", "reports", "0 3 * * *", "--timezone", "Europe/Berlin",
                          "--payload", '{"k": [1, 2]}', "--output", "json"))
    assert made["payload"] == {"k": [1, 2]} and made["timezone"] == "Europe/Berlin" and made["replaced"] is False
    listed = jobbie(node, "schedules").stdout.splitlines()
    assert listed[0].split()[0] == "SCHEDULE" and listed[1].split()[0] == "nightly" and "0 3 * * *" in listed[1]
    one_line_error(jobbie(node, "schedule-add", "bad", "q", "0 25 * * *"), "jobbie: INVALID_ARGUMENT: cron: hour")
    one_line_error(jobbie(node, "schedule-add", "bad", "q", "0 1 * * *", "--timezone", "Nowhere/Town"),
                   "jobbie: INVALID_ARGUMENT: unknown time zone")
    assert "deleted schedule" in jobbie(node, "schedule-delete", "nightly").stdout
    one_line_error(jobbie(node, "schedule-delete", "nightly"), "jobbie: NOT_FOUND")
    # delete-queue: refused without --confirm, refused while active, then done
    one_line_error(jobbie(node, "delete-queue", "cli-b"), "jobbie: delete-queue deletes every job")
    assert ok_json(jobbie(node, "delete-queue", "cli-b", "--confirm", "--output", "json"))["remaining"] == 0
    assert "cli-b" not in [q["name"] for q in client.queues()]
    client.enqueue("cli-d", 1)
    client.fetch("cli-d", "w")
    one_line_error(jobbie(node, "delete-queue", "cli-d", "--confirm"), "jobbie: FAILED_PRECONDITION")
    one_line_error(jobbie(node, "move", "no-such-job", "x"), "jobbie: NOT_FOUND")
    one_line_error(jobbie(node, "priority", a, "urgent"), "jobbie: INVALID_ARGUMENT")
