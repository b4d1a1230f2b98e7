"""The real Python worker library under load: one `Worker` with N handler slots on a pre-filled queue.

Unlike the lifecycle scenario (one virtual client per fetch-and-ack loop, written for the
benchmark), this runs `jobbie.transport.worker.Worker` as an application would: batched fetches
for its free slots, a thread per job, heartbeats, and the acks of jobs that finish together sent
in one `ack_batch`. A unit is a completed job; a latency is one job's turnaround in the worker,
from its handler starting to its ack being answered. The same shape of result as driver.run.
"""
from __future__ import annotations

import multiprocessing as mp
import threading
import time
from array import array

from .driver import DRAIN_S, collect
from .scenarios import QUEUE


def _run_worker(endpoint, concurrency, duration_s, start_at, out, work_ms, curve_server_key):
    import logging

    from jobbie.transport.client import Client
    from jobbie.transport.worker import Worker

    logging.getLogger("jobbie.worker").setLevel(logging.ERROR)
    started: dict[str, float] = {}
    latencies, counts = array("d"), [0]
    window = {}

    class Timed(Worker):
        def _release(self, job):
            done = time.perf_counter()
            began = started.pop(job.id, None)
            if began is not None and window["start"] <= began and done <= window["end"]:
                latencies.append(done - began)
                counts[0] += 1
            super()._release(job)

    def handler(job):
        started[job.id] = time.perf_counter()
        if work_ms:
            time.sleep(work_ms / 1000.0)
        return None

    client = Client(endpoint, curve_server_key=curve_server_key)
    worker = Timed({QUEUE: handler}, client=client, concurrency=concurrency, lease_ms=60_000, wait_ms=200,
                   drain_timeout=DRAIN_S, worker_id="bench-worker")
    while time.time() < start_at:
        time.sleep(0.001)
    window["start"] = time.perf_counter()
    window["end"] = window["start"] + duration_s
    threading.Timer(duration_s, worker.stop).start()
    worker.run()
    client.close()
    out.put({"latencies": latencies.tobytes(), "errors": {}, "units": counts[0], "requests": counts[0],
             "hung": 0})


def run_worker(endpoint: str, concurrency: int, duration_s: float, work_ms: float = 0.0,
               curve_server_key: str | None = None) -> dict:
    """One Worker process with `concurrency` slots for `duration_s`; merged raw results."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_run_worker, args=(endpoint, concurrency, duration_s, time.time() + 1.5, out, work_ms,
                                                 curve_server_key))
    proc.start()
    result = collect(out, 1, [proc], time.monotonic() + duration_s + DRAIN_S + 60, duration_s)
    proc.join(timeout=10)
    return result
