"""Helpers for the fault tests: a background enqueuer, pid checks, pipelined reads.

Servers come from the `node` / `node_factory` fixtures, except `FastBackoffNode`,
which its test stops in a `finally`. Everything is stopped by pid, never by name.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

from jobbie.cli.chaos_harness.load import get_jobs  # noqa: F401 (pipelined get_job, for the tests)
from jobbie.cli.chaos_harness.nodes import child_pids  # noqa: F401 (for the tests)
from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError

from .conftest import Node, wait_for

STATES = ("pending", "active", "scheduled", "retrying", "dead", "completed", "held", "cancelled")


# ------------------------------------------------------------------ processes
def pid_alive(pid: int) -> bool:
    """True while `pid` exists (a zombie counts as alive: nobody reaped it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_pid(pid: int, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------- status
def actor_row(status: dict, name: str) -> dict | None:
    return next((a for a in status.get("actors") or () if a.get("name") == name), None)


def wait_restarted(node: Node, name: str, old_pid: int, timeout: float = 15.0) -> dict:
    """Wait until the supervisor reports `name` alive again under a new pid; returns its row."""

    def restarted():
        try:
            row = actor_row(node.status(), name)
        except JobbieError:
            return None
        if row and row["alive"] and row["pid"] and row["pid"] != old_pid and row["restarts"] >= 1:
            return row
        return None

    return wait_for(restarted, timeout, interval=0.05, message=f"the {name} actor to be restarted")


def first_answer(endpoint: str, probe_queue: str, started: float, limit: float = 15.0,
                 timeout: float = 0.25) -> float:
    """Seconds from `started` (time.monotonic()) until the node answers cluster_status and an enqueue.

    Uses its own short-time-out client without retries, so each try is bounded;
    a try whose outcome is unknown may still create a job in `probe_queue`
    later, so keep that queue apart from the ones whose counts a test checks.
    """
    with Client(endpoint, timeout=timeout, retry_for=0) as probe:
        def answered():
            try:
                probe.status()
                probe.enqueue(probe_queue, {"probe": uuid.uuid4().hex})
            except JobbieError:
                return None
            return time.monotonic()

        return wait_for(answered, limit, interval=0.01, message="a fresh request to be answered") - started


# -------------------------------------------------------------------- reading
def queue_row(client: Client, name: str) -> dict:
    """The list_queues row of `name` (all counts zero if the queue does not exist)."""
    for row in client.queues():
        if row["name"] == name:
            return row
    return {"name": name, "paused": False, **{s: 0 for s in STATES}}


def total_jobs(row: dict) -> int:
    return sum(v for k, v in row.items() if k not in ("name", "paused") and isinstance(v, int))


# ------------------------------------------------------------------- enqueuer
class Enqueuer(threading.Thread):
    """Keeps enqueuing unique payloads into one queue and records every acknowledged job id.

    Its client rides through restarts: a time-out or UNAVAILABLE answer is
    retried with the same request_id for up to `retry_for` seconds.
    """

    def __init__(self, endpoint: str, queue: str, timeout: float = 1.0, retry_for: float = 20.0,
                 pause: float = 0.003):
        super().__init__(name=f"enqueuer-{queue}", daemon=True)
        self.queue = queue
        self.pause = pause
        self.retry_for = retry_for
        self.timeout = timeout
        self.client = Client(endpoint, timeout=timeout, retry_for=retry_for)
        self.acked: list[str] = []
        self.payloads: dict[str, dict] = {}
        self.errors: list[str] = []
        #: Longest time one enqueue call took (> `timeout` means it rode through an outage by retrying).
        self.max_latency = 0.0
        self._halt = threading.Event()

    def run(self):
        n = 0
        while not self._halt.is_set():
            n += 1
            payload = {"n": n, "nonce": uuid.uuid4().hex}
            started = time.monotonic()
            try:
                job_id = self.client.enqueue(self.queue, payload)
            except JobbieError as exc:
                self.errors.append(f"enqueue #{n}: {exc} (reason {exc.reason})")
                self._halt.wait(0.05)
                continue
            if job_id in self.payloads:
                self.errors.append(f"enqueue #{n} got job id {job_id} already given to {self.payloads[job_id]}")
            self.max_latency = max(self.max_latency, time.monotonic() - started)
            self.acked.append(job_id)
            self.payloads[job_id] = payload
            if self.pause:
                self._halt.wait(self.pause)

    def wait_acked(self, count: int, timeout: float, what: str = ""):
        wait_for(lambda: len(self.acked) >= count, timeout, interval=0.01,
                 message=f"{count} acknowledged enqueues{what} (have {len(self.acked)}, errors {self.errors[:3]})")

    def stop(self):
        self._halt.set()
        self.join(timeout=self.retry_for + self.timeout + 5.0)
        alive = self.is_alive()
        self.client.close()
        if alive:
            raise AssertionError("the enqueuer thread did not stop")


# ------------------------------------------------------- a node with short backoff
_FAST_BACKOFF_SERVER = """
import functools, sys
from jobbie.actors import supervisor
# Only the restart backoff is shortened; the restart-intensity rule is the real one.
supervisor.RestartPolicy = functools.partial(supervisor.RestartPolicy, backoff_base_s=0.01, backoff_max_s=0.02)
from jobbie.cli.main import main
sys.argv = ["jobbie", *sys.argv[1:]]
main()
"""


class FastBackoffNode(Node):
    """A real `jobbie server` (same CLI, same supervisor) whose restart backoff is 10-20 ms.

    Not made by `node_factory`: the test that uses it stops it in a `finally`.
    """

    def start(self, wait: bool = True):
        os.makedirs(os.path.dirname(self.data_dir) or ".", exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FAST_BACKOFF_SERVER, "server", "--data-dir", self.data_dir,
             "--bind", self.endpoint, *self.extra_args],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            self.wait_ready()
        return self


class FetchAckLoops:
    """`n` worker loops (threads; `clients` sockets shared between them) that fetch one job at a time
    and hand it to `handle(client, job)`, which acks it and returns what to remember in `acked`;
    until stopped. Errors other than a lost lease are kept in `errors`."""

    prefix = "w"

    def __init__(self, endpoints: str, queue: str, n: int, clients: int = 10, lease_ms: int = 30_000):
        self.queue, self.lease_ms = queue, lease_ms
        self.clients = [Client(endpoints, timeout=2.0, retry_for=30.0) for _ in range(clients)]
        self.stopping = threading.Event()
        self.acked: list = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self.loop, args=(i,), daemon=True) for i in range(n)]

    def handle(self, client: Client, job: dict):
        raise NotImplementedError

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def loop(self, i: int):
        client = self.clients[i % len(self.clients)]
        while not self.stopping.is_set():
            try:
                for job in client.fetch(self.queue, f"{self.prefix}{i}", wait_ms=200, lease_ms=self.lease_ms):
                    self.acked.append(self.handle(client, job))
            except JobbieError as exc:
                if exc.reason != "lease_lost":
                    self.errors.append(str(exc))
                time.sleep(0.05)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(15)
        for c in self.clients:
            c.close()


def settled_queue(client: Client, queue: str) -> dict | None:
    """The queue's list_queues row once nothing of it is pending or active, else None."""
    row = next((q for q in client.queues() if q["name"] == queue), None)
    return row if row and row["pending"] == 0 and row["active"] == 0 else None
