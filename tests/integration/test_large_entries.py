"""A three-node cluster under the largest requests the limits allow keeps its leader and keeps writing.

Large values cost raft's tick thread time (pysyncobj pickles, compresses, seals
and sends every entry to each follower on that thread); an entry that takes
longer than the election timeout costs the cluster its leader, and every byte
ahead of a small write in the log delays it. The limits, the admission's byte
caps (per entry and in flight, with small ops pipelined behind a large entry)
and the cheaper wire (actors/raft/wire.py) keep both short. This test drives the
largest documented requests at once (full-size enqueue_batch, concurrent
full-size enqueues, heartbeats with the largest checkpoints, acks with the
largest results) and measures the outage a small writer sees: the longest gap
between two of its successful writes, which must stay under a second, with no
election in between.
"""
from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError
from jobbie.transport.ops import Limits

from .cluster import Cluster
from .conftest import wait_for

#: How long the big writers run.
LOAD_S = 8.0
#: The longest a small writer may go without a successful write.
OUTAGE_MAX_S = 1.0


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "c")
    try:
        c.start()
        yield c
    finally:
        c.stop()


class Prober(threading.Thread):
    """Small enqueues back to back, each one bounded try; records when each one succeeded."""

    def __init__(self, endpoints: str):
        super().__init__(daemon=True)
        self.client = Client(endpoints, timeout=0.5, retry_for=0)
        self.ok_at: list[float] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                self.client.enqueue("probe", {"n": uuid.uuid4().hex})
                self.ok_at.append(time.monotonic())
            except JobbieError as exc:
                self.errors.append(f"{exc.code}/{exc.reason}")
            self.halt.wait(0.02)

    def longest_gap(self, start: float, end: float) -> float:
        points = [start] + [t for t in self.ok_at if start <= t <= end] + [end]
        return max(b - a for a, b in zip(points, points[1:]))


def big_blob(size: int) -> bytes:
    # Random bytes do not compress: the worst case for raft's transport.
    return os.urandom(size)


#: What a node without a cap on these values let through (the 8 MiB request frame is the only bound).
UNCAPPED = {"checkpoint_bytes_max": 2 * 1024 * 1024, "result_bytes_max": 1024 * 1024,
            "op_bytes_max": 7 * 1024 * 1024}


def cap(limits: Limits, name: str) -> int:
    return getattr(limits, name, UNCAPPED[name])


def run_big_writers(endpoints: str, limits: Limits, halt: threading.Event, errors: list, counts: dict):
    """The largest requests the limits allow, from several threads at once."""
    payload = limits.payload_bytes_max - 64
    per_job = min(limits.payload_bytes_max, limits.batch_bytes_max // 4) - 64

    def loop(name, fn):
        with Client(endpoints, timeout=5.0, retry_for=30.0) as client:
            while not halt.is_set():
                try:
                    fn(client)
                    counts[name] = counts.get(name, 0) + 1
                except JobbieError as exc:
                    errors.append(f"{name}: {exc.code}/{exc.reason}: {exc.message[:120]}")
                    halt.wait(0.1)

    def batch(client):
        client.enqueue_batch([{"queue": "big", "payload": big_blob(per_job)} for _ in range(4)])

    def single(client):
        client.enqueue("big", big_blob(payload))

    def worker(client):
        jobs = client.fetch("big", worker_id="w-big", count=4, lease_ms=60_000)
        if not jobs:
            return
        checkpoint = cap(limits, "checkpoint_bytes_max") - 64
        beats = {j["job_id"]: {"attempt": j["attempt"], "checkpoint": big_blob(checkpoint)} for j in jobs}
        # As many full-size checkpoints as one heartbeat may carry.
        room = max(1, cap(limits, "op_bytes_max") // cap(limits, "checkpoint_bytes_max"))
        items = list(beats.items())
        for i in range(0, len(items), room):
            client.heartbeat("w-big", dict(items[i:i + room]))
        for j in jobs:
            client.ack(j["job_id"], attempt=j["attempt"], result=big_blob(cap(limits, "result_bytes_max") - 64))

    threads = [threading.Thread(target=loop, args=("batch", batch), daemon=True)]
    threads += [threading.Thread(target=loop, args=(f"single{i}", single), daemon=True) for i in range(4)]
    threads += [threading.Thread(target=loop, args=("worker", worker), daemon=True)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.timeout(150)
def test_largest_documented_requests_keep_one_leader_and_no_write_outage_over_a_second(cluster):
    # Given a three-node cluster with one leader and a small writer
    leader = cluster.wait_leader()
    term = leader.try_status()["term"]
    prober = Prober(cluster.endpoints)
    prober.start()
    wait_for(lambda: len(prober.ok_at) >= 5, 10, message="the small writer to get going")
    # When the largest requests the limits allow arrive from six clients for a while
    halt, errors, counts = threading.Event(), [], {}
    started = time.monotonic()
    threads = run_big_writers(cluster.endpoints, Limits(), halt, errors, counts)
    time.sleep(LOAD_S)
    halt.set()
    for t in threads:
        t.join(timeout=40)
    ended = time.monotonic()
    prober.halt.set()
    prober.join(timeout=5)
    prober.client.close()
    gap = prober.longest_gap(started, ended)
    after = cluster.wait_leader(timeout=10)
    print(f"big requests done: {counts}; small writes {len(prober.ok_at)}, longest gap {gap:.2f}s, "
          f"probe errors {prober.errors[:5]}, big-writer errors {errors[:3]}")
    # Then the big requests went through, the leader and its term stayed, and no write waited over a second
    assert counts.get("batch", 0) >= 1 and sum(v for k, v in counts.items() if k.startswith("single")) >= 4, counts
    assert counts.get("worker", 0) >= 1, counts
    assert not [e for e in errors if "INVALID_ARGUMENT" in e], errors[:5]
    assert after is leader and after.try_status()["term"] == term, (
        f"leadership changed under large requests: was {leader.node_id} term {term}, now {after.node_id} "
        f"{after.try_status()}")
    assert gap < OUTAGE_MAX_S, f"a small write waited {gap:.2f}s (errors {prober.errors[:10]})"
    cluster.wait_converged(timeout=60)
