"""Usage end to end on a real node: a worker reports usage, `jobbie usage --by model` shows it;
the usage actor killed -9 under load is restarted and its rollups are exact after catch-up
(compared with the job records and with the usage records in LMDB); a rebuild agrees.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from jobbie.storage.env import Store
from jobbie.transport.codec import decode_trusted
from jobbie.transport.worker import Worker

from .conftest import wait_for
from .helpers import actor_row, wait_restarted


def cli(node, *args) -> str:
    out = subprocess.run([sys.executable, "-m", "jobbie.cli.main", *args, "--server", node.endpoint],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def lmdb_usage(node) -> list:
    store = Store(os.path.join(node.data_dir, "lmdb"), readonly=True)
    try:
        with store.begin() as txn:
            return [decode_trusted(v) for _, v in txn.cursor(db=store.dbs["usage"])]
    finally:
        store.close()


@pytest.mark.timeout(60)
def test_worker_usage_shows_in_jobbie_usage_by_model(node):
    client = node.client()
    cli(node, "price", "set", "model-a", "2", "8")
    ids = [client.enqueue("ai.chat", {"n": i}) for i in range(4)]

    def handler(job):
        model = "model-a" if job.payload["n"] % 2 == 0 else "model-b"
        job.add_usage(input_tokens=1000, output_tokens=100, model=model)
        job.add_usage(input_tokens=1000, output_tokens=100, model=model, cost_usd=0.5)
        return "ok"

    worker = Worker({"ai.chat": handler}, client=client, concurrency=2, wait_ms=200)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: all(client.get_job(j)["state"] == "completed" for j in ids), 20, message="jobs done")
    finally:
        worker.stop()
        t.join(10)
    # The table for people
    text = cli(node, "usage", "--by", "model")
    assert "model-a" in text and "model-b" in text and "TOTAL" in text
    # And the JSON: model-a priced by the server, model-b at the reported cost
    groups = {g["key"]["model"]: g for g in json.loads(cli(node, "usage", "--by", "model", "--output", "json"))["groups"]}
    a, b = groups["model-a"], groups["model-b"]
    assert (a["attempts"], a["jobs"], a["input_tokens"], a["cost_sources"]["price_table"]) == (2, 2, 4000, 2)
    assert a["cost_usd"] == pytest.approx(2 * (2000 * 2 + 200 * 8) / 1e6)
    assert b["cost_usd"] == pytest.approx(2 * 0.5) and b["cost_sources"]["reported"] == 2
    status = node.status()["usage"]
    assert status["rebuilds"] >= 1 and not status["stale"]


@pytest.mark.timeout(90)
def test_usage_actor_killed_under_load_is_exact_after_catch_up_and_rebuild(node):
    client = node.client()
    n_jobs = 300
    client.enqueue_batch([{"queue": "load.q", "payload": {"n": i}, "tags": {"team": "ab"[i % 2]}}
                          for i in range(n_jobs)])
    done = []

    def work(worker_id):
        c = node.client(timeout=2.0, retry_for=30.0)
        while True:
            jobs = c.fetch("load.q", worker_id, count=5, wait_ms=100)
            if not jobs:
                return
            for j in jobs:
                n = j["payload"]["n"]
                c.heartbeat(worker_id, {j["job_id"]: {"attempt": j["attempt"],
                                                      "usage": {"input_tokens": n, "model": f"m{n % 3}"}}})
                c.ack(j["job_id"], attempt=j["attempt"],
                      usage={"input_tokens": 2 * n, "output_tokens": 1, "model": f"m{n % 3}", "cost_usd": n / 1000})
                done.append(j["job_id"])

    threads = [threading.Thread(target=work, args=(f"w{i}",), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(done) >= 60, 30, message="some acks")
    old = actor_row(node.status(), "usage")
    os.kill(old["pid"], signal.SIGKILL)
    wait_restarted(node, "usage", old["pid"], timeout=20)
    for t in threads:
        t.join(60)
    assert len(done) == n_jobs
    # Rollups after catch-up equal the job records and the LMDB usage records
    summary = wait_for(lambda: _summary(client), 20, message="a usage summary")
    jobs = [client.get_job(j) for j in done]
    by_model = {}
    for job in jobs:
        model = job["usage"][0]["model"]
        row = by_model.setdefault(model, [0, 0.0, 0])
        row[0] += job["usage_total"]["input_tokens"]
        row[1] += job["usage_total"]["cost_usd"]
        row[2] += job["usage_total"]["attempts"]
    got = {g["key"]["model"]: g for g in summary["groups"]}
    assert set(got) == set(by_model)
    for model, (tokens, cost, attempts) in by_model.items():
        assert (got[model]["input_tokens"], got[model]["attempts"], got[model]["jobs"]) == (tokens, attempts, attempts)
        assert got[model]["cost_usd"] == pytest.approx(cost, abs=1e-9)
    records = [r for r in lmdb_usage(node) if r["queue"] == "load.q"]
    assert len(records) == n_jobs and all(r["final"] for r in records)
    assert summary["totals"]["cost_usd"] == sum(round(r["cost_usd"] * 1e9) for r in records) / 1e9
    assert summary["totals"]["input_tokens"] == sum(r["input_tokens"] for r in records)
    # And a rebuild gives the same numbers
    rebuilt = client.rebuild_usage()
    assert rebuilt["records"] == n_jobs
    again = _summary(client)
    assert again["groups"] == summary["groups"] and again["totals"] == summary["totals"]


def _summary(client):
    s = client.usage_summary(group_by=["model"], queue="load.q")
    return s if s["lag"] == 0 or s["lag"] is None else s
