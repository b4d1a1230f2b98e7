"""Closed-loop load: N virtual clients, each with its own DEALER socket and one request in flight.

The clients are spread over a few driver processes (one event loop each, no
threads), so the harness itself stays cheap and every client is a separate
connection to the server (admission sees them as separate clients). A client
that is told RESOURCE_EXHAUSTED waits the hinted `retry_after_ms` and sends
the same request again, as the real client library does. Each driver returns
its latencies and its errors counted by code; nothing is printed per request.
"""
from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import queue
import time
from array import array

import msgpack
import zmq

from jobbie.transport import curve

#: How long to wait for the answers still in flight when the run ends.
DRAIN_S = 10.0


class Workload:
    """What one virtual client sends. Subclasses build requests and read replies."""

    def first(self, client: int) -> tuple[str, dict]:
        raise NotImplementedError

    def next(self, client: int, op: str, reply: dict) -> tuple[tuple[str, dict] | None, int, float]:
        """(next request or None, units of work the reply completed, delay before sending it in s)."""
        raise NotImplementedError


def _run_driver(endpoint, clients, workload, duration_s, start_at, out, curve_server_key=None):
    ctx = zmq.Context()
    socks = []
    endpoints = [e.strip() for e in endpoint.split(",") if e.strip()]
    # A node with --curve: each client its own fresh key pair, as the client library makes one.
    server_keys = curve.server_keys(curve_server_key, len(endpoints)) if curve_server_key else None
    for n, c in enumerate(clients):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        # Several nodes (a cluster): spread the clients over them.
        curve.secure(s, server_keys[n % len(endpoints)] if server_keys else None)
        s.connect(endpoints[n % len(endpoints)])
        socks.append(s)
    poller = zmq.Poller()
    index = {}
    for i, s in enumerate(socks):
        poller.register(s, zmq.POLLIN)
        index[s] = i
    pack = msgpack.Packer(use_bin_type=True).pack
    latencies = array("d")
    errors: dict[str, int] = {}
    units = 0
    seq = 0
    pending: dict[int, tuple[int, str, dict, float]] = {}  # req id -> (client, op, args, sent at)
    timers: list = []  # (send at, client, op, args)

    client_key = getattr(workload, "client_key", None)
    token = os.environ.get("JOBBIE_TOKEN")  # a node started with --auth (bench --auth true)

    def send(i, op, args):
        nonlocal seq
        seq += 1
        pending[seq] = (i, op, args, time.perf_counter())
        msg = {"id": seq, "op": op, "args": args}
        if client_key:
            msg["client"] = client_key
        if token:
            msg["token"] = token
        socks[i].send(pack(msg))

    while time.time() < start_at:
        time.sleep(0.001)
    t_end = time.perf_counter() + duration_s
    for i, c in enumerate(clients):
        op, args = workload.first(c)
        send(i, op, args)
    stopping = False
    drain_end = t_end + DRAIN_S
    while pending or (timers and not stopping):
        now = time.perf_counter()
        if not stopping and now >= t_end:
            stopping = True
        if stopping and now >= drain_end:
            break
        while timers and timers[0][0] <= now and not stopping:
            _, i, op, args = heapq.heappop(timers)
            send(i, op, args)
        wait_ms = 50
        if timers and not stopping:
            wait_ms = max(0, min(wait_ms, (timers[0][0] - now) * 1000))
        for sock, _ in poller.poll(wait_ms):
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                reply = msgpack.unpackb(frame, raw=False)
                entry = pending.pop(reply.get("id"), None)
                if entry is None:
                    continue
                i, op, args, sent_at = entry
                done_at = time.perf_counter()
                if "err" in reply:
                    code = reply["err"].get("code", "?")
                    errors[code] = errors.get(code, 0) + 1
                    if not stopping:
                        delay = (reply["err"].get("retry_after_ms") or 50) / 1000.0
                        heapq.heappush(timers, (done_at + delay, i, op, args))
                    continue
                if sent_at < t_end:
                    latencies.append(done_at - sent_at)
                # (the ceiling's echo answers with the request itself: no "ok" key)
                nxt, done_units, delay = workload.next(clients[i], op, reply.get("ok", reply))
                if sent_at < t_end:
                    units += done_units
                if nxt is not None and not stopping:
                    if delay > 0:
                        heapq.heappush(timers, (done_at + delay, i, nxt[0], nxt[1]))
                    else:
                        send(i, *nxt)
    out.put({"latencies": latencies.tobytes(), "errors": errors, "units": units, "requests": len(latencies),
             "hung": len(pending)})
    for s in socks:
        s.close()
    ctx.term()


def collect(out, n: int, procs: list, deadline: float, duration_s: float) -> dict:
    """The `n` driver results waiting in `out`, merged (latencies sorted, errors summed by code)."""
    results = []
    while len(results) < n:
        try:
            results.append(out.get(timeout=0.5))
        except queue.Empty:
            if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise RuntimeError("a benchmark driver process failed; see its traceback above")
    latencies = array("d")
    errors: dict[str, int] = {}
    for r in results:
        chunk = array("d")
        chunk.frombytes(r["latencies"])
        latencies.extend(chunk)
        for code, count in r["errors"].items():
            errors[code] = errors.get(code, 0) + count
    return {"latencies": sorted(latencies), "errors": errors, "units": sum(r["units"] for r in results),
            "requests": sum(r["requests"] for r in results), "hung": sum(r["hung"] for r in results),
            "duration_s": duration_s}


def run(endpoint: str, workload: Workload, concurrency: int, duration_s: float, processes: int | None = None,
        curve_server_key: str | None = None):
    """Drive `concurrency` clients for `duration_s`; returns merged raw results. With `curve_server_key`
    (a node started with --curve) every client speaks CURVE."""
    return run_groups(endpoint, [(workload, concurrency)], duration_s, processes, curve_server_key)[0]


def run_groups(endpoint: str, groups: list, duration_s: float, processes: int | None = None,
               curve_server_key: str | None = None) -> list[dict]:
    """Drive several client groups at once (e.g. a flood and a light client); one result per group."""
    ctx = mp.get_context("spawn")
    out_queues, procs = [], []
    start_at = time.time() + 1.5
    for workload, concurrency in groups:
        n_proc = processes or min(concurrency, max(1, (os.cpu_count() or 2) // 2))
        out = ctx.Queue()
        members = [list(range(concurrency))[p::n_proc] for p in range(n_proc)]
        members = [m for m in members if m]
        for m in members:
            procs.append(ctx.Process(target=_run_driver, args=(endpoint, m, workload, duration_s, start_at, out,
                                                                curve_server_key)))
        out_queues.append((out, len(members)))
    for p in procs:
        p.start()
    deadline = time.monotonic() + duration_s + DRAIN_S + 60
    merged = [collect(out, n, procs, deadline, duration_s) for out, n in out_queues]
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    return merged
