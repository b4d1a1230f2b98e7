"""The real `jobbie` command line, run as a subprocess against a live node.

Every run is bounded by `timeout=`; JSON output is parsed, text output is
checked for its shape (one line per error on stderr, no traceback, aligned
tables).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from jobbie.transport.errors import NotFound

from .conftest import free_port

pytestmark = pytest.mark.timeout(60)

CLI = [sys.executable, "-m", "jobbie.cli.main"]


def jobbie(*args, server: str | None = None, env: dict | None = None, timeout: float = 30.0):
    """Run `jobbie ARGS...`; JOBBIE_SERVER comes only from `env` (never from the test's environment)."""
    full_env = {k: v for k, v in os.environ.items() if k != "JOBBIE_SERVER"}
    full_env.update(env or {})
    cmd = [*CLI, *map(str, args)]
    if server is not None:
        cmd += ["--server", server]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                          stdin=subprocess.DEVNULL)


def ok_json(proc) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return json.loads(proc.stdout)


def assert_one_line_error(proc, prefix: str):
    assert proc.returncode != 0, f"expected a failure, got exit 0: {proc.stdout}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {lines!r}"
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""


# ------------------------------------------------------------------ job commands
def test_enqueue_inspect_and_queues_as_json(node):
    # When a job is enqueued through the CLI with a priority
    enq = ok_json(jobbie("enqueue", "emails", '{"a":1}', "--priority", "high", "--output", "json",
                         server=node.endpoint))
    # Then the JSON answer names the job and its state
    assert enq["state"] == "pending" and enq["job_id"].startswith("job_") and enq["unique_existing"] is False
    # And inspect shows the job as stored
    job = ok_json(jobbie("inspect", enq["job_id"], "--output", "json", server=node.endpoint))
    assert job["id"] == enq["job_id"] and job["queue"] == "emails" and job["state"] == "pending"
    assert job["priority"] == "high" and job["payload"] == {"a": 1} and job["errors"] == []
    # And the queue is listed with one pending job
    queues = ok_json(jobbie("queues", "--output", "json", server=node.endpoint))["queues"]
    (row,) = queues
    assert row["name"] == "emails" and row["pending"] == 1 and row["paused"] is False


def test_server_from_environment_variable(node, client):
    # Given JOBBIE_SERVER instead of --server
    env = {"JOBBIE_SERVER": node.endpoint}
    enq = ok_json(jobbie("enqueue", "env-q", '{"b": [1, 2]}', "--output", "json", env=env))
    # Then the command reached that node
    assert client.get_job(enq["job_id"])["payload"] == {"b": [1, 2]}
    text = jobbie("inspect", enq["job_id"], env=env)
    assert text.returncode == 0 and enq["job_id"] in text.stdout and "env-q" in text.stdout


def test_pause_and_resume(node, client):
    client.enqueue("reports", {"n": 1})
    # When the queue is paused through the CLI
    proc = jobbie("pause", "reports", server=node.endpoint)
    assert proc.returncode == 0 and proc.stdout.strip() == "paused reports", proc
    # Then the node reports it paused and hands out nothing from it
    assert client.queues()[0]["paused"] is True
    assert client.fetch("reports", "w1") == []
    # When it is resumed
    proc = jobbie("resume", "reports", "--output", "json", server=node.endpoint)
    assert ok_json(proc) == {}
    # Then jobs flow again
    assert client.queues()[0]["paused"] is False
    assert len(client.fetch("reports", "w1")) == 1


def test_cancel_retry_and_delete(node, client):
    # cancel: a pending job is cancelled at once
    pending = client.enqueue("work", {"n": 1})
    cancelled = ok_json(jobbie("cancel", pending, "--output", "json", server=node.endpoint))
    assert cancelled["state"] == "cancelled"
    assert client.get_job(pending)["state"] == "cancelled"
    # retry: a job made dead through the client (no retries, fetched, failed) runs again
    doomed = client.enqueue("work", {"n": 2}, max_retries=0)
    (job,) = client.fetch("work", "w1")
    assert job["job_id"] == doomed
    assert client.fail(doomed, "boom", attempt=job["attempt"])["state"] == "dead"
    assert client.get_job(doomed)["state"] == "dead"
    retried = ok_json(jobbie("retry", doomed, "--output", "json", server=node.endpoint))
    assert retried["state"] == "pending"
    assert client.get_job(doomed)["state"] == "pending"
    # retry in text form on the cancelled job
    proc = jobbie("retry", pending, server=node.endpoint)
    assert proc.returncode == 0 and proc.stdout.strip() == "pending", proc
    # delete: the job is gone
    proc = jobbie("delete", doomed, server=node.endpoint)
    assert proc.returncode == 0 and proc.stdout.strip() == "deleted", proc
    with pytest.raises(NotFound):
        client.get_job(doomed)
    # retrying a pending job is refused with one line
    assert_one_line_error(jobbie("retry", pending, server=node.endpoint), "jobbie: FAILED_PRECONDITION")


