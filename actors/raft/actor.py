"""The raft actor process: pysyncobj plus the state machine over LMDB.

Two threads matter here:
- the pykka actor's thread owns the inbound socket and the status PUB
  socket, and hands each drained entry to pysyncobj without waiting;
- pysyncobj's tick thread applies committed entries (`apply_entry`), takes
  snapshots (snapshots.py) and owns the outbound PUSH sockets it sends
  results on (created lazily, on that thread, so each socket stays with one
  thread).

Before pysyncobj starts, startup.py makes journal, snapshot and LMDB agree.
A storage fault during an apply exits the process (code 70): the supervisor
restarts it and the journal replays from LMDB's recorded index. A data dir
that cannot be recovered automatically exits with code 78 and a message;
the supervisor then stops the node instead of restarting.
"""
from __future__ import annotations

import logging
import os
import socket as pysocket
import threading
import time

import lmdb
import zmq
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import monotonic as monotonic_time

from jobbie.storage.env import Store
from jobbie.storage.machine import apply_batch, applied_index
from jobbie.transport import codec
from jobbie.transport.metrics import Window
from jobbie.transport.pump import Inbox, PumpActor, serve_process, socket

from . import core, startup
from .snapshots import Snapshotter

from . import journal, wire
from .disk import DiskWatch

log = logging.getLogger("jobbie.raft")


class ResendFilter(logging.Filter):
    """pysyncobj logs CRITICAL "state machine may have diverged" whenever a leader's resend makes a
    follower truncate entries it had applied, even when the resent entries are the same ones (the
    common case: an acknowledgement was slow). jobbie's apply skips every index at or below the one it
    stored, so the state machine is unchanged; a real divergence shows as different digests
    (`jobbie digest`). The message becomes a WARNING, at most once a minute, saying so."""

    def __init__(self, every_s: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self.last = None
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "state machine may have diverged" not in record.getMessage():
            return True
        now = self.clock()
        if self.last is not None and now - self.last < self.every_s:
            self.dropped += 1
            return False
        self.last = now
        original = record.getMessage().replace("%", "%%")
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = ("raft re-received entries it had applied (%s more since the last note); jobbie skips indexes "
                      "it applied, so this is a resend, not a divergence unless `jobbie digest` differs between "
                      f"nodes: {original}")
        record.args = (self.dropped,)
        self.dropped = 0
        return True


logging.getLogger("pysyncobj.syncobj").addFilter(ResendFilter())
# Journal compaction writes aside and renames into place (a kill mid-way loses no entry).
journal.install()
# Cheaper compression, and acknowledgements that never rewind a follower's next index (wire.py).
wire.install()

FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if k.isupper()}
#: The error a leader under its disk reserve answers a forwarded write with (beside pysyncobj's FAIL_REASON).
DISK_FULL = 100
FAIL_NAMES[DISK_FULL] = "disk_full"
EXIT_STORAGE_FAULT = 70
EXIT_CANNOT_START = 78
#: Change-feed frames queued for a mirror that is away or slow; beyond this they are dropped
#: and the mirror repairs the gap from LMDB when it is back.
MIRROR_FEED_HWM = 2000
#: Journal entries between snapshots. Each entry holds a batch of ops, so this
#: is tens of thousands of jobs; the first snapshot comes only after this many
#: entries, never on an empty state.
SNAPSHOT_EVERY_ENTRIES = 20_000
#: pysyncobj's appendEntriesBatchSizeBytes (see syncobj_conf).
APPEND_ENTRIES_BATCH_BYTES = 2 * 1024 * 1024
#: Socket buffers of raft's peer connections (also the size of one read).
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


