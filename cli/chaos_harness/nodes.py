"""One cluster node as real processes: a `jobbie server` supervisor and its actors, found and ended by pid.

A node keeps its client port, raft port and data dir across restarts. Its processes are ended by
pid only: the supervisor's process group (it runs in a session of its own) and every actor pid
that is verified, through /proc, to still be a process of *this* node. Actors rewrite their
command line, but their stdout stays one of the node's log files, which lie under the node's data
dir; so a recycled pid, or another cluster's process, is never hit.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

from jobbie.actors.config import NodeConfig
from jobbie.actors.supervisor import free_port
from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError

ROLES_UP = ("leader", "follower")
#: The actor processes every node runs (with --http=false), the ones a fault may kill.
ACTORS = ("raft", "admission", "lifecycle", "mirror")


class HarnessError(AssertionError):
    """The cluster did not do what the harness waited for. An AssertionError, so that a test
    shows it as a failed expectation; the chaos command turns it into one line."""


def wait_for(predicate, timeout: float, interval: float = 0.02, message: str = "condition"):
    """The first true value of `predicate()`, polled every `interval` seconds.

    Raises:
        HarnessError: nothing true within `timeout` seconds (the message says "timed out").
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout}s waiting for {message}")


# --------------------------------------------------------------------- /proc
def proc_state(pid: int) -> str | None:
    """The process state letter (R, S, Z...) of `pid`, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()[0].decode()
    except (OSError, ValueError, IndexError):
        return None


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie holds no ports, files or locks)."""
    state = proc_state(pid)
    return state is not None and state != "Z"


def stdout_of(pid: int) -> str:
    """Where `pid`'s stdout goes ("" if it cannot be read): for a node's processes, a log file of the node."""
    try:
        return os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return ""


