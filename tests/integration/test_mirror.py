"""The mirror on a real node: search filters, crash catch-up, damaged files, bulk runs, rebuilds, the CLI.

Each test runs its own `jobbie server` (the `node` / `node_factory` fixtures, stopped by pid). Figures
(catch-up time, enqueue latency during a bulk) are printed; run with `-s` to see them.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from jobbie.actors.mirror.rows import COLUMNS, job_row
from jobbie.actors.mirror.source import JobSource
from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError
from jobbie.transport.ops import OPS

from .conftest import wait_for
from .helpers import Enqueuer, actor_row, queue_row, wait_restarted


# ------------------------------------------------------------------ helpers
def mirror_of(client: Client) -> dict:
    return client.status().get("mirror") or {}


def wait_mirrored(client: Client, timeout: float = 20.0, target: int | None = None) -> dict:
    """Wait until the mirror holds everything raft had applied when this was called (or up to `target`)."""
    if target is None:
        target = client.status()["applied_index"]

    def done():
        m = mirror_of(client)
        ok = (m.get("applied_index", -1) >= target and m.get("repair") is None and not m.get("backlog")
              and not m.get("stale") and m.get("available"))
        return m if ok else None

    return wait_for(done, timeout, interval=0.05, message=f"the mirror to reach index {target}")


def lmdb_and_mirror(data_dir: str):
    """(LMDB jobs, LMDB applied index, mirrored jobs, mirrored index), each job as its SQLite row:
    the mirror's row, and the row its LMDB record and errors make (rev, the record's CRC, included)."""
    source = JobSource(os.path.join(data_dir, "lmdb"))
    try:
        truth = {job_id: job_row(raw, errors)[0] for job_id, raw, errors in source.scan(None, 10**7, errors=True)}
        applied = source.applied_index()
    finally:
        source.close()
    conn = sqlite3.connect(os.path.join(data_dir, "mirror.sqlite"), timeout=10)
    try:
        mirrored = {row[0]: row for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs")}
        index = conn.execute("SELECT value FROM meta WHERE key = 'mirrored_index'").fetchone()[0]
    finally:
        conn.close()
    return truth, applied, mirrored, index


def assert_mirror_equals_lmdb(data_dir: str, timeout: float = 15.0):
    """Record by record, once the node is quiet (retried: the two reads are not one snapshot)."""
    last = {}

    def equal():
        truth, applied, mirrored, index = lmdb_and_mirror(data_dir)
        last.update(lmdb=len(truth), mirror=len(mirrored), missing=len(truth.keys() - mirrored.keys()),
                    extra=len(mirrored.keys() - truth.keys()),
                    differ=sum(1 for k in truth.keys() & mirrored.keys() if truth[k] != mirrored[k]),
                    applied=applied, index=index)
        return truth == mirrored

    try:
        wait_for(equal, timeout, interval=0.2, message="SQLite to equal LMDB")
    except AssertionError:
        raise AssertionError(f"mirror differs from LMDB: {last}")
    return last


def make_dead(client: Client, queue: str, n: int):
    """n dead jobs in `queue`: enqueued with a 1 ms TTL, expired by the lifecycle."""
    for i in range(0, n, 1000):
        client.enqueue_batch([{"queue": queue, "payload": {"i": i + k}, "expire_after_ms": 1}
                              for k in range(min(1000, n - i))])
    wait_for(lambda: queue_row(client, queue)["dead"] == n, 60.0, interval=0.2, message=f"{n} dead jobs")


def search_all(client: Client, **args) -> list[dict]:
    out, cursor = [], None
    while True:
        page = client.call("search_jobs", limit=1000, **args, **({"cursor": cursor} if cursor else {}))
        out += page["jobs"]
        if not page["has_more"]:
            return out
        cursor = page["cursor"]


# ------------------------------------------------------------------ search
@pytest.mark.timeout(120)
def test_search_by_each_filter_returns_exactly_the_right_jobs(node):
    client = node.client()
    t0 = int(time.time() * 1000)
    # Given jobs in many states, with tags, errors, batches, unique keys and odd payloads
    a = client.enqueue("mail", {"to": "a@x.io", "user": {"plan": "pro"}}, tags={"team": "red"}, priority="high")
    b = client.enqueue("mail", {"to": "b@y.io", "user": {"plan": "free"}}, tags={"team": "blue"})
    c = client.enqueue("reports", {"blob": b"\x00\xff"}, unique_key="rep-1", delay_ms=3_600_000)
    d = client.enqueue("reports", [1, 2, 3], hold=True, expire_after_ms=3_600_000)
    e = client.enqueue("work", {"n": 5}, max_retries=0)
    (job_e,) = client.fetch("work", "w1")
    client.fail(e, "SMTP 550 100%_full", attempt=job_e["attempt"])
    f = client.enqueue("work", {"n": 6})
    (job_f,) = client.fetch("work", "w2")
    client.ack(f, attempt=job_f["attempt"])
    batch = client.enqueue_batch([{"queue": "mail", "payload": {"n": 7}}, {"queue": "mail", "payload": "plain"}],
                                 batch={"callback_queue": "done"})
    g = client.enqueue("mail", {"n": 8})
    client.cancel(g)
    t1 = int(time.time() * 1000)
    wait_mirrored(client)
    jobs = {j: client.get_job(j) for j in [a, b, c, d, e, f, g, *batch["job_ids"]]}
    cases = [
        ({"queue": "mail"}, {a, b, g, *batch["job_ids"]}),
        ({"state": ["dead", "completed"]}, {e, f}),
        ({"state": ["scheduled"]}, {c}),
        ({"state": ["held"]}, {d}),
        ({"priority": "high"}, {a}),
        ({"tags": {"team": "red"}}, {a}),
        ({"payload_contains": "x.io"}, {a}),
        ({"payload_contains": "AP8="}, {c}),
        ({"payload_jq": '.user.plan == "free" or .n >= 7'}, {b, g, batch["job_ids"][0]}),
        ({"created_after": t0, "created_before": t1 + 1}, set(jobs)),
        ({"created_after": t1 + 1}, set()),
        ({"scheduled_after": t1 + 60_000}, {c}),
        ({"started_after": t0}, {e, f}),
        ({"completed_after": t0}, {f}),
        ({"expire_before": t1 + 7_200_000}, {d}),
        ({"worker_id": "w2"}, {f}),
        ({"has_errors": True}, {e}),
        ({"error_contains": "100%_FULL"}, {e}),
        ({"error_contains": "0%f"}, set()),
        ({"batch_id": batch["batch_id"]}, set(batch["job_ids"])),
        ({"unique_key": "rep-1"}, {c}),
        ({"attempt_min": 1}, {e, f}),
        ({"attempt_max": 0, "queue": "work"}, set()),
        ({"job_id_prefix": a[:-3]}, {j for j in jobs if j.startswith(a[:-3])}),
    ]
    for args, want in cases:
        # When searched by one filter / Then exactly the expected jobs, with their records
        got = search_all(client, **args)
        assert {j["id"] for j in got} == want, args
        for job in got:
            expected = {k: v for k, v in jobs[job["id"]].items() if k not in ("errors", "audit")}
            assert job == expected, (args, job["id"])
    # And a bad jq expression is INVALID_ARGUMENT naming the field and the position
    with pytest.raises(JobbieError) as info:
        client.call("search_jobs", payload_jq=".user.plan ==")
    assert (info.value.code, info.value.field, info.value.reason) == ("INVALID_ARGUMENT", "payload_jq", "query_syntax")
    assert "position 13" in info.value.message


# ------------------------------------------------------------------ crashes and damage
@pytest.mark.timeout(120)
def test_a_search_right_after_an_acknowledged_write_finds_it(node):
    client = node.client()
    client.enqueue("warm", 0)
    wait_mirrored(client)
    # Given writes acknowledged one by one / When each is followed at once by a search on the same node
    for i in range(1, 41):
        job_id = client.enqueue("ryw", {"i": i})
        found = client.call("search_jobs", queue="ryw", limit=1)
        # Then the search already holds it (the mirror waits for the gateway's newest index)
        assert found["total"] == i and found["jobs"][0]["id"] == job_id, (i, found["total"])
    # And after a bulk run answers, a search sees its effect
    moved = client.call("bulk", filter={"queue": "ryw"}, action="cancel")
    assert moved["affected"] == 40, moved
    assert client.call("search_jobs", queue="ryw", state=["cancelled"])["total"] == 40


def test_a_search_after_an_entry_that_changed_no_job_does_not_wait(node):
    client = node.client()
    client.enqueue("quiet", 0)
    wait_mirrored(client)
    waits = []
    for _ in range(9):
        # Given an entry that changed no job (a worker polling an empty queue) just answered
        assert client.fetch("nothing-here", "poller") == []
        # When a search follows on the same node
        started = time.perf_counter()
        assert client.call("search_jobs", queue="quiet")["total"] == 1
        waits.append(time.perf_counter() - started)
        time.sleep(0.03)
    # Then it is not held for raft's next status report (every 0.2 s; before the empty entries were
    # fed, these searches took ~150 ms)
    waits.sort()
    print(f"search after an empty fetch: median {waits[4] * 1000:.1f} ms, max {waits[-1] * 1000:.1f} ms")
    assert waits[4] < 0.06, waits


@pytest.mark.timeout(240)
def test_kill9_of_the_mirror_under_load_catches_up_and_equals_lmdb(node):
    client = node.client(timeout=10.0, retry_for=30.0)
    for i in range(20):
        client.enqueue_batch([{"queue": "bulkload", "payload": {"i": i * 1000 + k}} for k in range(1000)])
    wait_mirrored(client, timeout=60.0)
    old = actor_row(node.status(), "mirror")
    # Given a node under steady load
    loaders = [Enqueuer(node.endpoint, f"load{i}", timeout=2.0, retry_for=30.0, pause=0.0) for i in range(2)]
    for loader in loaders:
        loader.start()
    try:
        loaders[0].wait_acked(200, 20.0)
        # When the mirror process is killed with SIGKILL
        os.kill(old["pid"], signal.SIGKILL)
        killed = time.monotonic()
        row = wait_restarted(node, "mirror", old["pid"], timeout=20.0)
        restarted = time.monotonic()
        before = sum(len(x.acked) for x in loaders)
        time.sleep(2.0)
        during = sum(len(x.acked) for x in loaders) - before
    finally:
        for loader in loaders:
            loader.stop()
    stopped = time.monotonic()
    # Then it catches up: lag back to 0, every job in SQLite equal to LMDB, record by record. The
    # target is raft's index when the load stopped: the lifecycle's ticks go on applying entries
    # after that, so an index read later can be ahead of a mirror that has caught up.
    target = client.status()["applied_index"]
    m = wait_mirrored(client, timeout=60.0, target=target)
    caught_up = time.monotonic()
    assert m["lag"] == 0 or m["applied_index"] >= target
    summary = assert_mirror_equals_lmdb(node.data_dir)
    total = sum(len(x.acked) for x in loaders)
    print(f"\nmirror kill -9 under load: restarted after {restarted - killed:.2f}s (pid {row['pid']}), "
          f"{during} enqueues acked in the 2 s after, caught up {caught_up - stopped:.2f}s after the load stopped "
          f"({caught_up - killed:.2f}s after the kill); {summary['lmdb']} jobs equal; dropped_updates "
          f"{m['dropped_updates']}, reconciles {m.get('reconciles')}; {total} load enqueues")
    # (frames still queued in raft's socket reach the new process; only those the old one had taken
    # in without committing are lost, and then the chain shows a gap: either way SQLite ends equal)
    assert during > 0
    assert not any(x.errors for x in loaders), [x.errors[:3] for x in loaders]


@pytest.mark.timeout(240)
def test_a_stalled_mirror_loses_frames_and_repairs_the_gap(node):
    client = node.client(timeout=10.0, retry_for=30.0)
    client.enqueue_batch([{"queue": "base", "payload": i} for i in range(1000)])
    wait_mirrored(client)
    before = mirror_of(client)["dropped_updates"]
    pid = actor_row(node.status(), "mirror")["pid"]
    raft_log = os.path.join(node.data_dir, "logs", "raft.log")
    loaders = [Enqueuer(node.endpoint, f"stall{i}", timeout=2.0, retry_for=30.0, pause=0.0) for i in range(3)]
    # Given a mirror that stops taking frames (SIGSTOP) while writes go on, until raft drops frames
    os.kill(pid, signal.SIGSTOP)
    try:
        for loader in loaders:
            loader.start()
        wait_for(lambda: "mirror change feed" in open(raft_log).read(), 90.0, interval=0.2,
                 message="raft to drop change frames for the stalled mirror")
        # And raft's applies never waited for it: enqueues were acknowledged all along
        assert sum(len(x.acked) for x in loaders) > 1000
    finally:
        os.kill(pid, signal.SIGCONT)
        for loader in loaders:
            loader.stop()
    # When it runs again / Then it finds the gap, reconciles, and equals LMDB. The target is LMDB's
    # own applied index: the gateway's copy of raft's report can be 0.2 s old, from before the drop.
    started = time.monotonic()
    m = wait_mirrored(client, timeout=60.0, target=lmdb_and_mirror(node.data_dir)[1])
    print(f"\nstalled mirror: caught up {time.monotonic() - started:.2f}s after it resumed; dropped_updates "
          f"{m['dropped_updates']}, reconciles {m['reconciles']}")
    assert m["dropped_updates"] > before and m["reconciles"] >= 1
    assert_mirror_equals_lmdb(node.data_dir)


@pytest.mark.timeout(120)
def test_a_deleted_mirror_file_is_rebuilt(node):
    client = node.client()
    client.enqueue_batch([{"queue": "q", "payload": {"i": i}} for i in range(500)])
    wait_mirrored(client)
    before = mirror_of(client)["rebuilds"]
    path = os.path.join(node.data_dir, "mirror.sqlite")
    # When the SQLite file (and its WAL) is deleted under the running mirror
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    # Then it is rebuilt, and searches find every job
    wait_for(lambda: mirror_of(client)["rebuilds"] > before, 20.0, message="the rebuild after deletion")
    assert os.path.exists(path)
    assert client.call("search_jobs", queue="q")["total"] == 500
    client.enqueue("q", "after")
    wait_mirrored(client)
    assert client.call("search_jobs", queue="q")["total"] == 501
    assert_mirror_equals_lmdb(node.data_dir)


@pytest.mark.timeout(120)
def test_a_corrupted_mirror_file_is_rebuilt_at_start(node):
    client = node.client()
    client.enqueue_batch([{"queue": "q", "payload": {"i": i, "pad": "x" * 200}} for i in range(1000)])
    wait_mirrored(client)
    client.close()
    assert node.stop() == 0
    path = os.path.join(node.data_dir, "mirror.sqlite")
    size = os.path.getsize(path)
    # Given garbage over the header and in the middle of the file
    with open(path, "r+b") as f:
        f.write(b"\xde\xad\xbe\xef" * 1024)
        f.seek(size // 2)
        f.write(b"\x00\x13" * 4096)
    # When the node starts again
    node.start()
    client = node.client()
    # Then the mirror rebuilds it from LMDB and searches see everything
    m = wait_mirrored(client, timeout=30.0)
    assert m["rebuilds"] >= 1
    assert client.call("search_jobs", queue="q")["total"] == 1000
    assert_mirror_equals_lmdb(node.data_dir)


@pytest.mark.timeout(180)
def test_rebuild_mirror_swaps_without_failing_concurrent_searches(node):
    client = node.client()
    for i in range(20):
        client.enqueue_batch([{"queue": f"q{i % 4}", "payload": {"i": i * 1000 + k}} for k in range(1000)])
    wait_mirrored(client, timeout=60.0)
    before = mirror_of(client)["rebuilds"]
    failures, totals, halt = [], [], threading.Event()

    def searcher():
        with Client(node.endpoint, timeout=5.0, retry_for=0) as c:
            while not halt.is_set():
                try:
                    totals.append(c.call("search_jobs", queue="q1", state=["pending"])["total"])
                except JobbieError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        # When the mirror is rebuilt while searches keep coming (no retries on the searching clients)
        result = node.client(timeout=120.0, retry_for=0).call("rebuild_mirror")
        took = time.monotonic() - started
        time.sleep(0.3)
    finally:
        halt.set()
        for t in threads:
            t.join(timeout=10)
    print(f"\nrebuild_mirror of {result['jobs']} jobs: {took:.2f}s ({result['duration_ms']} ms in the mirror), "
          f"{len(totals)} searches meanwhile")
    # Then no search failed, every one saw all the jobs, and the new file is in place
    assert not failures, failures[:5]
    assert totals and set(totals) == {5000}
    assert result["jobs"] == 20_000
    wait_for(lambda: mirror_of(client)["rebuilds"] == before + 1, 5.0, message="the rebuild to be reported")
    assert_mirror_equals_lmdb(node.data_dir)


# ------------------------------------------------------------------ bulk
def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


@pytest.mark.timeout(300)
def test_bulk_retry_of_10000_dead_jobs_while_enqueues_keep_flowing(node):
    client = node.client(timeout=10.0, retry_for=30.0)
    make_dead(client, "dlq", 10_000)
    wait_mirrored(client, timeout=60.0)
    latencies, halt = [], threading.Event()

    def unary():
        with Client(node.endpoint, timeout=5.0, retry_for=30.0) as c:
            while not halt.is_set():
                started = time.perf_counter()
                c.enqueue("live", {"t": started})
                latencies.append((time.monotonic(), time.perf_counter() - started))
                time.sleep(0.002)

    thread = threading.Thread(target=unary)
    thread.start()
    try:
        time.sleep(1.0)
        baseline = [lat for _, lat in latencies]
        # When every dead job of the queue is retried by one bulk call (async: > 1000 jobs)
        bulk_started = time.monotonic()
        started = client.call("bulk", filter={"queue": "dlq", "state": ["dead"]}, action="retry")
        assert started["status"] == "running" and started["total"] == 10_000 and started["bulk_id"]
        progress = []

        def finished():
            s = client.call("bulk_status", bulk_id=started["bulk_id"])
            progress.append(s["done"])
            return s if s["status"] == "done" else None

        status = wait_for(finished, 180.0, interval=0.2, message="the bulk run to finish")
        bulk_ended = time.monotonic()
    finally:
        halt.set()
        thread.join(timeout=40)
    during = [lat for at, lat in latencies if bulk_started <= at <= bulk_ended]
    ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
    print(f"\nbulk retry of 10000 dead jobs: {bulk_ended - bulk_started:.2f}s, {len(progress)} progress polls; "
          f"unary enqueue during it: {len(during)} calls, p50 {ms(percentile(during, 0.5))}, "
          f"p99 {ms(percentile(during, 0.99))}, max {ms(max(during))}; before it: p50 "
          f"{ms(percentile(baseline, 0.5))}, p99 {ms(percentile(baseline, 0.99))}")
    # Then it completed with progress along the way, every job is pending again, and enqueues kept flowing
    assert (status["affected"], status["error_count"], status["total"]) == (10_000, 0, 10_000)
    assert progress == sorted(progress) and len(set(progress)) >= 3
    row = queue_row(client, "dlq")
    assert (row["pending"], row["dead"]) == (10_000, 0)
    assert len(during) >= 20, "unary enqueues stalled during the bulk run"
    assert percentile(during, 0.99) < 1.0 and max(during) < 3.0


@pytest.mark.timeout(120)
def test_small_bulk_actions_answer_when_done(node):
    client = node.client()
    ids = client.enqueue_batch([{"queue": "small", "payload": i} for i in range(30)])["job_ids"]
    wait_mirrored(client)
    result = client.call("bulk", job_ids=ids[:10], action="cancel")
    assert (result["status"], result["affected"], result["errors"]) == ("done", 10, [])
    result = client.call("bulk", job_ids=ids[:12] + ["job_missing"], action="requeue")
    # the 10 cancelled ones are requeued; 2 pending ones skipped; the unknown one is tried and refused
    assert (result["affected"], result["skipped"], result["error_count"]) == (10, 2, 1)
    assert result["errors"][0]["job_id"] == "job_missing" and result["errors"][0]["code"] == "NOT_FOUND"
    wait_mirrored(client)
    result = client.call("bulk", filter={"queue": "small", "payload_jq": ". >= 25"}, action="delete")
    assert result["affected"] == 5 and queue_row(client, "small")["pending"] == 25


@pytest.mark.timeout(120)
@pytest.mark.xfail(condition="move_job" not in OPS or "set_priority" not in OPS, strict=False,
                   reason="waiting for move_job / set_priority")
def test_bulk_move_and_change_priority(node):
    client = node.client()
    ids = client.enqueue_batch([{"queue": "from", "payload": i} for i in range(20)])["job_ids"]
    wait_mirrored(client)
    moved = client.call("bulk", filter={"queue": "from"}, action="move", move_to_queue="to")
    assert moved["affected"] == 20, moved
    changed = client.call("bulk", job_ids=ids[:5], action="change_priority", priority="critical")
    assert changed["affected"] == 5, changed
    wait_mirrored(client)
    assert client.call("search_jobs", queue="to")["total"] == 20
    assert client.call("search_jobs", queue="to", priority="critical")["total"] == 5


# ------------------------------------------------------------------ CLI
def jobbie(node, *args, stdin=None, timeout=60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobbie.cli.main", *args, "--server", node.endpoint],
                          input=stdin, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(180)
def test_cli_search_piped_into_bulk_retry_and_admin_rebuild(node):
    client = node.client()
    make_dead(client, "mail", 1500)
    wait_mirrored(client)
    # jobbie search ... --output json prints one job per line
    found = jobbie(node, "search", "--queue", "mail", "--state", "dead", "--limit", "5", "--output", "json")
    assert found.returncode == 0, found.stderr
    lines = found.stdout.strip().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["state"] == "dead" for line in lines)
    table = jobbie(node, "search", "--queue", "mail", "--jq", ".i < 3", "--state", "dead")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["JOB", "QUEUE", "STATE"]
    assert len(table.stdout.strip().splitlines()) == 4 and "3 of 3 matching jobs" in table.stderr
    # jobbie search --all --output json | jobbie bulk retry (a large run: async, with a progress line)
    pipe = subprocess.run(
        f"{sys.executable} -m jobbie.cli.main search --queue mail --state dead --all --output json "
        f"--server {node.endpoint} | {sys.executable} -m jobbie.cli.main bulk retry --server {node.endpoint}",
        shell=True, capture_output=True, text=True, timeout=120)
    assert pipe.returncode == 0, pipe.stderr
    assert "retry: 1500 of 1500 jobs affected" in pipe.stdout and "[#" in pipe.stderr
    assert queue_row(client, "mail")["pending"] == 1500
    status = jobbie(node, "status")
    assert status.returncode == 0 and "mirror      applied" in status.stdout
    rebuilt = jobbie(node, "admin", "rebuild-mirror")
    assert rebuilt.returncode == 0 and "mirror rebuilt: 1500 jobs" in rebuilt.stdout, rebuilt.stderr
    bad = jobbie(node, "search", "--jq", ".a ==")
    assert bad.returncode == 1 and "payload_jq" in bad.stderr and "position 5" in bad.stderr