def syncobj_conf(config, single: bool, snapshotter: Snapshotter) -> SyncObjConf:
    os.makedirs(config.raft_dir, exist_ok=True)
    return SyncObjConf(
        journalFile=os.path.join(config.raft_dir, "journal"),
        fullDumpFile=os.path.join(config.raft_dir, "snapshot"),
        # Wake the tick thread on every command instead of waiting for the next
        # poll period: single requests are not held back for a batch window
        # (admission batches already).
        appendEntriesUseBatch=False,
        autoTickPeriod=0.05,
        # pysyncobj sends an entry of this size or more alone, in chunks, and followers can
        # drop it at a chunk boundary; below it, entries are batched up to this size per
        # message (catch-up). A jobbie entry is at most about 1.1 MiB of msgpack (admission's
        # entry_bytes_max, the gateway's op_bytes_max), at most 1.6 MiB once pysyncobj has
        # pickled it: always below. A larger batch would only lengthen each tick.
        appendEntriesBatchSizeBytes=APPEND_ENTRIES_BATCH_BYTES,
        # pysyncobj sets both socket buffers (and so turns off the kernel's autotuning) to 64 KiB by
        # default: a 1 MiB entry then crosses in ~16 rounds of wake-ups of two busy processes, which
        # took ~1 s on a loaded 2-core machine. The kernel caps these at net.core.wmem_max and
        # rmem_max (4 MiB on many hosts, 208 KiB on some).
        sendBufferSize=SOCKET_BUFFER_BYTES,
        recvBufferSize=SOCKET_BUFFER_BYTES,
        bindAddress=config.raft_bind,
        maxBindRetries=20,
        bindRetryTime=0.25,
        # Answer "no leader" at once (UNAVAILABLE) instead of queueing forever.
        commandsWaitLeader=False,
        # An isolated leader steps down within seconds: pysyncobj's default (30 s) lets a minority
        # leader call itself leader for that long.
        leaderFallbackTimeout=5.0,
        # A single node elects itself after one short timeout; a cluster on a
        # busy 2-core box needs more slack than pysyncobj's 0.4-1.4 s defaults.
        appendEntriesPeriod=0.03 if single else 0.1,
        raftMinTimeout=0.1 if single else 0.8,
        raftMaxTimeout=0.2 if single else 1.6,
        connectionRetryTime=1.0,
        # Compaction by size only (a time trigger would snapshot a near-empty log).
        logCompactionMinEntries=config.snapshot_every_entries,
        logCompactionMinTime=2**31,
        serializer=snapshotter.serialize,
        deserializer=snapshotter.deserialize,
        serializeChecker=snapshotter.state,
        password=config.raft_password or None,
        # `jobbie cluster add|remove`; the membership is kept in the log and snapshots.
        dynamicMembershipChange=True,
    )