def test_status_json_and_text(node):
    status = ok_json(jobbie("status", "--output", "json", server=node.endpoint))
    assert status["role"] == "leader" and status["durable"] is False
    names = {a["name"] for a in status["actors"]}
    assert {"raft", "admission", "lifecycle"} <= names
    assert all(a["alive"] and a["restarts"] == 0 for a in status["actors"])
    text = jobbie("status", server=node.endpoint)
    assert text.returncode == 0 and "leader" in text.stdout and "durable=false" in text.stdout
    assert "ACTOR" in text.stdout and "admission" in text.stdout


def test_queues_text_is_an_aligned_table(node, client):
    client.enqueue("a-rather-long-queue-name", 1)
    client.enqueue("q2", 2)
    client.enqueue("q2", 3)
    proc = jobbie("queues", server=node.endpoint)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").splitlines()
    assert lines[0].split()[0] == "QUEUE" and "PENDING" in lines[0]
    assert len(lines) == 3
    assert any(line.split()[0] == "a-rather-long-queue-name" for line in lines[1:])
    # Every row's cells start where the header's columns start (no cell holds a space)
    columns = [m.start() for m in re.finditer(r"\S+", lines[0])]
    for line in lines[1:]:
        assert [m.start() for m in re.finditer(r"\S+", line)] == columns, proc.stdout
    q2 = next(line.split() for line in lines[1:] if line.split()[0] == "q2")
    header = lines[0].split()
    assert q2[header.index("PENDING")] == "2" and q2[header.index("STATUS")] == "active"


# ------------------------------------------------------------------------ errors
def test_inspect_missing_job_is_one_line_not_found(node):
    proc = jobbie("inspect", "job_doesnotexist", server=node.endpoint)
    assert_one_line_error(proc, "jobbie: NOT_FOUND")


def test_invalid_json_payload_is_one_line(node, client):
    proc = jobbie("enqueue", "emails", "{bad", server=node.endpoint)
    assert_one_line_error(proc, "jobbie: ")
    assert "payload" in proc.stderr and "JSON" in proc.stderr
    assert client.queues() == []


def test_server_refusal_is_one_line_naming_the_field(node, client):
    proc = jobbie("enqueue", "bad queue name", "1", server=node.endpoint)
    assert_one_line_error(proc, "jobbie: INVALID_ARGUMENT")
    assert "field queue" in proc.stderr
    proc = jobbie("enqueue", "emails", "1", "--priority", "urgent", server=node.endpoint)
    assert_one_line_error(proc, "jobbie: INVALID_ARGUMENT")
    assert "field priority" in proc.stderr
    assert client.queues() == []


def test_bad_output_option_is_one_line(node):
    proc = jobbie("queues", "--output", "yaml", server=node.endpoint)
    assert_one_line_error(proc, "jobbie: ")
    assert "--output" in proc.stderr


# -------------------------------------------------------------------------- help
def server_help() -> str:
    proc = jobbie("server", "--help", timeout=30.0)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_server_help_explains_durable_and_data_dir():
    text = server_help()
    assert "--durable" in text
    assert re.search(r"--data[-_]dir", text)
    # fast (default) vs durable: what each survives
    lowered = text.lower()
    assert "fast" in lowered and "fsync" in lowered and "power loss" in lowered


# ------------------------------------------------------- payload parsing
def test_json_literals_in_payload_are_kept(node, client):
    enq = ok_json(jobbie("enqueue", "q", '{"a": true, "b": null, "c": false, "d": [true]}', "--output", "json",
                         server=node.endpoint))
    assert client.get_job(enq["job_id"])["payload"] == {"a": True, "b": None, "c": False, "d": [True]}


def test_json_string_payload(node, client):
    enq = ok_json(jobbie("enqueue", "q", '"hello"', "--output", "json", server=node.endpoint))
    assert client.get_job(enq["job_id"])["payload"] == "hello"
    enq = ok_json(jobbie("enqueue", "q", '"1"', "--output", "json", server=node.endpoint))
    assert client.get_job(enq["job_id"])["payload"] == "1"


def test_enqueue_without_payload_sends_null(node, client):
    enq = ok_json(jobbie("enqueue", "q", "--output", "json", server=node.endpoint))
    assert client.get_job(enq["job_id"])["payload"] is None


def test_number_like_queue_name_is_kept(node, client):
    enq = ok_json(jobbie("enqueue", "1e3", "1", "--output", "json", server=node.endpoint))
    assert client.get_job(enq["job_id"])["queue"] == "1e3"


