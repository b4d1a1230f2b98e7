"""The benchmark scenarios: one workload class per scenario.

- unary:     every client enqueues one job per request.
- batch:     every client enqueues `batch_size` jobs per request (enqueue_batch).
- lifecycle: every client is a worker: fetch one job, (work), ack it; the queue is pre-filled.
- mixed:     half the clients enqueue, half fetch (long-poll) and ack, at the same time.
- ceiling:   unary frames against the bare ROUTER echo (bench/ceiling.py).
- fairness:  a light client (c1) alone, then the same next to one client flooding at c100.
- worker:    the real Python Worker library with N handler slots (bench/worker_driver.py).
"""
from __future__ import annotations

from .driver import Workload

QUEUE = "bench"


def _payload(size: int) -> dict:
    return {"data": "x" * max(0, size - 16)}


#: The agent config of agent jobs (`--agent true`): guardrails that never trip in a bench run.
AGENT = {"max_iterations": 100_000, "max_cost_usd": 1e6}


class Unary(Workload):
    def __init__(self, payload_bytes: int = 64, client_key: str | None = None, queue: str = QUEUE,
                 agent: bool = False):
        self.args = {"queue": queue, "payload": _payload(payload_bytes)}
        if agent:
            self.args["agent"] = AGENT
        self.client_key = client_key
        self.queue = queue

    def first(self, client):
        return "enqueue", self.args

    def next(self, client, op, reply):
        return ("enqueue", self.args), 1, 0.0


class Batch(Workload):
    def __init__(self, batch_size: int = 1000, payload_bytes: int = 64, queue: str = QUEUE):
        self.args = {"jobs": [{"queue": queue, "payload": _payload(payload_bytes)} for _ in range(batch_size)]}
        self.batch_size = batch_size

    def first(self, client):
        return "enqueue_batch", self.args

    def next(self, client, op, reply):
        return ("enqueue_batch", self.args), len(reply["job_ids"]), 0.0


class Lifecycle(Workload):
    """A worker per client: fetch -> (work_ms) -> ack -> fetch ..."""

    #: What each ack carries with `usage=True` (the price table is empty: cost as reported).
    USAGE = {"input_tokens": 1200, "output_tokens": 300, "model": "bench-model", "provider": "bench",
             "cost_usd": 0.0042, "latency_ms": 850}

    def __init__(self, work_ms: float = 0.0, wait_ms: int = 1000, queue: str = QUEUE, usage: bool = False,
                 agent: bool = False):
        self.usage = usage
        self.agent = agent  # agent jobs: every ack is an iteration that continues (recorded, re-queued)
        self.work_s = work_ms / 1000.0
        self.wait_ms = wait_ms
        self.queue = queue

    def fetch(self, client):
        return "fetch", {"queues": [self.queue], "worker_id": f"bench-w{client}", "count": 1,
                         "wait_ms": self.wait_ms}

    def first(self, client):
        return self.fetch(client)

    def next(self, client, op, reply):
        if op == "fetch":
            jobs = reply["jobs"]
            if not jobs:
                return self.fetch(client), 0, 0.0
            job = jobs[0]
            ack = {"job_id": job["job_id"], "attempt": job["attempt"]}
            if self.usage:
                ack["usage"] = self.USAGE
            if self.agent:
                ack["agent_status"] = "continue"
                ack["checkpoint"] = {"i": job.get("iteration", 1)}
            return ("ack", ack), 0, self.work_s
        return self.fetch(client), 1, 0.0


class Mixed(Workload):
    """Even clients produce, odd clients work."""

    def __init__(self, payload_bytes: int = 64, work_ms: float = 0.0):
        self.producer = Unary(payload_bytes)
        self.worker = Lifecycle(work_ms)

    def first(self, client):
        return (self.producer if client % 2 == 0 else self.worker).first(client)

    def next(self, client, op, reply):
        if client % 2 == 0:
            return self.producer.next(client, op, reply)
        return self.worker.next(client, op, reply)
