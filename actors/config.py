"""A node's configuration, written once by the supervisor and read by every actor process."""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field

from jobbie.transport import codec

#: Actor processes, in start order. The gateway role (the client socket) lives in the admission
#: process: see actors/admission/actor.py.
ACTORS = ("raft", "admission", "lifecycle", "mirror", "usage", "http")


@dataclass
class NodeConfig:
    data_dir: str
    #: Client endpoint of the gateway's ROUTER socket.
    bind: str = "tcp://127.0.0.1:7700"
    node_id: str = "n1"
    #: host:port of this node's raft server; peers are the other voters.
    raft_bind: str = ""
    peers: list = field(default_factory=list)
    #: fsync the raft journal before a write is acknowledged.
    durable: bool = False
    #: Folder of the IPC sockets between this node's actor processes.
    run_dir: str = ""
    #: Largest encoded payload of one job.
    payload_bytes_max: int = 1024 * 1024
    #: How long the gateway waits for a write's outcome before answering UNAVAILABLE.
    write_timeout_ms: int = 5000
    #: Admission: ops queued or in flight at once, over all clients / for one client.
    inflight_max: int = 50_000
    inflight_per_client_max: int = 10_000
    #: Lifecycle: how often it looks for due work.
    lifecycle_interval_ms: int = 50
    #: Lifecycle: delete completed and cancelled jobs this long after they finished (0: keep them).
    completed_retention_ms: int = 7 * 86_400_000
    #: Lifecycle: delete worker records not seen by fetch or heartbeat for this long (0: keep them).
    worker_retention_ms: int = 86_400_000
    #: Run the mirror actor (SQLite view: search, bulk). Off: those ops answer UNAVAILABLE.
    mirror: bool = True
    #: Run the usage actor (usage rollups for usage_summary). Off: those ops answer UNAVAILABLE.
    usage: bool = True
    #: Run the http actor (JSON API, web UI, /metrics); it reaches the node through `bind`, as a client.
    http: bool = True
    #: HOST:PORT of the http actor.
    http_bind: str = "127.0.0.1:7780"
    #: Free space the data dir's disk keeps: under it, writes are refused (disk_full) until space is freed.
    disk_free_min_mb: int = 128
    #: Every request needs a token whose role covers its op (except `health`).
    auth: bool = False
    #: With auth, on a first start: {"id", "hash"} of the first admin token (the supervisor prints it).
    bootstrap_token: dict | None = None
    #: The client port speaks CURVE with the node's key pair (DATA_DIR/curve, made on the first start).
    curve: bool = False
    #: With curve: a folder of client public keys (NAME.key); only those clients (and the node's own
    #: processes) may connect. Empty: any client that knows the node's public key.
    curve_clients: str = ""
    #: Log level of the supervisor and every actor (debug, info, warning, error).
    log_level: str = "info"
    #: text, or json (one object per line).
    log_format: str = "text"
    #: Raft entries between snapshots (log compaction); >= 100.
    snapshot_every_entries: int = 20_000
    #: Shared secret for raft peer traffic (pysyncobj encryption); required off loopback.
    raft_password: str = ""

    def actors(self) -> tuple:
        """The actor processes this node runs, in start order."""
        off = {name for name, on in (("mirror", self.mirror), ("usage", self.usage), ("http", self.http)) if not on}
        return tuple(a for a in ACTORS if a not in off)

    def endpoint(self, name: str) -> str:
        """IPC endpoint of an actor's inbound socket (e.g. `mirror`: change feed, bulk results,
        search requests), or of a status PUB (`raft-status`, `supervisor`)."""
        return f"ipc://{self.run_dir}/{name}.sock"

    @property
    def mirror_path(self) -> str:
        """The mirror's SQLite file (derived data: rebuilt from LMDB when lost)."""
        return os.path.join(self.data_dir, "mirror.sqlite")

    @property
    def lmdb_path(self) -> str:
        return os.path.join(self.data_dir, "lmdb")

    @property
    def raft_dir(self) -> str:
        return os.path.join(self.data_dir, "raft")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.data_dir, "logs")

    def save(self, path: str):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(codec.encode(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "NodeConfig":
        with open(path, "rb") as f:
            return cls(**codec.decode_trusted(f.read()))

    @property
    def client_endpoint(self) -> str:
        """Where a process of this node reaches the gateway as a client (a wildcard bind means loopback)."""
        for wildcard in ("tcp://*:", "tcp://0.0.0.0:", "tcp://[::]:"):
            if self.bind.startswith(wildcard):
                return "tcp://127.0.0.1:" + self.bind[len(wildcard):]
        return self.bind


def pick_run_dir(data_dir: str) -> str:
    """The folder of the node's IPC sockets: DATA_DIR/run, or a fresh private temporary folder.

    A unix socket's path must fit in sockaddr_un's sun_path (108 bytes on Linux, and ZeroMQ
    wants the `ipc://` endpoint under about 100), so a deep data dir cannot hold them. Then
    the sockets go in a new folder made by mkdtemp: mode 0700, a random name, created
    atomically, so no other user can create it first or look inside. The supervisor
    removes it when the node stops.
    """
    candidate = os.path.join(os.path.abspath(data_dir), "run")
    if len(candidate) + len("/admission.sock") + len("ipc://") < 100:
        return candidate
    return tempfile.mkdtemp(prefix="jobbie-run-")