# ------------------------------------------------------------------ day one: typos and absent servers
def test_a_misspelt_flag_is_refused_before_the_command_runs(node, client):
    # Given a queue that holds no job
    # When enqueue is called with a misspelt flag
    proc = jobbie("enqueue", "typo-q", "{}", "--priorty", "high", server=node.endpoint)
    # Then it is refused in one line with the right spelling, and no job was created
    assert_one_line_error(proc, "jobbie enqueue: no such flag --priorty; did you mean --priority?")
    assert proc.returncode == 2
    assert not [q for q in client.queues() if q["name"] == "typo-q"]


def test_delete_with_an_unknown_flag_does_not_delete(node, client):
    job_id = client.enqueue("typo-d", {"n": 1})
    proc = jobbie("delete", job_id, "--force", server=node.endpoint)
    assert_one_line_error(proc, "jobbie delete: no such flag --force")
    assert client.get_job(job_id)["state"] == "pending"


def test_one_argument_too_many_is_refused(node, client):
    proc = jobbie("cancel", "job_1", "job_2", "text", "extra", server=node.endpoint)
    assert_one_line_error(proc, "jobbie cancel: too many arguments")


def _commands(target=None, prefix=()):
    """Every (words, function) of the CLI, groups included."""
    import inspect

    from jobbie.cli.main import Cli
    target = target or Cli
    for name in dir(target):
        if name.startswith("_"):
            continue
        attr = getattr(target, name)
        words = (*prefix, name.replace("_", "-"))
        if inspect.isfunction(attr):
            yield words, attr
        elif not inspect.isclass(attr) and hasattr(attr, "__class__") and attr.__class__.__module__.startswith(
                "jobbie.cli"):
            yield from _commands(type(attr), words)


@pytest.mark.parametrize("words", [w for w, _ in _commands()], ids=" ".join)
def test_every_command_refuses_an_unknown_flag_before_running(words):
    # No server is given and none is needed: the refusal comes before any connection.
    from jobbie.cli.main import check_flags
    with pytest.raises(SystemExit) as info:
        check_flags([*words, "--definitely-not-a-flag", "1"])
    assert info.value.code == 2


def test_with_no_server_a_command_fails_within_3_s_with_the_hint():
    port = free_port()
    started = time.monotonic()
    proc = jobbie("queues", server=f"tcp://127.0.0.1:{port}", timeout=15)
    elapsed = time.monotonic() - started
    assert_one_line_error(proc, f"jobbie: nothing answers at tcp://127.0.0.1:{port}")
    assert "start one with: jobbie server" in proc.stderr
    assert elapsed < 3.0 + 1.0, elapsed  # + interpreter start-up on a loaded machine


@pytest.mark.parametrize("words", [("bulk", "retry", "--ids", "job_1"), ("admin", "rebuild-mirror"),
                                   ("search", "--queue", "q")])
def test_long_operations_fail_fast_too(words):
    started = time.monotonic()
    proc = jobbie(*words, server=f"tcp://127.0.0.1:{free_port()}", timeout=30)
    assert proc.returncode != 0 and "nothing answers at" in proc.stderr
    assert time.monotonic() - started < 6.0


def test_an_address_without_tcp_is_one_clear_line():
    proc = jobbie("queues", server="127.0.0.1:7700")
    assert_one_line_error(proc, "jobbie: --server: server address '127.0.0.1:7700' is not a ZeroMQ endpoint "
                                "(did you mean tcp://127.0.0.1:7700?)")
    assert proc.returncode == 2


def test_a_typed_flag_before_a_string_argument_keeps_its_type(node, client):
    # `--max-retries 0` used to reach the server as the string "0" (taken for a positional argument)
    proc = jobbie("enqueue", "typed-q", '{"a": 1}', "--max-retries", "0", "--output", "json", server=node.endpoint)
    job = client.get_job(ok_json(proc)["job_id"])
    assert job["max_retries"] == 0


