"""`jobbie server` start-up: settings from JOBBIE_* variables and --config, log level and JSON logs,
and the one-line refusals (unusable data dir, another cluster's data dir, a taken --http-bind,
a bad setting); a crash-looping actor's last error line in the supervisor's reason."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from jobbie.transport.client import Client

from .conftest import free_port, wait_for
from .helpers import FastBackoffNode

pytestmark = pytest.mark.timeout(90)


def server(*args, env=None, timeout=30.0):
    """`jobbie server ARGS` run to its end (for the refusals); no JOBBIE_* from the test's environment."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("JOBBIE_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "jobbie.cli.main", "server", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full, stdin=subprocess.DEVNULL)


def assert_refused(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "serving" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_a_data_dir_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_refused(server("--data-dir", blocker / "data", "--http=false"), "data dir", "cannot use it",
                   "--data-dir")


def test_a_taken_http_port_is_one_line_naming_the_flag(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = server("--data-dir", tmp_path / "d", "--bind", f"tcp://127.0.0.1:{free_port()}",
                      "--http-bind", f"127.0.0.1:{port}")
    assert_refused(proc, f"--http-bind 127.0.0.1:{port}: the port is taken", "--http=false")


def test_a_bad_setting_from_the_environment_or_the_file_is_one_line(tmp_path):
    assert_refused(server("--data-dir", tmp_path / "d", env={"JOBBIE_DURABLE": "sometimes"}),
                   "JOBBIE_DURABLE", "true or false")
    config = tmp_path / "jobbie.toml"
    config.write_text('data-dri = "/x"\n')
    assert_refused(server("--config", config), "unknown key 'data-dri'", "did you mean data-dir?")
    assert not (tmp_path / "d").exists()  # nothing was started or created


def test_a_data_dir_of_another_cluster_is_refused(tmp_path):
    # Given a data dir that ran as a member of the cluster {A, B, C}
    data = tmp_path / "n1"
    data.mkdir(mode=0o700)
    (data / "node.json").write_text(json.dumps({"node_id": "n1", "raft_bind": "127.0.0.1:7801",
                                                "members": ["127.0.0.1:7801", "127.0.0.1:7802", "127.0.0.1:7803"]}))
    # When it is started as a member of an unrelated cluster
    proc = server("--data-dir", data, "--node-id", "n1", "--raft-bind", "127.0.0.1:7901",
                  "--peers", "127.0.0.1:7902,127.0.0.1:7903", "--http=false", env={"JOBBIE_RAFT_PASSWORD": "s3cret"})
    # Then it is refused in one line that names both memberships
    assert_refused(proc, "belongs to another cluster", "127.0.0.1:7802", "127.0.0.1:7902")


def test_a_cluster_without_a_raft_password_is_refused_even_on_loopback(tmp_path):
    # Given a new cluster's first node on loopback, and no password anywhere
    proc = server("--data-dir", tmp_path / "n1", "--node-id", "n1", "--raft-bind", "127.0.0.1:7901",
                  "--peers", "127.0.0.1:7902,127.0.0.1:7903", "--bootstrap", "--http=false")
    # Then it does not start: any local user could otherwise reach a raft port that unpickles
    assert_refused(proc, "needs a raft password", "--raft-password-file")


def test_the_raft_password_can_come_from_a_file(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    proc = server("--data-dir", tmp_path / "n1", "--node-id", "n1", "--raft-bind", "127.0.0.1:7901",
                  "--peers", "127.0.0.1:7902,127.0.0.1:7903", "--bootstrap", "--http=false",
                  "--raft-password-file", empty)
    assert_refused(proc, "--raft-password-file", "empty")
    proc = server("--data-dir", tmp_path / "n1", "--node-id", "n1", "--raft-bind", "127.0.0.1:7901",
                  "--peers", "127.0.0.1:7902,127.0.0.1:7903", "--bootstrap", "--http=false",
                  "--raft-password-file", tmp_path / "missing")
    assert_refused(proc, "--raft-password-file", "cannot read it")


def test_settings_from_the_environment_and_a_config_file_start_a_node(tmp_path):
    port = free_port()
    config = tmp_path / "jobbie.toml"
    config.write_text(f'[server]\ndata-dir = "{tmp_path / "data"}"\nhttp = false\nlog-level = "debug"\n'
                      f'bind = "tcp://127.0.0.1:1"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBBIE_")}
    # The variable beats the file's bind; the file gives the data dir, no http actor and the log level.
    env.update(JOBBIE_CONFIG=str(config), JOBBIE_BIND=f"tcp://127.0.0.1:{port}", JOBBIE_LOG_FORMAT="json")
    proc = subprocess.Popen([sys.executable, "-m", "jobbie.cli.main", "server"], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=1, retry_for=0) as c:
            status = wait_for(lambda: _status(c), 20, message="the node")
        assert "http" not in {a["name"] for a in status["actors"]}
        log = tmp_path / "data" / "logs" / "admission.log"
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        assert lines and {"ts", "level", "actor", "pid", "logger", "msg"} <= set(lines[0])
        assert lines[0]["actor"] == "admission"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def _status(c):
    try:
        return c.call("cluster_status")
    except Exception:
        return None


def test_a_crash_looping_actor_stops_the_node_with_its_last_error_line(tmp_path):
    # Given a node with fast restarts whose http port is taken by someone else once its actor is gone
    node = FastBackoffNode(tmp_path / "node", http=True)
    try:
        node.start()
        pid = node.actor_pid("http")
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: _try_bind(squatter, node.http_port), 5, message="the port to be free")
            squatter.listen()
            # When the http actor keeps failing to bind, the supervisor gives up on the node
            code = node.proc.wait(timeout=60)
        # Then its reason names the actor and its last error
        assert code == 3
        reason = [line for line in node.supervisor_log().splitlines() if "stopping the node" in line]
        assert reason and "the http actor died" in reason[0] and "last error:" in reason[0], reason
        assert "address already in use" in reason[0].lower(), reason[0]
    finally:
        node.kill_everything()


def _try_bind(sock, port):
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        time.sleep(0.01)
        return False