class JobbieRaft(SyncObj):
    """pysyncobj node whose one replicated method applies a msgpack batch of ops."""

    def __init__(self, config, store: Store, ctx: zmq.Context):
        self._store = store
        self._ctx = ctx
        self._config = config
        self._local = threading.local()
        self.apply_ms = Window(1024)  # per entry: the LMDB transaction of apply_entry
        with store.begin() as txn:
            self._applied = applied_index(txn, store.dbs)
        # The change feed to the mirror; a fresh process (or a new LMDB) starts its chain at
        # the applied index LMDB holds.
        self._feed = core.FeedBatch(self._applied)
        self._feed_dropped = 0
        self.lmdb_id = _file_id(config.lmdb_path)
        self._synced_fd = None
        #: Set by the actor thread from its DiskWatch: this node's disk is under its reserve.
        self.disk_low = False
        self._disk_noted = False
        self.snapshotter = Snapshotter(config.raft_dir, config.lmdb_path, self)
        single = not config.peers
        super().__init__(config.raft_bind, list(config.peers), syncobj_conf(config, single, self.snapshotter))
        self.addOnTickCallback(self._kick)
        self.addOnTickCallback(self._feed_due)

    def _SyncObj__onMessageReceived(self, node, message):
        # pysyncobj binds this (name-mangled) handler to its transport in __init__; a success
        # acknowledgement is handled here so that it never moves the next index back (wire.py).
        kind = message.get("type")
        if kind == "next_node_idx" and wire.on_next_index(self, node, message):
            return
        if self.disk_low:
            message = self._under_disk_reserve(node, kind, message)
            if message is None:
                return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _under_disk_reserve(self, node, kind, message):
        """While this node's disk is under its reserve it adds nothing to its journal, which would
        otherwise fill the disk (the journal is a memory map: a full disk is a SIGBUS, and a
        restart meets the same entries again):
        - a follower leaves the leader's messages unanswered, as if it were away, but they still
          count as heartbeats, so it starts no election; once space is freed it answers again and
          the leader sends what it missed. (Taking the heartbeat but not its entries would not do:
          pysyncobj truncates the log after the entries a message replaces.);
        - a leader refuses the writes other nodes forward to it (`disk_full` to their clients), as
          its own gateway refuses its own clients'.
        Returns the message to handle, or None when it is answered here."""
        if kind == "append_entries":
            if message.get("term", -1) >= self.raftCurrentTerm:
                self._SyncObj__raftElectionDeadline = monotonic_time() + self._SyncObj__generateRaftTimeout()
            if not self._disk_noted:
                self._disk_noted = True
                log.warning("disk under its reserve: this node takes nothing from the leader until space is "
                            "freed (it falls behind, and catches up after)")
            return None
        if kind == "apply_command" and self._isLeader():
            if "request_id" in message:
                self._SyncObj__transport.send(node, {"type": "apply_command_response",
                                                     "request_id": message["request_id"], "error": DISK_FULL})
            return None
        return message

    # The snapshotter's view of the store (tick thread only).
    @property
    def store(self) -> Store:
        return self._store

    @property
    def applied(self) -> int:
        return self._applied

    def reopened(self, store: Store, applied: int):
        self._store = store
        self._applied = applied
        self._feed.restart(applied)
        self.lmdb_id = _file_id(self._config.lmdb_path)

    # pysyncobj commits a single node's entry only on the tick after it was
    # added, and that tick waits for the poll period; nudge it instead.
    def _kick(self):
        if not self.otherNodes and self.raftCommitIndex < self._SyncObj__raftLog[-1][1]:
            self._SyncObj__pipeNotifier.notify()

    def _socket(self, name: str) -> zmq.Socket:
        sockets = getattr(self._local, "sockets", None)
        if sockets is None:
            sockets = self._local.sockets = {}
        s = sockets.get(name)
        if s is None:
            hwm = MIRROR_FEED_HWM if name in ("mirror-feed", "usage-feed") else 100_000
            s = sockets[name] = socket(self._ctx, zmq.PUSH, connect=self._config.endpoint(name), hwm=hwm)
        return s

    def _feed_mirror(self, index: int, jobs: list):
        """Tell the mirror which jobs this entry changed, maybe none (coalesced: core.FeedBatch)."""
        frame = self._feed.add(index, jobs, monotonic_time())
        if frame is not None:
            self._send_feed(frame)

    def _feed_due(self):
        if self._config.mirror or self._config.usage:
            frame = self._feed.due(monotonic_time())
            if frame is not None:
                self._send_feed(frame)

    def _send_feed(self, frame: dict):
        """Never blocks: a mirror that is away or full loses the frame, and repairs the gap from
        LMDB by the `prev` chain. The usage actor gets the same bytes (encoded once); it reads its
        records from LMDB by sequence number, so a lost frame only delays it."""
        data = codec.encode(frame)
        for name, on in (("mirror-feed", self._config.mirror), ("usage-feed", self._config.usage)):
            if not on:
                continue
            try:
                self._socket(name).send(data, zmq.NOBLOCK)
            except zmq.Again:
                self._feed_dropped += 1
                if self._feed_dropped % 1000 == 1:
                    which = name.split("-")[0]
                    log.warning("%s change feed: %d frames dropped (%s away or behind)", which, self._feed_dropped,
                                which)

    def _send(self, frames):
        for dest, message in frames:
            try:
                self._socket(dest).send(codec.encode(message), zmq.NOBLOCK)
            except zmq.Again:
                log.warning("could not hand an applied result to %s (away or full)", dest)

    @replicated
    def apply_entry(self, data: bytes):
        index = self.raftLastApplied + 1
        if index <= self._applied:
            return None  # replayed from the journal; LMDB already holds it
        try:
            entry = core.decode_entry(data)
        except Exception:
            log.exception("entry %d is not a jobbie batch; skipped", index)
            entry = {"v": 1, "ops": []}
        started = time.perf_counter()
        try:
            with self._store.begin(write=True) as txn:
                results, changes = apply_batch(self._store, txn, index, entry["ops"])
        except lmdb.Error:
            log.critical("storage fault while applying entry %d; exiting for a clean restart", index,
                         exc_info=True)
            os._exit(EXIT_STORAGE_FAULT)
        self._applied = index
        self.apply_ms.record((time.perf_counter() - started) * 1000)
        if self._config.durable:
            self._flush_journal()
        self._send(core.route(entry, index, results, changes))
        if self._config.mirror or self._config.usage:
            # After the results, off their path: a search after the answer waits for this
            # index at the mirror (the gateway's `min_index`), not for the order of frames.
            # Entries that changed no job (a fetch of an empty queue) are fed too, so the mirror
            # knows it is up to date without waiting for raft's status.
            self._feed_mirror(index, changes.jobs)
        return None

    def _flush_journal(self):
        """--durable: msync the journal (every entry up to this one) before any result is sent."""
        journal = self._SyncObj__raftLog
        flush = getattr(journal, "flush", None)
        if flush is None:
            return
        flush()
        # Where the journal was last synced, for operators and the power-loss
        # tests (they cut the journal back to this offset). Not itself synced.
        offset = getattr(journal, "_FileJournal__currentOffset", 0)
        if self._synced_fd is None:
            self._synced_fd = os.open(os.path.join(self._config.raft_dir, "journal.synced"),
                                      os.O_WRONLY | os.O_CREAT, 0o644)
        line = f"{self._applied} {offset}\n".encode().ljust(40)
        os.pwrite(self._synced_fd, line, 0)

    def status(self) -> dict:
        leader = self._getLeader()
        peers = []
        if self.otherNodes:
            raw = self.getStatus()
            # The leader's last answer from each peer (pysyncobj keeps it on the leader only).
            responses = dict(getattr(self, "_SyncObj__lastResponseTime", {}) or {})
            now = monotonic_time()
            for node in sorted(self.otherNodes, key=lambda n: n.id):
                seen = responses.get(node)
                peers.append({"address": node.id, "connected": self.isNodeConnected(node),
                              "match_index": raw.get("match_idx_server_" + node.id),
                              "next_index": raw.get("next_node_idx_server_" + node.id),
                              "last_contact_ms": int((now - seen) * 1000) if seen and self._isLeader() else None})
        return {
            "node_id": self._config.node_id,
            "role": "leader" if self._isLeader() else ("follower" if leader is not None else "candidate"),
            "leader": leader.id if leader is not None else None,
            "term": self.raftCurrentTerm,
            "commit_index": self.raftCommitIndex,
            "applied_index": self.raftLastApplied,
            "durable": self._config.durable,
            "raft_bind": self._config.raft_bind,
            "peers": peers,
            "pid": os.getpid(),
            "apply_ms": self.apply_ms.summary(),
            "snapshot": self.snapshotter.last,
            "journal_entries": self._getRaftLogSize(),
            "lmdb_id": self.lmdb_id,
            # Read after applied_index: every frame of an entry up to that index is at most this.
            "changes_index": self._feed.last,
        }


