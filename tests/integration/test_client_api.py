"""`Client.wait` and `AsyncClient` against a live node (and with nothing listening)."""
from __future__ import annotations

import asyncio
import inspect
import time

import pytest

from jobbie import AsyncClient, Client, JobFailed, Unavailable
from jobbie.transport.worker import Worker

from .conftest import free_port
from .test_worker import make_worker, running

pytestmark = pytest.mark.timeout(60)


def _handler(job):
    if job.payload.get("fail"):
        raise ValueError("refused")
    return {"double": job.payload["n"] * 2}


def test_wait_returns_the_completed_record_and_raises_for_dead_and_cancelled(node, client):
    ok = client.enqueue("waits", {"n": 21})
    dead = client.enqueue("waits", {"fail": True}, max_retries=0)
    later = client.enqueue("waits", {"n": 1}, delay_ms=60_000)
    with running(make_worker(node, {"waits": _handler}, concurrency=2)):
        # When waiting for a job that completes / Then its record comes back, result included
        job = client.wait(ok, timeout=15)
        assert job["state"] == "completed" and job["result"] == {"double": 42}
        # When waiting for one that goes dead / Then JobFailed carries its record
        with pytest.raises(JobFailed) as failed:
            client.wait(dead, timeout=15)
        assert failed.value.state == "dead" and "refused" in failed.value.job["last_error"]
        assert "is dead: ValueError: refused" in str(failed.value)
    # When waiting past the time-out for a job that cannot finish yet / Then TimeoutError, on time
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"job {later} is still scheduled after 0.5 s"):
        client.wait(later, timeout=0.5, poll=0.1)
    assert 0.4 < time.monotonic() - started < 2.0
    client.cancel(later)
    with pytest.raises(JobFailed) as cancelled:
        client.wait(later, timeout=5)
    assert cancelled.value.state == "cancelled"


def test_async_client_runs_many_requests_at_once_over_one_socket(node):
    async def main():
        async with AsyncClient(node.endpoint) as ac:
            # When 50 enqueues are in flight together
            ids = await asyncio.gather(*(ac.enqueue("aio", {"n": n}, tags={"k": str(n)}) for n in range(50)))
            assert len(set(ids)) == 50
            # Then each job is as enqueued (replies matched to their requests)
            jobs = await asyncio.gather(*(ac.get_job(j) for j in ids))
            assert [j["payload"]["n"] for j in jobs] == list(range(50))
            assert all(j["tags"] == {"k": str(j["payload"]["n"])} for j in jobs)
            # And the worker-side methods work too: fetch, heartbeat, ack, then wait
            (leased,) = await ac.fetch("aio", "w-aio", count=1, lease_ms=10_000)
            beat = await ac.heartbeat("w-aio", {leased["job_id"]: {"attempt": leased["attempt"], "progress": 5}})
            assert beat[leased["job_id"]]["status"] == "ok"
            await ac.ack(leased["job_id"], leased["attempt"], result="done", checkpoint={"c": 1})
            job = await ac.wait(leased["job_id"], timeout=5)
            assert (job["result"], job["progress"], job["checkpoint"]) == ("done", 5, {"c": 1})
            # And a server error is the same typed exception as from Client
            with pytest.raises(Exception) as exc:
                await ac.get_job("job_nope")
            assert type(exc.value).__name__ == "NotFound"
            rows = {q["name"]: q for q in await ac.queues()}
            assert rows["aio"]["pending"] == 49 and rows["aio"]["completed"] == 1

    asyncio.run(main())


def test_async_wait_raises_job_failed_for_a_dead_job(node, client):
    dead = client.enqueue("aio-dead", {"fail": True}, max_retries=0)

    async def main():
        async with AsyncClient(node.endpoint) as ac:
            with pytest.raises(JobFailed):
                await ac.wait(dead, timeout=15)

    with running(make_worker(node, {"aio-dead": _handler}, concurrency=1)):
        asyncio.run(main())


def test_async_client_fails_fast_with_the_hint_when_nothing_listens():
    endpoint = f"tcp://127.0.0.1:{free_port()}"

    async def main():
        async with AsyncClient(endpoint, retry_for=30) as ac:
            started = time.monotonic()
            with pytest.raises(Unavailable) as exc:
                await ac.enqueue("q", 1)
            return time.monotonic() - started, exc.value

    took, err = asyncio.run(main())
    assert took < 3.0 and err.reason == "unreachable"
    assert "start one with: jobbie server" in err.message and endpoint in err.message


def test_async_client_has_every_public_client_method_as_a_coroutine():
    public = [n for n, v in inspect.getmembers(Client, inspect.isfunction) if not n.startswith("_")]
    assert {"enqueue", "wait", "get_job", "fetch", "ack", "fail", "heartbeat", "cancel", "iterations"} <= set(public)
    for name in public:
        if name in ("close", "forget", "submit", "call"):
            continue  # each client has its own I/O
        sync, aio = getattr(Client, name), getattr(AsyncClient, name)
        # the same signature, and documented
        assert inspect.signature(sync) == inspect.signature(aio), name
        assert sync.__doc__, f"Client.{name} has no docstring"
    # a shared method called on AsyncClient gives an awaitable, not a value
    ac = AsyncClient("tcp://127.0.0.1:9")
    pending = ac.get_job("job_x")
    assert inspect.isawaitable(pending)
    pending.close()
