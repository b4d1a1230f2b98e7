"""`App` and `jobbie worker module:app` against a live node.

The worker runs as a real subprocess (`python -m jobbie.cli.main worker ...`) in its own
session, with its module written to tmp_path and that directory as its working directory;
it is stopped with SIGINT and, if still there, killed by its process group in a finally.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jobbie import App
from jobbie.transport.client import Client

from .conftest import wait_for

pytestmark = pytest.mark.timeout(90)

CLI = [sys.executable, "-m", "jobbie.cli.main"]

TASKS = """
from jobbie import App

app = App(concurrency=2, wait_ms=200)
other = App()


@app.task("emails", "sms")
def send(job):
    if job.payload.get("bad"):
        raise ValueError("no such mailbox")
    return {"sent_to": job.payload["to"], "via": job.queue}


@app.task("reports", lease_ms=5000)
def report(job):
    return {"report": job.payload["n"], "lease_ms": job.lease_ms}
"""


def _env():
    env = {k: v for k, v in os.environ.items() if k != "JOBBIE_SERVER"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_worker(tmp_path, *args):
    (tmp_path / "tasks.py").write_text(TASKS)
    return subprocess.Popen([*CLI, "worker", *args], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc, timeout: float = 15.0, interrupt: bool = True):
    """SIGINT (a drain) unless told not to, then the output; killed by its process group if it does not end."""
    try:
        if interrupt and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_jobbie_worker_runs_the_apps_tasks_and_logs_one_line_per_job(node, tmp_path):
    # Given jobs on the three queues of an app, one of them failing
    with Client(node.endpoint) as c:
        mails = [c.enqueue("emails", {"to": f"u{n}@example.com"}) for n in range(3)]
        text = c.enqueue("sms", {"to": "+100"})
        bad = c.enqueue("emails", {"bad": True, "to": "x"}, max_retries=0)
        report = c.enqueue("reports", {"n": 7})
        # When `jobbie worker tasks:app` runs from the module's directory
        proc = start_worker(tmp_path, "tasks:app", "--server", node.endpoint)
        try:
            wait_for(lambda: all(c.get_job(j)["state"] == "completed" for j in [*mails, text, report])
                     and c.get_job(bad)["state"] == "dead", 30, interval=0.1, message="every job to finish")
        finally:
            out, err = stop(proc)
        # Then each job got its handler's result, with the task's own lease for `reports`
        assert [c.get_job(j)["result"]["sent_to"] for j in mails] == [f"u{n}@example.com" for n in range(3)]
        assert c.get_job(text)["result"] == {"sent_to": "+100", "via": "sms"}
        assert c.get_job(report)["result"] == {"report": 7, "lease_ms": 5000}
        assert "ValueError: no such mailbox" in c.get_job(bad)["last_error"]
    assert proc.returncode == 0, err
    # And stderr has the start line and exactly one line per job
    assert re.search(r"INFO worker \S+: queues emails, sms, reports, concurrency 2, heartbeat 2 s", err), err
    for job_id in [*mails, text, report]:
        lines = [line for line in err.splitlines() if f" {job_id} " in line]
        assert len(lines) == 1 and re.search(rf"{job_id} attempt 1: completed in \d+ ms", lines[0]), lines
    bad_lines = [line for line in err.splitlines() if f" {bad} " in line]
    assert len(bad_lines) == 1 and "failed (dead)" in bad_lines[0], err
    assert out == ""


def test_queues_flag_serves_only_the_given_queues_and_module_alone_means_app(node, tmp_path):
    with Client(node.endpoint) as c:
        mail = c.enqueue("emails", {"to": "a"})
        report = c.enqueue("reports", {"n": 1})
        # When the worker serves only `emails` (the module given alone: its attribute `app`)
        proc = start_worker(tmp_path, "tasks", "--queues", "emails", "--concurrency", "1", "--heartbeat", "700ms",
                            "--server", node.endpoint)
        try:
            wait_for(lambda: c.get_job(mail)["state"] == "completed", 20, interval=0.1, message="the mail job")
            time.sleep(0.5)
            # Then the report job is left alone
            assert c.get_job(report)["state"] == "pending"
        finally:
            out, err = stop(proc)
    assert "queues emails, concurrency 1, heartbeat 0.7 s" in err, err


@pytest.mark.parametrize("args, expected", [
    (["tasks:nope"], "jobbie: worker: module tasks has no attribute 'nope'; it has app, other"),
    (["nosuchmodule:app"], "jobbie: worker: no module named 'nosuchmodule'"),
    (["tasks:app:x"], "jobbie: worker: 'tasks:app:x' is not MODULE:APP"),
    (["tasks/app"], "jobbie: worker: 'tasks/app' is not MODULE:APP"),
    (["tasks:send"], "jobbie: worker: tasks:send is 'function', not a jobbie App"),
    (["tasks:app", "--queues", "emails,faxes"], "jobbie: --queues: tasks:app has no task for queue faxes "
                                                "(its queues: emails, sms, reports)"),
    (["tasks:app", "--log-level", "loud"], "jobbie: --log-level must be one of debug, info, warning"),
    (["tasks:app", "--heartbeat", "soon"], "jobbie: --heartbeat must be a duration"),
    (["tasks:app", "--concurency", "2"], "jobbie worker: no such flag --concurency; did you mean --concurrency?"),
])
def test_a_bad_spec_or_flag_is_one_line_and_exit_code_2(tmp_path, args, expected):
    # Given a server address where nothing listens: nothing may start, so nothing may be reached
    proc = start_worker(tmp_path, *args, "--server", "tcp://127.0.0.1:9")
    out, err = stop(proc, timeout=20, interrupt=False)
    assert proc.returncode == 2, (out, err)
    assert err.splitlines() == [err.strip()] and err.startswith(expected), err
    assert "Traceback" not in err and out == ""


# ------------------------------------------------------------------ the registry itself
def test_app_task_registers_one_handler_per_queue():
    app = App()

    @app.task("a", "b", timeout="30s")
    def one(job):
        return 1

    assert app.queues == ["a", "b"] and app.tasks["a"] is app.tasks["b"] and app.tasks["a"].timeout == 30.0
    with pytest.raises(ValueError, match="queue b already has a handler"):
        app.task("b")(lambda job: 2)
    assert app.queues == ["a", "b"]  # nothing of the refused registration was kept
    with pytest.raises(TypeError, match=r'write @app.task\("emails"\)'):
        app.task(one)
    with pytest.raises(ValueError, match="not a valid queue name"):
        app.task("has space")
    with pytest.raises(ValueError, match="timeout must be a duration"):
        app.task("c", timeout="30")  # a bare string: seconds or milliseconds? refused
    with pytest.raises(ValueError, match="no task for queue c"):
        app.worker(["c"])
