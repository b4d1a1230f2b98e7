"""The usage actor process: a thin shell around UsageCore.

Sockets (all owned by the pump thread): `in` PULL (usage_summary and
rebuild_usage requests from the gateway), `feed` PULL (raft's change frames,
the same bytes the mirror gets; not polled, taken in every tick), `status` SUB
(raft's reports: applied index, current LMDB file), `gateway` PUSH (answers,
and `usage_status` every 0.5 s). LMDB is opened read-only, one short read
transaction per chunk of records.

Nothing here is on the write path: raft sends its frames without blocking,
and a usage actor that is down or slow only lags; after a restart it rebuilds
its rollups from LMDB.
"""
from __future__ import annotations

import logging
import os
import time

import lmdb
import zmq

from jobbie.storage import keys as K
from jobbie.storage.env import Store, store_ready
from jobbie.storage.machine import applied_index
from jobbie.transport import codec
from jobbie.transport.pump import Inbox, PumpActor, receive_waiting, serve_process, socket

from .core import SourceUnavailable, UsageCore

log = logging.getLogger("jobbie.usage")

STATUS_EVERY_S = 0.5
NICE = 10
FEED_DRAIN_MAX = 20_000


class UsageSource:
    """The usage records in LMDB, read in sequence order (read-only; reopened after an error or a new file)."""

    def __init__(self, path: str):
        self.path = path
        self.store: Store | None = None

    def reopen(self):
        if self.store is not None:
            self.store.close()
            self.store = None

    def read_after(self, seq: int, limit: int):
        """([(seq, key, record)] after `seq`, at most `limit`; LMDB's applied index; True when none is left)."""
        if self.store is None:
            if not store_ready(self.path):
                raise SourceUnavailable("LMDB is not created yet")
            try:
                self.store = Store(self.path, readonly=True)
            except lmdb.Error as exc:
                raise SourceUnavailable(str(exc))
        try:
            with self.store.begin() as txn:
                dbs = self.store.dbs
                cur = txn.cursor(db=dbs["usage_seq"])
                rows, done = [], True
                if cur.set_range(K.u64(seq + 1)):
                    for key, value in cur:
                        if len(rows) >= limit:
                            done = False
                            break
                        raw = txn.get(value, db=dbs["usage"])
                        if raw is not None:
                            rows.append((K.read_u64(key), bytes(value), codec.decode_trusted(raw)))
                return rows, applied_index(txn, dbs), done
        except lmdb.Error as exc:
            log.warning("cannot read LMDB (%s); reopening it", exc)
            self.reopen()
            raise SourceUnavailable(str(exc))

    def close(self):
        self.reopen()


class UsageActor(PumpActor):
    inputs = ("in", "status")
    tick_s = 0.1

    def __init__(self, ctx, config):
        super().__init__(ctx)
        self.config = config
        self.source = UsageSource(config.lmdb_path)
        self.core = UsageCore(self.source)
        self.next_status = 0.0

    def open_sockets(self, ctx):
        cfg = self.config
        self.core.start_rebuild("start", time.time())
        return {
            "in": socket(ctx, zmq.PULL, bind=cfg.endpoint("usage")),
            # Not polled: taken in at each tick (frames wait in the socket meanwhile).
            "feed": socket(ctx, zmq.PULL, bind=cfg.endpoint("usage-feed")),
            "status": socket(ctx, zmq.SUB, subscribe=True, connect=cfg.endpoint("raft-status")),
            "gateway": socket(ctx, zmq.PUSH, connect=cfg.endpoint("gateway")),
        }

    def handle(self, inbox: Inbox) -> list:
        core, now = self.core, inbox.now
        for name, frames in inbox.messages:
            msg = codec.decode_trusted(frames[0])
            if name == "status":
                if msg.get("k") == "raft_status":
                    old = core.lmdb_id
                    core.on_status(msg, now)
                    if old is not None and core.lmdb_id != old:
                        self.source.reopen()
            elif msg.get("k") == "search":
                core.on_request(msg, now)
        if inbox.tick or core.requests:
            for frames in receive_waiting(self.sockets["feed"], FEED_DRAIN_MAX):
                core.on_changes(codec.decode_trusted(frames[0]))
        core.step(now)
        out = []
        replies = core.take_replies()
        if replies:
            out.append(("gateway", [codec.encode({"k": "applied", "index": None, "items": replies, "woken": {}})]))
        mono = time.monotonic()
        if mono >= self.next_status:
            self.next_status = mono + STATUS_EVERY_S
            out.append(("gateway", [codec.encode({"k": "usage_status", "pid": os.getpid(), **core.status()})]))
        if core.busy():
            self._next_tick = mono  # more records to read: the next turn does not wait for the tick
        return out

    def on_stop(self):
        super().on_stop()
        self.source.close()


def run(config) -> int:
    # Derived data: below the hot path's priority.
    try:
        os.nice(NICE)
    except OSError:
        pass
    return serve_process(UsageActor, zmq.Context(), config)
