"""The load of a chaos run: producers that record what was acknowledged, and real library workers.

Producers enqueue numbered jobs, each call with its own request id (the client library retries
time-outs and UNAVAILABLE answers with that same id, and the server applies it at most once).
Workers are `jobbie.transport.worker.Worker` instances over a client that records every ack the
server acknowledged; their handler counts executions and fails a tenth of first attempts on
purpose, so retries run through the faults too.
"""
from __future__ import annotations

import random
import threading
import time
import uuid

from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError
from jobbie.transport.worker import Worker

from .nodes import HarnessError

#: The lease the workers take; a job still active this long (plus LEASE_GRACE_MS) after its fetch is stuck.
LEASE_MS = 3000
#: Time after a lease's end within which the lifecycle must have taken the job back.
LEASE_GRACE_MS = 5000
#: How long a producer's or worker's call rides through an outage (retrying with its request id).
RETRY_FOR_S = 30.0


class Producer(threading.Thread):
    """Enqueues numbered jobs; records every acknowledged one. Each enqueue has its own request_id."""

    def __init__(self, endpoints: str, name: str, queue: str):
        super().__init__(name=f"producer-{name}", daemon=True)
        self.prefix = name
        self.queue = queue
        self.client = Client(endpoints, timeout=1.0, retry_for=RETRY_FOR_S)
        #: job id -> its number; written by this thread only.
        self.acked: dict[str, int] = {}
        self.errors: list[str] = []
        self.max_latency = 0.0
        self.halt = threading.Event()

    def run(self):
        n = 0
        while not self.halt.is_set():
            n += 1
            started = time.monotonic()
            try:
                job_id = self.client.enqueue(self.queue, {"p": self.prefix, "n": n}, max_retries=5,
                                             backoff={"strategy": "fixed", "base_ms": 200},
                                             request_id=f"{self.prefix}-{n}-{uuid.uuid4().hex[:8]}")
            except JobbieError as exc:
                if not self.halt.is_set():
                    self.errors.append(f"{self.prefix} #{n}: {exc}")
                self.halt.wait(0.1)
                continue
            self.max_latency = max(self.max_latency, time.monotonic() - started)
            self.acked[job_id] = n
            self.halt.wait(0.01)

    def stop(self, now: bool = False):
        """Stop after the call in flight (`now`: close the client first, so that call ends at once).

        Raises:
            HarnessError: the thread did not end.
        """
        self.halt.set()
        if now:
            self.client.close()
        if self.ident is not None:  # started
            self.join(timeout=RETRY_FOR_S + 10)
        self.client.close()
        if self.is_alive():
            raise HarnessError(f"producer {self.prefix} did not stop")


class RecordingClient(Client):
    """The worker's client: remembers every ack the server acknowledged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.acked: set[str] = set()
        self.lock = threading.Lock()

    def ack(self, job_id, *args, **kwargs):
        answer = super().ack(job_id, *args, **kwargs)
        with self.lock:
            self.acked.add(job_id)
        return answer

    def ack_batch(self, acks=None, fails=None, **kwargs):
        # The worker sends the acks of jobs that finish together in one frame: each one the server
        # answered ok is acknowledged.
        answer = super().ack_batch(acks, fails, **kwargs)
        with self.lock:
            self.acked.update(item["job_id"] for item, result in zip(acks or (), answer["acks"]) if "ok" in result)
        return answer


class Workers:
    """Real Worker instances, each in a thread, with a handler that counts executions."""

    def __init__(self, endpoints: str, count: int, seed: int, queue: str):
        self.executions: dict[str, int] = {}
        self.failed_on_purpose: dict[str, int] = {}
        self.lock = threading.Lock()
        self.clients = [RecordingClient(endpoints, timeout=1.0, retry_for=RETRY_FOR_S) for _ in range(count)]
        self.workers = [Worker({queue: self.handle}, client=c, concurrency=4, lease_ms=LEASE_MS,
                               heartbeat_ms=800, wait_ms=500, drain_timeout=5.0, worker_id=f"chaos-w{i}")
                        for i, c in enumerate(self.clients)]
        self.threads = [threading.Thread(target=w.run, name=f"worker-{i}", daemon=True)
                        for i, w in enumerate(self.workers)]
        self.fail_first = random.Random(seed ^ 0x5EED)

    def handle(self, job):
        with self.lock:
            self.executions[job.id] = self.executions.get(job.id, 0) + 1
            fail = job.attempt == 1 and self.fail_first.random() < 0.1
            if fail:
                self.failed_on_purpose[job.id] = self.failed_on_purpose.get(job.id, 0) + 1
        time.sleep(0.002)
        if fail:
            raise RuntimeError("a first attempt that fails on purpose")
        return {"done": True}

    @property
    def acked(self) -> set[str]:
        out = set()
        for c in self.clients:
            with c.lock:
                out |= c.acked
        return out

    def acked_count(self) -> int:
        return sum(len(c.acked) for c in self.clients)

    def duplicate_executions(self) -> int:
        """Runs beyond one per job that a planned failure does not explain: a lease that a fault took
        away while the handler ran (delivery is at least once)."""
        with self.lock:
            return sum(max(0, n - 1 - self.failed_on_purpose.get(j, 0)) for j, n in self.executions.items())

    def retried_on_purpose(self) -> int:
        with self.lock:
            return sum(self.failed_on_purpose.values())

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self, now: bool = False):
        """Stop fetching and let running jobs finish (`now`: close the clients, so nothing waits).

        Raises:
            HarnessError: a worker thread did not end.
        """
        for w in self.workers:
            w.stop()
        if now:
            for c in self.clients:
                c.close()
        for t in self.threads:
            if t.is_alive():
                t.join(timeout=30)
        for c in self.clients:
            c.close()
        if any(t.is_alive() for t in self.threads):
            raise HarnessError("a worker did not stop")


def get_jobs(client: Client, job_ids, chunk: int = 200, timeout: float = 10.0) -> dict:
    """Pipelined get_job for many ids; returns job_id -> raw reply ({"ok": job} or {"err": ...})."""
    job_ids = list(job_ids)
    out = {}
    for i in range(0, len(job_ids), chunk):
        futures = [(j, client.submit("get_job", {"job_id": j})) for j in job_ids[i:i + chunk]]
        for j, fut in futures:
            out[j] = fut.result(timeout=timeout)
    return out