class RaftActor(PumpActor):
    inputs = ("in",)
    tick_s = 0.2

    def __init__(self, ctx, config, raft: JobbieRaft):
        super().__init__(ctx)
        self.config = config
        self.raft = raft
        self.disk = DiskWatch(config.data_dir, config.disk_free_min_mb * 1024 * 1024)

    def open_sockets(self, ctx):
        cfg = self.config
        sockets = {
            "in": socket(ctx, zmq.PULL, bind=cfg.endpoint("raft")),
            "status": socket(ctx, zmq.PUB, bind=cfg.endpoint("raft-status"), hwm=100),
            "admission": socket(ctx, zmq.PUSH, connect=cfg.endpoint("admission")),
        }
        # Tell admission a (new) raft process is here, so it frees the entries the
        # previous one never answered instead of waiting for their time-out.
        sockets["admission"].send(codec.encode({"k": "raft_hello"}))
        return sockets

    def handle(self, inbox: Inbox) -> list:
        for _, frames in inbox.messages:
            self.propose(frames)
        if inbox.tick:
            disk = self.disk.check()
            if not disk["low"]:
                self.raft._disk_noted = False
            self.raft.disk_low = disk["low"]
            return [("status", [codec.encode({"k": "raft_status", **self.raft.status(), "disk": disk})])]
        return []

    def control(self, msg: dict):
        raft = self.raft
        for tag, op, args in msg["items"]:
            def on_done(result, error, tag=tag, op=op):
                if error == FAIL_REASON.SUCCESS:
                    answer = {"ok": {}}
                elif error == FAIL_REASON.REQUEST_DENIED:
                    answer = {"err": {"code": "FAILED_PRECONDITION", "reason": "membership_change_refused",
                                      "message": f"{op} refused: another membership change is still in progress, "
                                                 "the node is already (or not) a member, or the leader is new; "
                                                 "wait and retry"}}
                else:
                    name = FAIL_NAMES.get(error, str(error))
                    answer = {"err": {"code": "UNAVAILABLE", "reason": name,
                                      "message": f"{op} not confirmed ({name}); check `jobbie cluster status` "
                                                 "before retrying"}}
                raft._send([(core.origin_socket(tag[0]), {"k": "applied", "index": None,
                                                          "items": [[tag, answer]], "woken": {}})])
            if op == "cluster_add":
                problem = peer_problem(args["address"])
                if problem:
                    raft._send([(core.origin_socket(tag[0]), {"k": "applied", "index": None, "woken": {}, "items": [[tag, {
                        "err": {"code": "FAILED_PRECONDITION", "reason": "peer_unreachable",
                                "message": f"cluster_add refused: nothing answers on {args['address']} ({problem}); "
                                           "start the new node first (with --peers and --rejoin), then add it. "
                                           "A voter that never answers would take the majority away"}}]]})])
                    continue
                raft.addNodeToCluster(args["address"], callback=on_done)
            elif op == "cluster_remove":
                if args["address"] == self.config.raft_bind:
                    on_done(None, FAIL_REASON.REQUEST_DENIED)
                else:
                    raft.removeNodeFromCluster(args["address"], callback=on_done)

    def propose(self, frames):
        if frames[0] == b"control":
            self.control(codec.decode_trusted(frames[1]))
            return
        data, tags_raw = frames[0], frames[1] if len(frames) > 1 else None
        raft = self.raft

        def on_done(result, error):
            if error == FAIL_REASON.SUCCESS:
                return
            tags, entry_id = codec.decode_trusted(tags_raw) if tags_raw else ([], None)
            raft._send(core.failed(tags, entry_id, FAIL_NAMES.get(error, str(error))))

        raft.apply_entry(data, callback=on_done)


