"""The lifecycle actor process: a thin shell around LifecycleCore.

Sockets: `in` PULL (results of its tick ops), `status` SUB (raft reports,
for leadership), `admission` PUSH. LMDB is read-only here.
"""
from __future__ import annotations

import logging
import time

import lmdb
import zmq

from jobbie.storage import reads
from jobbie.storage.env import Store, store_ready
from jobbie.storage.machine import DEDUPE_TTL_MS
from jobbie.transport import codec
from jobbie.transport.pump import Inbox, PumpActor, serve_process, socket

from .core import LC, LifecycleCore

log = logging.getLogger("jobbie.lifecycle")


class LifecycleActor(PumpActor):
    inputs = ("in", "status")

    def __init__(self, ctx, config):
        super().__init__(ctx)
        self.config = config
        self.tick_s = config.lifecycle_interval_ms / 1000.0
        self.core = LifecycleCore(time.time_ns() & 0x7FFFFFFFFFFF,
                                  completed_retention_ms=config.completed_retention_ms,
                                  worker_retention_ms=config.worker_retention_ms)
        self.path = config.lmdb_path
        self.store = None
        self.lmdb_id = None

    def open_sockets(self, ctx):
        cfg = self.config
        return {
            "in": socket(ctx, zmq.PULL, bind=cfg.endpoint("lifecycle")),
            "status": socket(ctx, zmq.SUB, subscribe=True, connect=cfg.endpoint("raft-status")),
            "admission": socket(ctx, zmq.PUSH, connect=cfg.endpoint("admission")),
        }

    def earliest_deadline(self):
        try:
            if self.store is None:
                if not store_ready(self.path):
                    return None
                self.store = Store(self.path, readonly=True)
            with self.store.begin() as txn:
                return reads.next_deadline(txn, self.store.dbs, DEDUPE_TTL_MS, self.core.completed_retention_ms,
                                           self.core.worker_retention_ms)
        except lmdb.Error as exc:
            # Not created yet, or replaced under us: open it afresh next time.
            log.warning("cannot read the store yet: %s", exc)
            if self.store is not None:
                self.store.close()
            self.store = None
            return None

    def handle(self, inbox: Inbox) -> list:
        core, now = self.core, inbox.now
        for name, frames in inbox.messages:
            msg = codec.decode_trusted(frames[0])
            if name == "status":
                core.on_status(msg, now)
                lmdb_id = msg.get("lmdb_id")
                if lmdb_id and lmdb_id != self.lmdb_id:
                    if self.lmdb_id is not None and self.store is not None:
                        self.store.close()  # a snapshot replaced LMDB: read the new one
                        self.store = None
                    self.lmdb_id = lmdb_id
            else:
                core.on_applied(msg)
        if not core.wants_deadline(now):
            return []
        decided = core.decide(now, self.earliest_deadline())
        if decided is None:
            return []
        tag, op = decided
        return [("admission", [codec.encode({"k": "ops", "items": [[LC, len(op), tag, op]]})])]


def run(config) -> int:
    return serve_process(LifecycleActor, zmq.Context(), config)
