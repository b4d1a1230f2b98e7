"""A node started with --curve: CURVE clients work, plaintext and wrong keys fail cleanly, restricted clients,
--curve with --auth, the key pair across a restart, the http actor and the CLI through the CURVE port.

One --curve node (with its http actor) serves most of the module; the tests that need other flags
start their own.
"""
from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import threading
import time

import httpx
import pytest
import zmq

from jobbie.actors.curve import secret_path
from jobbie.transport import codec
from jobbie.transport.aio import AsyncClient
from jobbie.transport.client import Client
from jobbie.transport.errors import Unauthenticated, Unavailable
from jobbie.transport.worker import Worker

from .conftest import Node, wait_for

pytestmark = pytest.mark.timeout(90)

KEY_LINE = re.compile(r"the server's public key:\n\s+(\S{40})\n")
CLI = [sys.executable, "-m", "jobbie.cli.main"]


def printed_keys(node: Node) -> list[str]:
    return KEY_LINE.findall(node.supervisor_log())


class CurveNode(Node):
    """A node with --curve; `server_key` is the public key it printed, and its clients use it."""

    def __init__(self, data_dir, extra_args=(), http: bool = False):
        super().__init__(data_dir, ["--curve", *extra_args], http=http)
        self.server_key = None

    def wait_ready(self, timeout: float = 20.0):
        def key():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.supervisor_log()}")
            found = printed_keys(self)
            return found[-1] if found else None
        self.server_key = wait_for(key, timeout, message="the server's public key")
        self.client_options = {"curve_server_key": self.server_key, **self.client_options}
        return super().wait_ready(timeout)


def plain_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBBIE_")}
    env.update(extra)
    return env


def refused_quickly(make_client, started_within: float = 6.0) -> Unavailable:
    """The Unavailable that a client's first call raises, checked to come within the bound."""
    started = time.monotonic()
    with make_client() as c:
        with pytest.raises(Unavailable) as info:
            c.call("list_queues")
    assert time.monotonic() - started < started_within
    assert "\n" not in info.value.message
    return info.value


@pytest.fixture(scope="module")
def curve_node(tmp_path_factory):
    node = CurveNode(tmp_path_factory.mktemp("curve") / "node", http=True)
    node.start()
    yield node
    node.stop(timeout=15)
    node.kill_everything()


def test_a_curve_client_enqueues_fetches_and_acks(curve_node):
    with Client(curve_node.endpoint, timeout=5, retry_for=10, curve_server_key=curve_node.server_key) as c:
        job_id = c.enqueue("curve-q", {"secret": "payload"})
        jobs = c.fetch(["curve-q"], "curve-worker")
        assert [j["job_id"] for j in jobs] == [job_id] and jobs[0]["payload"] == {"secret": "payload"}
        assert c.ack(job_id, attempt=jobs[0]["attempt"], result="done")["state"] == "completed"
        assert c.get_job(job_id)["result"] == "done"


def test_async_client_and_worker_over_curve(curve_node):
    async def enqueue():
        async with AsyncClient(curve_node.endpoint, timeout=5, retry_for=10,
                               curve_server_key=curve_node.server_key) as c:
            return await c.enqueue("curve-w", {"n": 7})
    job_id = asyncio.run(enqueue())
    seen = []
    worker = Worker({"curve-w": lambda job: seen.append(job.payload) or "ok"}, server=curve_node.endpoint,
                    curve_server_key=curve_node.server_key, wait_ms=200, concurrency=1)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        with curve_node.client() as c:
            assert c.wait(job_id, timeout=20)["state"] == "completed"
    finally:
        worker.stop()
        runner.join(timeout=20)
    assert seen == [{"n": 7}]


def test_a_plaintext_client_gets_no_answer_and_the_node_keeps_serving(curve_node):
    # Given a bare DEALER that sends a valid request in the clear
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(curve_node.endpoint)
    try:
        sock.send(codec.encode({"id": 1, "op": "list_queues", "args": {}}))
        # Then nothing comes back
        assert not sock.poll(1500)
    finally:
        sock.close()
    # And the client library says why, in one line, after its connect time-out
    error = refused_quickly(lambda: Client(curve_node.endpoint, retry_for=0, curve_server_key=""))
    assert error.reason == "handshake_failed"
    assert "is the server using --curve? set JOBBIE_CURVE_SERVER_KEY" in error.message
    # And CURVE clients are still served
    with curve_node.client() as c:
        assert "queues" in c.call("list_queues")


def test_a_wrong_server_key_fails_cleanly(curve_node):
    wrong = zmq.curve_keypair()[0].decode()
    error = refused_quickly(lambda: Client(curve_node.endpoint, retry_for=0, curve_server_key=wrong))
    assert error.reason == "handshake_failed" and "JOBBIE_CURVE_SERVER_KEY" in error.message
    with curve_node.client() as c:
        assert c.status()["role"] == "leader"


def test_the_http_front_works_on_a_curve_node(curve_node):
    with curve_node.client() as c:
        c.enqueue("curve-http", {"n": 1})
    assert httpx.get(curve_node.http_url + "/healthz", timeout=10).json()["status"] == "up"
    queues = httpx.get(curve_node.http_url + "/v1/queues", timeout=10).json()["queues"]
    assert any(q["name"] == "curve-http" and q["pending"] >= 1 for q in queues), queues
    made = httpx.post(curve_node.http_url + "/v1/queues/curve-http/jobs", json={"payload": 2}, timeout=10)
    assert made.status_code == 200, made.text