def log_tail(path: str, chars: int = 4000) -> str:
    """The last `chars` characters of a log file ("" when there is none yet)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")[-chars:]
    except OSError:
        return ""


def child_pids(ppid: int, *needles: str) -> list[int]:
    """Live children of `ppid` whose command line holds one of `needles` (any child if none given).

    Read from /proc; only children of `ppid` are considered, never processes matched by name alone.
    """
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            # The command name (field 2) may hold spaces or parentheses: split after the last ')'.
            fields = stat[stat.rindex(b")") + 2:].split()
            if int(fields[1]) != ppid or fields[0] == b"Z":
                continue
            if needles:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
                if not any(n in cmdline for n in needles):
                    continue
        except (OSError, ValueError, IndexError):
            continue
        out.append(int(entry))
    return out


def pids_writing_under(directory: str) -> list[int]:
    """Live processes whose stdout is a file under `directory` (deleted or not): the processes of
    every node whose data dir lies there, whatever became of their parents."""
    prefix = os.path.abspath(directory) + os.sep
    return sorted(int(e) for e in os.listdir("/proc")
                  if e.isdigit() and stdout_of(int(e)).startswith(prefix) and running(int(e)))


def kill_pid(pid: int, sig: int = signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------- a node
class ClusterNode:
    """One voter: `jobbie server --node-id ... --raft-bind ... --peers ...` on fixed ports."""

    def __init__(self, data_dir: str, node_id: str, raft_port: int, peer_ports: list[int], extra_args=(),
                 raft_password: str | None = None):
        self.data_dir = os.path.abspath(str(data_dir))
        #: A cluster needs a raft password; its nodes get it in their environment (not on a command line).
        self.raft_password = raft_password or secrets.token_urlsafe(18)
        self.node_id = node_id
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.raft_port = raft_port
        self.raft_addr = f"127.0.0.1:{raft_port}"
        self.peer_addrs = [f"127.0.0.1:{p}" for p in peer_ports]
        self.extra_args = ["--http=false", *extra_args]
        self.log_path = self.data_dir + "-supervisor.log"
        self.proc: subprocess.Popen | None = None
        self.known_pids: set[int] = set()
        self._clients: list[Client] = []
        self._probe: Client | None = None
        self._log = None
        self.starts = 0
        self.last_status: dict | None = None
        self.killed_at: float | None = None
        #: Every supervisor and actor pid this node ever had (for the no-leftover check at the end).
        self.seen_pids: set[int] = set()

    # ---------------------------------------------------------------- paths
    @property
    def lmdb_path(self) -> str:
        return NodeConfig(data_dir=self.data_dir).lmdb_path

    @property
    def raft_dir(self) -> str:
        return NodeConfig(data_dir=self.data_dir).raft_dir

    @property
    def journal_path(self) -> str:
        return os.path.join(self.raft_dir, "journal")

    def log_file(self, actor: str = "raft") -> str:
        return os.path.join(NodeConfig(data_dir=self.data_dir).log_dir, f"{actor}.log")

    def read_log(self, actor: str = "raft", offset: int = 0) -> str:
        """The actor's log from byte `offset` on (see `log_size`)."""
        try:
            with open(self.log_file(actor), "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self, actor: str = "raft") -> int:
        try:
            return os.path.getsize(self.log_file(actor))
        except OSError:
            return 0

    def supervisor_log(self) -> str:
        return log_tail(self.log_path)

    # ------------------------------------------------------------ processes
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = False, rejoin: bool = False):
        if self.alive:
            raise HarnessError(f"{self.node_id} is already running")
        os.makedirs(os.path.dirname(self.data_dir) or ".", exist_ok=True)
        args = ["--node-id", self.node_id, "--raft-bind", self.raft_addr, "--peers", ",".join(self.peer_addrs)]
        if rejoin:
            args.append("--rejoin")
        elif not os.path.exists(os.path.join(self.data_dir, "node.json")):
            args.append("--bootstrap")
        self._close_log()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobbie.cli.main", "server", "--data-dir", self.data_dir,
             "--bind", self.endpoint, *args, *self.extra_args],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, start_new_session=True,
            env=dict(os.environ, JOBBIE_RAFT_PASSWORD=self.raft_password))
        self.starts += 1
        self.last_status = None
        self.seen_pids.add(self.proc.pid)
        if wait:
            self.wait_up()
        return self

    def _close_log(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def probe(self) -> Client:
        """This node's own short-time-out client (no retries): one request is one bounded try."""
        if self._probe is None:
            self._probe = Client(self.endpoint, timeout=0.5, retry_for=0)
        return self._probe

    def client(self, **kwargs) -> Client:
        """A client of this node alone, closed when the node's processes are ended."""
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("retry_for", 15.0)
        c = Client(self.endpoint, **kwargs)
        self._clients.append(c)
        return c

    def remember(self, status: dict):
        pids = {a["pid"] for a in status.get("actors", []) if a.get("pid")}
        self.known_pids |= pids
        self.seen_pids |= pids

    def status(self) -> dict:
        """cluster_status, retried for up to 5 s."""
        with Client(self.endpoint, timeout=2.0, retry_for=5.0) as c:
            status = c.status()
        self.remember(status)
        return status

    def actor_pid(self, name: str) -> int:
        return next(a["pid"] for a in self.status()["actors"] if a["name"] == name)

    def live_actor_pid(self, name: str) -> int | None:
        """The pid of actor `name` if the node answers now and that pid is still one of its processes."""
        status = self.try_status()
        if status is None:
            return None
        pid = next((a["pid"] for a in status.get("actors", []) if a["name"] == name and a.get("alive")), None)
        return pid if pid and running(pid) and self.owns(pid) else None

    def leftovers(self) -> list[int]:
        """Pids this node ever had that still run as this node's processes (should be none after a stop)."""
        return sorted(p for p in self.seen_pids if running(p) and self.owns(p))

    def owns(self, pid: int) -> bool:
        """True if `pid` is this node's supervisor or one of its actors (judged by where its stdout goes)."""
        out = stdout_of(pid)
        return out == self.log_path or out.startswith(os.path.join(self.data_dir, "logs") + os.sep)

    def try_status(self) -> dict | None:
        """cluster_status, or None if the node does not answer or its raft report is stale."""
        if not self.alive:
            return None
        try:
            status = self.probe().status()
        except JobbieError:
            return None
        self.remember(status)
        self.last_status = status
        return None if "warning" in status else status

    def wait_up(self, timeout: float = 30.0, need_leader: bool = True) -> dict:
        """Wait until every actor is alive and (unless `need_leader` is false) raft follows a leader.

        Raises:
            HarnessError: the node exited, or was not up within `timeout` seconds.
        """

        def up():
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.node_id} exited with {self.proc.returncode}: "
                                   f"{self.supervisor_log()}\n{self.read_log()[-3000:]}")
            status = self.try_status()
            if status is None:
                return None
            actors = status.get("actors") or []
            if len(actors) < len(ACTORS) or not all(a["alive"] for a in actors):
                return None
            if need_leader and (status["role"] not in ROLES_UP or not status["leader"]):
                return None
            return status

        return wait_for(up, timeout, interval=0.05, message=f"{self.node_id} to be up")

    def own_pids(self) -> set[int]:
        """Actor pids (current children and ones seen in cluster_status) still running as this node's actors."""
        pids = set(self.known_pids)
        if self.alive:
            pids.update(child_pids(self.proc.pid))
        mine = {p for p in pids if running(p) and self.owns(p) and (not self.alive or p != self.proc.pid)}
        self.seen_pids |= mine
        return mine

    def _sigkill(self, pids):
        """SIGKILL the supervisor's process group (while it runs) and each of `pids` (verified as this node's)."""
        if self.alive:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            kill_pid(pid)

    def kill9(self):
        """SIGKILL the supervisor's process group and every actor process of this node; wait until all are gone."""
        if self.alive:
            self.try_status()  # learn the current actor pids, if the node still answers
        pids = self.own_pids()
        self._sigkill(pids)
        self.killed_at = time.monotonic()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self._close_log()
        wait_for(lambda: not any(running(p) for p in pids), 10.0, interval=0.02,
                 message=f"the processes of {self.node_id} to be gone")
        self.known_pids.clear()

    def stop(self, timeout: float = 30.0, signalled: bool = False) -> int | None:
        """SIGTERM the supervisor (it stops its actors in order); wait for every actor to be gone."""
        if not self.alive:
            self._close_log()
            return self.proc.returncode if self.proc else None
        if not signalled:
            self.try_status()
        pids = self.own_pids()
        if not signalled:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self._close_log()
        wait_for(lambda: not any(running(p) for p in pids), 10.0, interval=0.02,
                 message=f"the actors of {self.node_id} to stop")
        self.known_pids.clear()
        return code

    def kill_everything(self):
        """The last step of every stop: no process of this node is left (verified pids only)."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        for c in self._clients:
            c.close()
        self._clients.clear()
        pids = self.own_pids()
        was_alive = self.alive
        self._sigkill(pids)
        if was_alive:
            self.proc.wait(timeout=10)
        self._close_log()
        self.known_pids.clear()

    def __repr__(self):
        return f"<{self.node_id} {self.endpoint} raft {self.raft_addr}>"