@pytest.mark.parametrize("flag, value, says", [
    ("--bind", "tcp://127.0.0.1:{port}", "--bind 127.0.0.1:{port}: the port is taken"),
    ("--raft-bind", "127.0.0.1:{port}", "--raft-bind 127.0.0.1:{port}: the port is taken"),
    ("--bind", "127.0.0.1:7700", "is not a ZeroMQ endpoint (did you mean tcp://127.0.0.1:7700?)"),
])
def test_server_refuses_an_address_it_cannot_listen_on_before_serving(tmp_path, flag, value, says):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = jobbie("server", "--data-dir", tmp_path / "data", flag, value.format(port=port), timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "serving" not in proc.stderr and says.format(port=port) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert time.monotonic() - started < 10


# ------------------------------------------------------------------ help, version, pipes
def test_version_prints_the_installed_version():
    from jobbie import __version__
    proc = jobbie("--version")
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, f"jobbie {__version__}", "")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_after_arguments_shows_help_and_runs_nothing(node, client, flag):
    job_id = client.enqueue("help-d", {"n": 1})
    proc = jobbie("delete", job_id, flag, server=node.endpoint)
    # (fire writes help to stderr when it is not a terminal)
    assert proc.returncode == 0 and "jobbie delete - " in proc.stdout + proc.stderr, proc.stderr
    assert "INFO: Showing help" not in proc.stderr
    assert client.get_job(job_id)["state"] == "pending"  # fire alone would have deleted it first
    group = jobbie("budget", flag)
    assert "jobbie budget - " in group.stdout + group.stderr and "INFO" not in group.stderr


def test_piping_into_head_ends_quietly(node, client):
    # (an answer well over a pipe's 64 KiB buffer, so the write meets a closed pipe)
    client.enqueue_batch([{"queue": "pipe-q", "payload": {"n": i, "pad": "x" * 600}} for i in range(300)])
    cmd = (f"{sys.executable} -m jobbie.cli.main search --queue pipe-q --limit 300 --output json "
           f"--server {node.endpoint} | head -c 100")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert len(proc.stdout) == 100 and proc.returncode == 0


# ------------------------------------------------------------------ payloads, durations, tags, pipes
def test_payload_from_a_file_or_stdin(node, client, tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"big": [1, 2, 3]}')
    made = ok_json(jobbie("enqueue", "pf", "--payload-file", path, "--output", "json", server=node.endpoint))
    assert client.get_job(made["job_id"])["payload"] == {"big": [1, 2, 3]}
    full_env = {k: v for k, v in os.environ.items() if k != "JOBBIE_SERVER"}
    proc = subprocess.run([*CLI, "enqueue", "pf", "-", "--output", "json", "--server", node.endpoint],
                          input='{"from": "stdin"}', capture_output=True, text=True, timeout=30, env=full_env)
    assert client.get_job(ok_json(proc)["job_id"])["payload"] == {"from": "stdin"}
    missing = jobbie("enqueue", "pf", "--payload-file", tmp_path / "nope.json", server=node.endpoint)
    assert_one_line_error(missing, "jobbie: --payload-file")


def test_a_duration_and_key_value_tags_on_enqueue(node, client):
    made = ok_json(jobbie("enqueue", "dq", "{}", "--delay", "30s", "--tag", "tenant=acme,tier=gold",
                          "--output", "json", server=node.endpoint))
    job = client.get_job(made["job_id"])
    assert job["state"] == "scheduled" and 29_000 <= job["run_at"] - job["created_at"] <= 30_000
    assert job["tags"] == {"tenant": "acme", "tier": "gold"}
    found = jobbie("search", "--queue", "dq", "--tag", "tenant=acme", "--output", "json", server=node.endpoint)
    assert [json.loads(line)["id"] for line in found.stdout.splitlines()] == [made["job_id"]]  # JSON lines
    bad = jobbie("enqueue", "dq", "{}", "--delay", "soon", server=node.endpoint)
    assert_one_line_error(bad, "jobbie: --delay must be a duration")


def test_an_empty_pipe_into_bulk_is_zero_jobs(node):
    full_env = {k: v for k, v in os.environ.items() if k != "JOBBIE_SERVER"}
    proc = subprocess.run([*CLI, "bulk", "retry", "--server", node.endpoint], input="", capture_output=True,
                          text=True, timeout=30, env=full_env)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stderr


def test_pausing_a_queue_that_never_had_a_job_warns_and_pauses(node, client):
    client.enqueue("emails", {"n": 1})
    proc = jobbie("pause", "emials", server=node.endpoint)
    assert proc.returncode == 0 and "paused emials" in proc.stdout
    assert "never had a job; did you mean emails?" in proc.stderr
    quiet = jobbie("pause", "emails", server=node.endpoint)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_an_oversized_payload_is_refused_by_the_client_before_it_is_sent(node, client, tmp_path):
    from jobbie.transport.errors import InvalidArgument
    with pytest.raises(InvalidArgument) as info:
        client.enqueue("big", {"blob": "x" * (2 * 1024 * 1024)})
    assert (info.value.field, info.value.reason) == ("payload", "too_large")
    assert "nothing was sent" in info.value.message
    assert "big" not in {q["name"] for q in client.queues()}
    # and from the command line, in one line
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"blob": "x" * (2 * 1024 * 1024)}))
    proc = jobbie("enqueue", "big", "--payload-file", path, server=node.endpoint)
    assert_one_line_error(proc, "jobbie:")
    assert "nothing was sent" in proc.stderr
