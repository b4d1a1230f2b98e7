"""A jobbie cluster of real processes on free loopback ports, and digests of its replicas.

Each node is a real `jobbie server` with its own data dir under `base_dir`, a free client port
and a free raft port (see nodes.py for how its processes are found and ended).

`digest(node)` reads a node's LMDB read-only while the node runs and hashes every key and value
of every named database. The state machine is deterministic, so two replicas at the same applied
index must be byte-identical. `wait_converged` waits until every running node reports the same
applied index, then compares digests.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import struct

import lmdb

from jobbie.actors.supervisor import free_port
from jobbie.storage.env import Store
from jobbie.storage.keys import DB_NAMES
from jobbie.storage.machine import applied_index
from jobbie.transport.client import Client

from .nodes import ACTORS, ROLES_UP, ClusterNode, HarnessError, wait_for


class ReplicasDiffer(HarnessError):
    """Two replicas at the same applied index hold different bytes."""


class Cluster:
    def __init__(self, base_dir, size: int = 3, extra_args=(), node_args: dict | None = None):
        """`extra_args` go to every node; `node_args` maps a node id to extra args for that node only."""
        self.base_dir = os.path.abspath(str(base_dir))
        raft_ports = [free_port() for _ in range(size)]
        #: One raft password for the whole cluster, made here.
        self.raft_password = secrets.token_urlsafe(18)
        self.nodes: list[ClusterNode] = []
        for i in range(size):
            node_id = f"n{i + 1}"
            args = list(extra_args) + list((node_args or {}).get(node_id, ()))
            peers = [p for j, p in enumerate(raft_ports) if j != i]
            self.nodes.append(ClusterNode(os.path.join(self.base_dir, node_id), node_id, raft_ports[i], peers, args,
                                          raft_password=self.raft_password))
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
        """A client spread over `nodes` (default: all), closed when the cluster stops."""
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
        """SIGTERM every node (side by side), wait for each, then SIGKILL whatever of them is left."""
        signalled = set()
        for node in self.nodes:
            if node.alive:
                node.own_pids()
                node.proc.send_signal(signal.SIGTERM)
                signalled.add(node.node_id)
        for node in self.nodes:
            try:
                node.stop(timeout=20, signalled=node.node_id in signalled)
            except Exception:  # noqa: BLE001 - the stop goes on; kill_everything follows
                pass
        for c in self._clients:
            c.close()
        self._clients.clear()
        for node in self.nodes:
            node.kill_everything()

    def leftovers(self) -> dict[str, list[int]]:
        """{node id: pids} of node processes still running (empty lists after a good stop)."""
        return {n.node_id: n.leftovers() for n in self.nodes}

    def restart(self, node: ClusterNode, wait: bool = True, **kwargs) -> ClusterNode:
        """Start a stopped or killed node again with the same ports and data dir."""
        node.start(**kwargs)
        if wait:
            node.wait_up()
        return node

    def describe(self, lines: int = 12) -> str:
        """Each node's status and the tails of its logs, for a failure's report."""
        out = []
        for n in self.nodes:
            status = n.try_status() if n.alive else None
            out.append(f"== {n!r} alive={n.alive} starts={n.starts} status={brief(status or n.last_status)}")
            for actor in (*ACTORS, "usage"):
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
        """Wait until `nodes` (default: running) agree on the applied index; compare their digests.

        Returns {node_id: (lmdb applied index, digest)}.

        Raises:
            ReplicasDiffer: two replicas at the same index differ (the message says where).
            HarnessError: the nodes did not reach one index within `timeout` seconds.
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
                raise ReplicasDiffer(f"replicas at the same applied index differ: {describe_difference(nodes)}")
            return digests

        try:
            return wait_for(converged, timeout, interval=0.1, message="every node at the same applied index")
        except ReplicasDiffer:
            raise
        except HarnessError as exc:
            raise HarnessError(f"{exc}; last digests {last}; statuses "
                               f"{[(n.node_id, brief(n.last_status)) for n in nodes]}") from None


def brief(status):
    if not status:
        return None
    return {k: status.get(k) for k in ("role", "leader", "term", "commit_index", "applied_index", "journal_entries")}


# ------------------------------------------------------------------- digests
def open_readonly(path: str) -> Store:
    def opened():
        try:
            return Store(path, readonly=True)
        except lmdb.Error:
            return None  # being swapped (snapshot install) right now

    return wait_for(opened, 10.0, interval=0.05, message=f"LMDB at {path} to open")


def lmdb_dump(path: str) -> dict[str, dict[bytes, bytes]]:
    store = open_readonly(path)
    try:
        with store.begin() as txn:
            return {name.decode(): dict(txn.cursor(db=store.dbs[name.decode()])) for name in DB_NAMES}
    finally:
        store.close()


def digest_path(path: str) -> tuple[int, str]:
    """(applied index, hash of every key/value of every db) of the LMDB at `path`, read in one transaction."""
    store = open_readonly(path)
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


def digest_of_op_view(node: ClusterNode) -> tuple[int, str]:
    """(applied index, digest) as the `digest` op computes them, from a read-only open of the node's LMDB."""
    from jobbie.storage.reads import read_digest

    store = open_readonly(node.lmdb_path)
    try:
        with store.begin() as txn:
            answer = read_digest(txn, store.dbs, {})
        return answer["applied_index"], answer["digest"]
    finally:
        store.close()


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
    store = open_readonly(src)
    try:
        store.env.copy(dest)
    finally:
        store.close()
