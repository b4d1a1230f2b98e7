"""A real `jobbie server` per test: its own free port, tmp data dir and processes.

The supervisor runs in its own session; the actor processes run in sessions
of their own and die with the supervisor (PR_SET_PDEATHSIG). Teardown sends
SIGTERM to the supervisor, then SIGKILL to anything left, by pid, never by
name.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from jobbie.actors.supervisor import free_port  # noqa: F401 (re-exported for the tests)
from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError
# The harness's wait: its HarnessError is an AssertionError, so a test shows a failed expectation.
from jobbie.cli.chaos_harness.nodes import log_tail, wait_for  # noqa: F401 (wait_for: for the tests)




class Node:
    def __init__(self, data_dir: str, extra_args=(), http: bool = False):
        self.data_dir = str(data_dir)
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        #: The http actor (JSON API, UI, /metrics) on a free port, or off (most tests do not need it).
        self.http_port = free_port() if http else None
        self.http_url = f"http://127.0.0.1:{self.http_port}" if http else None
        http_args = ["--http-bind", f"127.0.0.1:{self.http_port}"] if http else ["--http=false"]
        self.extra_args = http_args + list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.known_pids: set[int] = set()
        self._clients: list[Client] = []
        #: Extra Client arguments for this node (e.g. the CURVE server key of a --curve node).
        self.client_options: dict = {}
        #: The server's environment (None: this process's).
        self.env: dict | None = None
        self.log_path = os.path.join(self.data_dir + "-supervisor.log")

    # ------------------------------------------------------------ processes
    def start(self, wait: bool = True):
        os.makedirs(os.path.dirname(self.data_dir) or ".", exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobbie.cli.main", "server", "--data-dir", self.data_dir,
             "--bind", self.endpoint, *self.extra_args],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0):
        probe = Client(self.endpoint, timeout=0.5, retry_for=0, **self.client_options)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.supervisor_log()}")
            try:
                status = probe.call("cluster_status")
            except JobbieError:
                return None
            self.remember(status)
            alive = all(a["alive"] for a in status["actors"]) and len(status["actors"]) >= 5
            return status if status["role"] == "leader" and alive else None

        try:
            return wait_for(ready, timeout, interval=0.05, message="the node to be ready")
        finally:
            probe.close()

    def remember(self, status):
        for a in status.get("actors", []):
            if a.get("pid"):
                self.known_pids.add(a["pid"])

    def status(self) -> dict:
        with Client(self.endpoint, timeout=2.0, retry_for=5.0, **self.client_options) as c:
            status = c.status()
        self.remember(status)
        return status

    def actor_pid(self, name: str) -> int:
        return next(a["pid"] for a in self.status()["actors"] if a["name"] == name)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill_everything(self):
        for c in self._clients:
            c.close()
        self._clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        for pid in self.known_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def supervisor_log(self) -> str:
        return log_tail(self.log_path)

    # -------------------------------------------------------------- clients
    def client(self, **kwargs) -> Client:
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("retry_for", 15.0)
        c = Client(self.endpoint, **{**self.client_options, **kwargs})
        self._clients.append(c)
        return c


@pytest.fixture
def node_factory(tmp_path):
    nodes: list[Node] = []

    def make(name: str = "node", extra_args=(), start: bool = True, http: bool = False) -> Node:
        node = Node(tmp_path / name, extra_args, http=http)
        nodes.append(node)
        if start:
            node.start()
        return node

    yield make
    for node in nodes:
        try:
            node.stop(timeout=10)
        except Exception:
            pass
        node.kill_everything()


@pytest.fixture
def node(node_factory) -> Node:
    return node_factory()


@pytest.fixture
def client(node) -> Client:
    return node.client()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (`rep_call`), for fixtures that act on a failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
