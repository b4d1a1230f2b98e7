"""Servers the benchmark starts for itself: a jobbie node, and the ROUTER echo ceiling."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from jobbie.actors.supervisor import free_port
from jobbie.transport.client import Client
from jobbie.transport.curve import SERVER_KEY_ENV
from jobbie.transport.errors import JobbieError


class Spawned:
    """A server process in its own session, stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self, argv: list[str], endpoint: str, cleanup_dir: str | None = None):
        self.endpoint = endpoint
        self.cleanup_dir = cleanup_dir
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.cleanup_dir:
            shutil.rmtree(self.cleanup_dir, ignore_errors=True)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def jobbie_node(durable: bool = False, mirror: bool = True, timeout: float = 30.0, http: bool = False,
                auth: bool = False, curve: bool = False) -> Spawned:
    """A fresh node; with `http` its http actor listens on a free port (`node.http_url`); with `auth`
    it runs with --auth, and its first admin token is put in JOBBIE_TOKEN of this process (which the
    bench's clients and driver processes read); with `curve` it runs with --curve, and the public key
    it prints is `node.curve_server_key` and JOBBIE_CURVE_SERVER_KEY of this process (which the
    bench's clients read; the driver is handed it)."""
    data_dir = tempfile.mkdtemp(prefix="jobbie-bench-")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    http_port = free_port() if http else None
    argv = [sys.executable, "-m", "jobbie.cli.main", "server", "--data-dir", os.path.join(data_dir, "node"),
            "--bind", endpoint]
    argv += ["--http-bind", f"127.0.0.1:{http_port}"] if http else ["--http=false"]
    if durable:
        argv.append("--durable")
    if not mirror:
        argv.append("--mirror=false")
    if auth:
        argv.append("--auth")
    if curve:
        argv.append("--curve")
    os.environ.pop("JOBBIE_TOKEN", None)
    os.environ.pop(SERVER_KEY_ENV, None)
    node = Spawned(argv, endpoint, cleanup_dir=data_dir)
    node.curve_server_key = None
    if curve:
        node.curve_server_key = printed(node, CURVE_KEY_LINE, timeout, "the --curve node printed no public key")
        os.environ[SERVER_KEY_ENV] = node.curve_server_key
    if auth:
        os.environ["JOBBIE_TOKEN"] = printed(node, TOKEN_LINE, timeout, "the --auth node printed no first token")
    node.http_url = f"http://127.0.0.1:{http_port}" if http else None
    wait_ready(node, timeout)
    return node


TOKEN_LINE = re.compile(r"^\s+(tok_\S+\.\S+)\s*$", re.M)
CURVE_KEY_LINE = re.compile(r"the server's public key:\n\s+(\S{40})\n")


def printed(node: Spawned, pattern: re.Pattern, timeout: float, failure: str) -> str:
    """What the node printed that `pattern` finds (its last match), waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = pattern.findall(node.output())
        if found:
            return found[-1]
        if time.monotonic() > deadline or node.proc.poll() is not None:
            node.stop()
            raise RuntimeError(f"{failure}: {node.output()}")
        time.sleep(0.05)


def wait_ready(node: Spawned, timeout: float):
    deadline = time.monotonic() + timeout
    with Client(node.endpoint, timeout=0.5, retry_for=0) as probe:
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"jobbie server exited: {node.output()}")
            try:
                status = probe.call("cluster_status")
                if status["role"] == "leader" and all(a["alive"] for a in status["actors"]):
                    return
            except JobbieError:
                pass
            time.sleep(0.05)
    node.stop()
    raise RuntimeError("jobbie server did not become ready in time")


def ceiling_server() -> Spawned:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = Spawned([sys.executable, "-m", "jobbie.bench.ceiling", endpoint], endpoint)
    time.sleep(0.3)
    return server


def wait_mirrored(client: Client, timeout: float = 600.0) -> float:
    """Wait until the node's mirror holds everything raft has applied now; the seconds it took."""
    started = time.monotonic()
    target = client.status()["applied_index"]
    while time.monotonic() - started < timeout:
        m = client.status().get("mirror") or {}
        if m.get("applied_index", -1) >= target and not m.get("repair") and not m.get("backlog"):
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError("the mirror did not catch up")
