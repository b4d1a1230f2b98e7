"""Closed-loop HTTP load: N keep-alive connections, each with one `POST .../jobs` in flight.

The same shape of result as driver.run, so the same summaries and tables apply. Each driver
process runs an asyncio loop that writes the request bytes itself and reads the answers with
Content-Length framing (HTTP/1.1 keep-alive): the harness stays cheap next to the server.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import time
import urllib.parse
from array import array

from .driver import DRAIN_S, collect
from .scenarios import QUEUE, _payload


def _request(host: str, port: int, queue_name: str, payload_bytes: int) -> bytes:
    body = json.dumps({"payload": _payload(payload_bytes)}).encode()
    head = (f"POST /v1/queues/{queue_name}/jobs HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _client(host, port, request, t_end, latencies, errors, counts):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < t_end:
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            done = time.perf_counter()
            if status == 200:
                if sent < t_end:
                    latencies.append(done - sent)
                    counts[0] += 1
                continue
            try:
                err = json.loads(body)["error"]
            except (ValueError, KeyError):
                err = {"code": f"HTTP_{status}"}
            errors[err.get("code", "?")] = errors.get(err.get("code", "?"), 0) + 1
            await asyncio.sleep((err.get("retry_after_ms") or 50) / 1000.0)
    finally:
        writer.close()


def _run_driver(url, n_clients, duration_s, start_at, out, payload_bytes):
    parts = urllib.parse.urlsplit(url)
    request = _request(parts.hostname, parts.port, QUEUE, payload_bytes)
    latencies, errors, counts = array("d"), {}, [0]

    async def main():
        while time.time() < start_at:
            await asyncio.sleep(0.001)
        t_end = time.perf_counter() + duration_s
        tasks = [asyncio.create_task(_client(parts.hostname, parts.port, request, t_end, latencies, errors, counts))
                 for _ in range(n_clients)]
        done, pending = await asyncio.wait(tasks, timeout=duration_s + DRAIN_S)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                errors[type(t.exception()).__name__] = errors.get(type(t.exception()).__name__, 0) + 1
        return len(pending)

    hung = asyncio.run(main())
    out.put({"latencies": latencies.tobytes(), "errors": errors, "units": counts[0], "requests": len(latencies),
             "hung": hung})


def run_http(url: str, concurrency: int, duration_s: float, payload_bytes: int = 64) -> dict:
    """Drive `concurrency` HTTP clients at `url` (the http actor) for `duration_s`; merged raw results."""
    ctx = mp.get_context("spawn")
    n_proc = min(concurrency, max(1, (os.cpu_count() or 2) // 2))
    share = [len(range(concurrency)[p::n_proc]) for p in range(n_proc)]
    out = ctx.Queue()
    start_at = time.time() + 1.5
    procs = [ctx.Process(target=_run_driver, args=(url, n, duration_s, start_at, out, payload_bytes))
             for n in share if n]
    for p in procs:
        p.start()
    result = collect(out, len(procs), procs, time.monotonic() + duration_s + DRAIN_S + 60, duration_s)
    for p in procs:
        p.join(timeout=10)
    return result