def test_cli_status_with_the_server_key(curve_node):
    env = plain_env(JOBBIE_SERVER=curve_node.endpoint, JOBBIE_CURVE_SERVER_KEY=curve_node.server_key)
    status = subprocess.run(CLI + ["status"], capture_output=True, text=True, env=env, timeout=30)
    assert status.returncode == 0, status.stderr
    assert "leader" in status.stdout
    env.pop("JOBBIE_CURVE_SERVER_KEY")
    refused = subprocess.run(CLI + ["status"], capture_output=True, text=True, env=env, timeout=30)
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "set JOBBIE_CURVE_SERVER_KEY" in refused.stderr, refused.stderr
    shown = subprocess.run(CLI + ["curve", "show", "--data-dir", curve_node.data_dir], capture_output=True,
                           text=True, env=plain_env(), timeout=30)
    assert shown.returncode == 0 and shown.stdout.splitlines()[0] == curve_node.server_key


def test_listed_client_keys_only(tmp_path):
    # Given a folder with one client's public key, made by jobbie curve keygen
    allowed, other = tmp_path / "allowed", tmp_path / "keys"
    for name, folder in (("alice", allowed), ("bob", other)):
        made = subprocess.run(CLI + ["curve", "keygen", name, "--out", str(folder)], capture_output=True, text=True,
                              env=plain_env(), timeout=30)
        assert made.returncode == 0, made.stderr
    os.replace(allowed / "alice.key_secret", other / "alice.key_secret")  # the server gets the public half only
    assert stat.S_IMODE(os.stat(other / "alice.key_secret").st_mode) == 0o600
    node = CurveNode(tmp_path / "node", ["--curve-clients", str(allowed)], http=True)
    node.client_options = {"curve_client_keys": str(other / "alice.key_secret")}
    try:
        node.start()
        # Then the listed client works
        with node.client() as c:
            job_id = c.enqueue("listed", {"n": 1})
            assert c.get_job(job_id)["state"] == "pending"
        # And an unlisted key pair, or a fresh one, is refused with the reason
        for keys in (str(other / "bob.key_secret"), None):
            error = refused_quickly(lambda: Client(node.endpoint, retry_for=0, curve_server_key=node.server_key,
                                                   curve_client_keys=keys))
            assert error.reason == "handshake_failed" and "--curve-clients" in error.message, error.message
        # And the node's own http actor is let in
        queues = httpx.get(node.http_url + "/v1/queues", timeout=10).json()["queues"]
        assert [q["name"] for q in queues] == ["listed"]
        # When bob's public key is put in the folder, bob may connect, without a restart
        os.replace(other / "bob.key", allowed / "bob.key")
        with Client(node.endpoint, timeout=5, retry_for=5, curve_server_key=node.server_key,
                    curve_client_keys=str(other / "bob.key_secret")) as bob:
            assert bob.get_job(job_id)["state"] == "pending"
    finally:
        node.stop(timeout=15)
        node.kill_everything()


def test_curve_clients_needs_curve(tmp_path):
    out = subprocess.run(CLI + ["server", "--data-dir", str(tmp_path / "d"), "--http=false", "--curve-clients",
                                str(tmp_path)], capture_output=True, text=True, env=plain_env(), timeout=30)
    assert out.returncode == 2 and "--curve-clients" in out.stderr and "add --curve" in out.stderr, out.stderr


def test_curve_and_auth_together(tmp_path):
    token_line = re.compile(r"^\s+(tok_\S+\.\S+)\s*$", re.M)
    node = CurveNode(tmp_path / "node", ["--auth"])
    try:
        node.start(wait=False)
        # The supervisor's first-token check reaches the gateway over CURVE: the token is printed
        token = wait_for(lambda: (token_line.findall(node.supervisor_log()) or [None])[-1], 30,
                         message="the first admin token")
        key = wait_for(lambda: (printed_keys(node) or [None])[-1], 10, message="the server key")
        with Client(node.endpoint, timeout=5, retry_for=10, curve_server_key=key, token=token) as admin:
            assert admin.call("list_tokens")["tokens"][0]["role"] == "admin"
        with Client(node.endpoint, timeout=5, retry_for=0, curve_server_key=key, token="") as anonymous:
            with pytest.raises(Unauthenticated):
                anonymous.call("list_queues")
        error = refused_quickly(lambda: Client(node.endpoint, retry_for=0, token=token, curve_server_key=""))
        assert error.reason == "handshake_failed"
    finally:
        node.stop(timeout=15)
        node.kill_everything()


def test_the_key_pair_persists_across_a_restart(tmp_path):
    # Given a node started with JOBBIE_CURVE=1 (a variable), then with curve = true (a config file)
    config = tmp_path / "jobbie.toml"
    config.write_text("curve = true\n")
    node = Node(tmp_path / "node")
    node.env = plain_env(JOBBIE_CURVE="1")
    try:
        node.start(wait=False)
        first = wait_for(lambda: (printed_keys(node) or [None])[-1], 20, message="the server key")
        node.client_options = {"curve_server_key": first}
        node.wait_ready()
        assert "a new key pair is in" in node.supervisor_log()
        secret = secret_path(node.data_dir)
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(secret)).st_mode) == 0o700
        with node.client() as c:
            job_id = c.enqueue("persist", {"n": 1})
        node.stop(timeout=15)
        node.env = plain_env(JOBBIE_CONFIG=str(config))
        node.start()  # waits with the first key: it must still be the server's
        assert printed_keys(node) == [first, first]
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
        with node.client() as c:
            assert c.get_job(job_id)["state"] == "pending"
    finally:
        node.stop(timeout=15)
        node.kill_everything()