#: How long cluster_add waits for the new peer's raft port to accept a connection.
PEER_CHECK_TIMEOUT_S = 1.0


def peer_problem(address: str) -> str | None:
    """Why the raft port at `address` cannot be reached (None: it accepts connections).

    A voter is counted in the majority from the moment it is added: adding one that never
    answers takes the majority away from a small cluster (a single node then has no leader
    and cannot even undo the change), so cluster_add checks first.
    """
    host, _, port = address.rpartition(":")
    try:
        with pysocket.create_connection((host, int(port)), timeout=PEER_CHECK_TIMEOUT_S):
            return None
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def _file_id(lmdb_path: str) -> str:
    try:
        st = os.stat(os.path.join(lmdb_path, "data.mdb"))
        return f"{st.st_dev}:{st.st_ino}"
    except OSError:
        return ""


def run(config) -> int:
    try:
        prepared = startup.prepare(config.raft_dir, config.lmdb_path, config.durable)
    except startup.CannotStart as exc:
        log.critical("cannot start: %s", exc)
        return EXIT_CANNOT_START
    ctx = zmq.Context()
    store = Store(config.lmdb_path)
    raft = JobbieRaft(config, store, ctx)
    raft.waitBinded()
    log.info("raft %s at %s, peers %s, applied index %d, journal %d..%d, snapshot %s, durable %s",
             config.node_id, config.raft_bind, config.peers or "none", raft._applied,
             prepared.journal.first_index, prepared.journal.last_index, prepared.snapshot_index or "none",
             config.durable)
    code = 1
    try:
        code = serve_process(RaftActor, ctx, config, raft)
        return code
    finally:
        raft.destroy_synchronous()
        raft.store.close()
        if code == 0:
            startup.mark_clean(config.raft_dir)
