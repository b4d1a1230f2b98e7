"""A three-node jobbie cluster of real processes, for the fault tests in test_cluster.py.

Each node is a real `jobbie server` (supervisor + actor processes) with its
own tmp data dir, a free client port and a free raft port; a node keeps its
ports and data dir across restarts. Processes are ended by pid only: the
supervisor's process group (it runs in its own session) and every actor pid
that is verified, through /proc, to still be a process of *this* node (its
stdout is one of the node's log files; actors rewrite their command line), so
a recycled pid, or another cluster's process, is never hit.

`digest(node)` reads a node's LMDB read-only while the node runs and hashes
every key and value of every named database; the state machine is
deterministic, so two replicas at the same applied index must be
byte-identical. `wait_converged` waits until every running node reports the
same applied index, then compares digests.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import lmdb
import pytest

from jobbie.actors.config import NodeConfig
from jobbie.storage.env import Store
from jobbie.storage.keys import DB_NAMES
from jobbie.storage.machine import applied_index
from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError

from .conftest import Node, free_port, wait_for
from .helpers import child_pids

ROLES_UP = ("leader", "follower")


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
    """Where `pid`'s stdout goes. Actor processes rewrite their command line (setproctitle), but
    their stdout stays the node's log file, which names the node's data dir: that is how a pid is
    told to be ours."""
    try:
        return os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return ""


# --------------------------------------------------------------------- a node
class ClusterNode(Node):
    """One voter: `jobbie server --node-id ... --raft-bind ... --peers ...` on fixed ports."""

    def __init__(self, data_dir: str, node_id: str, raft_port: int, peer_ports: list[int], extra_args=()):
        super().__init__(os.path.abspath(str(data_dir)), extra_args)
        self.node_id = node_id
        self.raft_port = raft_port
        self.raft_addr = f"127.0.0.1:{raft_port}"
        self.peer_addrs = [f"127.0.0.1:{p}" for p in peer_ports]
        self._probe: Client | None = None
        self._log = None
        self.starts = 0
        self.last_status: dict | None = None
        self.killed_at: float | None = None
        #: Every supervisor and actor pid this node ever had (for the no-leftover check at teardown).
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

    # ------------------------------------------------------------ processes
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = False, rejoin: bool = False):
        assert not self.alive, f"{self.node_id} is already running"
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
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, start_new_session=True)
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

    def remember(self, status):
        super().remember(status)
        self.seen_pids.update(a["pid"] for a in status.get("actors", []) if a.get("pid"))

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
        """Wait until every actor is alive and (unless `need_leader` is false) raft follows a leader."""

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.node_id} exited with {self.proc.returncode}: "
                                     f"{self.supervisor_log()}\n{self.read_log()[-3000:]}")
            status = self.try_status()
            if status is None:
                return None
            actors = status.get("actors") or []
            if len(actors) < 5 or not all(a["alive"] for a in actors):
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

    def kill9(self):
        """SIGKILL the supervisor's process group and every actor process of this node; wait until all are gone."""
        if self.alive:
            self.try_status()  # learn the current actor pids, if the node still answers
        pids = self.own_pids()
        if self.alive:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.killed_at = time.monotonic()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
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
        """Teardown: no process of this node is left (verified pids only)."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        for c in self._clients:
            c.close()
        self._clients.clear()
        pids = self.own_pids()
        if self.alive:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._close_log()
        self.known_pids.clear()

    def __repr__(self):
        return f"<{self.node_id} {self.endpoint} raft {self.raft_addr}>"


# ---------------------------------------------------------------- the cluster
class Cluster:
    def __init__(self, base_dir, size: int = 3, extra_args=(), node_args: dict | None = None):
        """`extra_args` go to every node; `node_args` maps a node id to extra args for that node only."""
        raft_ports = [free_port() for _ in range(size)]
        self.nodes: list[ClusterNode] = []
        for i in range(size):
            node_id = f"n{i + 1}"
            args = list(extra_args) + list((node_args or {}).get(node_id, ()))
            peers = [p for j, p in enumerate(raft_ports) if j != i]
            self.nodes.append(ClusterNode(os.path.join(str(base_dir), node_id), node_id, raft_ports[i], peers, args))
        self._clients: list[Client] = []

    def __getitem__(self, node_id: str) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    @property
    def endpoints(self) -> str:
        """All client endpoints, for `Client("tcp://a,tcp://b,tcp://c")`."""
        return ",".join(n.endpoint for n in self.nodes)

    def running(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    def client(self, nodes=None, **kwargs) -> Client:
        """A client spread over `nodes` (default: all), closed at teardown."""
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("retry_for", 30.0)
        nodes = nodes if nodes is not None else self.nodes
        c = Client(",".join(n.endpoint for n in nodes), **kwargs)
        self._clients.append(c)
        return c

    # -------------------------------------------------------------- start/stop
    def start(self, timeout: float = 45.0) -> ClusterNode:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_up(timeout, need_leader=False)
        return self.wait_leader(timeout=timeout)

    def stop(self):
        signalled = set()
        for node in self.nodes:  # SIGTERM to every node first, so they stop side by side
            if node.alive:
                node.own_pids()
                node.proc.send_signal(signal.SIGTERM)
                signalled.add(node.node_id)
        for node in self.nodes:
            try:
                node.stop(timeout=20, signalled=node.node_id in signalled)
            except Exception:  # noqa: BLE001 - teardown goes on; kill_everything follows
                pass
        for c in self._clients:
            c.close()
        self._clients.clear()
        for node in self.nodes:
            node.kill_everything()

    def restart(self, node: ClusterNode, wait: bool = True, **kwargs) -> ClusterNode:
        """Start a stopped or killed node again with the same ports and data dir."""
        node.start(**kwargs)
        if wait:
            node.wait_up()
        return node

    def describe(self, lines: int = 12) -> str:
        """Each node's status and the tails of its logs, for a failing test's report."""
        out = []
        for n in self.nodes:
            status = n.try_status() if n.alive else None
            out.append(f"== {n!r} alive={n.alive} starts={n.starts} status={_brief(status or n.last_status)}")
            for actor in ("raft", "admission", "gateway", "lifecycle", "mirror", "usage"):
                tail = n.read_log(actor).splitlines()[-lines:]
                out.extend(f"   {actor}: {line}" for line in tail)
            out.extend(f"   supervisor: {line}" for line in n.supervisor_log().splitlines()[-lines:])
        return "\n".join(out)

    # ----------------------------------------------------------------- leader
    def leader_view(self, nodes=None) -> ClusterNode | None:
        """The leader if every node in `nodes` (default: running ones) answers and they agree on exactly one."""
        nodes = nodes if nodes is not None else self.running()
        statuses = [(n, n.try_status()) for n in nodes]
        if not statuses or any(s is None for _, s in statuses):
            return None
        leaders = [n for n, s in statuses if s["role"] == "leader"]
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        if any(s["leader"] != leader.raft_addr or s["role"] not in ROLES_UP for _, s in statuses):
            return None
        return leader

    def wait_leader(self, nodes=None, timeout: float = 30.0) -> ClusterNode:
        return wait_for(lambda: self.leader_view(nodes), timeout, interval=0.05,
                        message=f"one leader that all of {nodes or self.running()} agree on")

    def followers(self, leader: ClusterNode | None = None) -> list[ClusterNode]:
        leader = leader or self.wait_leader()
        return [n for n in self.running() if n is not leader]

    # ------------------------------------------------------------ convergence
    def applied_agree(self, nodes) -> int | None:
        """The applied index if every node reports the same applied and commit index, else None."""
        statuses = [n.try_status() for n in nodes]
        if any(s is None for s in statuses):
            return None
        applied = {s["applied_index"] for s in statuses} | {s["commit_index"] for s in statuses}
        return applied.pop() if len(applied) == 1 else None

    def wait_converged(self, nodes=None, timeout: float = 30.0) -> dict:
        """Wait until `nodes` (default: running) agree on the applied index; assert equal digests.

        Returns {node_id: (lmdb applied index, digest)}.
        """
        nodes = nodes if nodes is not None else self.running()
        last = {}

        def converged():
            if self.applied_agree(nodes) is None:
                return None
            digests = {n.node_id: digest(n) for n in nodes}
            last.update(digests)
            if len({d[0] for d in digests.values()}) != 1:
                return None  # an entry landed between two reads; look again
            if len({d[1] for d in digests.values()}) != 1:
                raise AssertionError(f"replicas at the same applied index differ: {describe_difference(nodes)}")
            return digests

        try:
            return wait_for(converged, timeout, interval=0.1, message="every node at the same applied index")
        except AssertionError as exc:
            if "timed out" in str(exc):
                raise AssertionError(f"{exc}; last digests {last}; statuses "
                                     f"{[(n.node_id, _brief(n.last_status)) for n in nodes]}") from None
            raise


def _brief(status):
    if not status:
        return None
    return {k: status.get(k) for k in ("role", "leader", "term", "commit_index", "applied_index", "journal_entries")}


# ------------------------------------------------------------------- digests
def _open_readonly(path: str) -> Store:
    def opened():
        try:
            return Store(path, readonly=True)
        except lmdb.Error:
            return None  # being swapped (snapshot install) right now

    return wait_for(opened, 10.0, interval=0.05, message=f"LMDB at {path} to open")


def lmdb_dump(path: str) -> dict[str, dict[bytes, bytes]]:
    store = _open_readonly(path)
    try:
        with store.begin() as txn:
            return {name.decode(): dict(txn.cursor(db=store.dbs[name.decode()])) for name in DB_NAMES}
    finally:
        store.close()


def digest_path(path: str) -> tuple[int, str]:
    """(applied index, hash of every key/value of every db) of the LMDB at `path`, read in one transaction."""
    store = _open_readonly(path)
    try:
        h = hashlib.blake2b(digest_size=16)
        with store.begin() as txn:
            index = applied_index(txn, store.dbs)
            for name in DB_NAMES:
                h.update(struct.pack(">I", len(name)) + name)
                for key, value in txn.cursor(db=store.dbs[name.decode()]):
                    h.update(struct.pack(">II", len(key), len(value)))
                    h.update(key)
                    h.update(value)
        return index, h.hexdigest()
    finally:
        store.close()


def digest(node: ClusterNode) -> tuple[int, str]:
    """Stop-free digest of a node's LMDB: (applied index, hash)."""
    return digest_path(node.lmdb_path)


def describe_difference(nodes) -> str:
    dumps = {n.node_id: lmdb_dump(n.lmdb_path) for n in nodes}
    first_id, first = next(iter(dumps.items()))
    out = []
    for other_id, other in dumps.items():
        if other_id == first_id:
            continue
        for db in first:
            a, b = first[db], other[db]
            keys = sorted(set(a) ^ set(b))[:3] + [k for k in sorted(set(a) & set(b)) if a[k] != b[k]][:3]
            if keys:
                out.append(f"{first_id} vs {other_id} db {db}: {len(a)} vs {len(b)} keys, e.g. {keys}")
    return "; ".join(out) or "(no difference on a second read)"


def copy_lmdb(src: str, dest: str):
    """A consistent copy of a (possibly running) node's LMDB into `dest` (replaced), via one read transaction."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    store = _open_readonly(src)
    try:
        store.env.copy(dest)
    finally:
        store.close()


# ------------------------------------------------------------------- journal
# pysyncobj 0.3.17 FileJournal: a 40-byte header whose last field (offset 36,
# u32 little-endian) is the end of the last record; then records
# size(4) idx(8) term(8) command(size-16) size(4). A command's first byte is
# its type (0 = a replicated call: pickled (func_id, (entry_bytes,))).
JOURNAL_HEADER = 40
LAST_OFFSET_AT = 36


def journal_end(path: str) -> int:
    with open(path, "rb") as f:
        f.seek(LAST_OFFSET_AT)
        return struct.unpack("<I", f.read(4))[0]


def set_journal_end(path: str, offset: int):
    with open(path, "r+b") as f:
        f.seek(LAST_OFFSET_AT)
        f.write(struct.pack("<I", offset))


def journal_records(path: str, end: int | None = None):
    """(record start, record end, idx, term, command) of every whole record before `end` (default: the header's)."""
    with open(path, "rb") as f:
        data = f.read()
    recorded = struct.unpack_from("<I", data, LAST_OFFSET_AT)[0]
    end = min(recorded if end is None else end, len(data))
    out = []
    offset = JOURNAL_HEADER
    while offset + 4 <= end:
        size = struct.unpack_from("<I", data, offset)[0]
        rec_end = offset + 4 + size + 4
        if size < 16 or rec_end > end:
            break
        idx, term = struct.unpack_from("<QQ", data, offset + 4)
        out.append((offset, rec_end, idx, term, bytes(data[offset + 20:offset + 4 + size])))
        offset = rec_end
    return out


def journal_entry(command: bytes) -> dict | None:
    """The jobbie batch inside a journal command, or None for pysyncobj's own (no-op) commands."""
    import msgpack
    import pysyncobj.pickle as ps_pickle

    if not command or command[0] != 0:
        return None
    call = ps_pickle.loads(command[1:])
    entry_bytes = call[1][0]
    return msgpack.unpackb(entry_bytes, raw=False)


def journal_job_ids(path: str, end: int | None = None) -> set[str]:
    """Every job id that an op in the journal (up to `end`) carries."""
    ids = set()
    for _, _, _, _, command in journal_records(path, end):
        entry = journal_entry(command)
        for op in (entry or {}).get("ops") or ():
            ids.update(op.get("ids") or ())
    return ids


def replay_digest(journal_path: str, upto_index: int, work_dir: str) -> tuple[int, str]:
    """Apply the journal's jobbie entries up to `upto_index` to a fresh LMDB, as the raft actor does; digest it."""
    from jobbie.actors.raft.core import decode_entry
    from jobbie.storage.machine import apply_batch

    path = os.path.join(work_dir, "replay-lmdb")
    shutil.rmtree(path, ignore_errors=True)
    store = Store(path)
    try:
        for _, _, idx, _, command in journal_records(journal_path):
            if idx > upto_index or not command or command[0] != 0:
                continue
            try:
                entry = decode_entry(journal_entry_bytes(command))
            except Exception:  # noqa: BLE001 - the raft actor applies an undecodable entry as empty
                entry = {"v": 1, "ops": []}
            with store.begin(write=True) as txn:
                apply_batch(store, txn, idx, entry["ops"])
    finally:
        store.close()
    try:
        return digest_path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def journal_entry_bytes(command: bytes) -> bytes:
    import pysyncobj.pickle as ps_pickle

    return ps_pickle.loads(command[1:])[1][0]


# --------------------------------------------------------------------- fixture
@pytest.fixture
def make_cluster(tmp_path, request):
    """Clusters made by a test; stopped at teardown, with their logs shown if the test failed."""
    clusters: list[Cluster] = []
    failed_before = request.session.testsfailed

    def make(**kwargs) -> Cluster:
        c = Cluster(tmp_path / f"c{len(clusters)}", **kwargs)
        clusters.append(c)
        return c

    yield make
    if request.session.testsfailed > failed_before:
        for c in clusters:  # the node statuses and log tails, shown with the failure
            print(c.describe())
    for c in clusters:
        c.stop()
    left = {n.node_id: n.leftovers() for c in clusters for n in c.nodes}
    assert not any(left.values()), f"processes left behind: {left}"
