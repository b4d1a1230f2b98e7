"""The mirror actor process: a thin shell around MirrorCore.

Sockets (all owned by the pump thread): `in` PULL (change frames and bulk
results from raft, bulk refusals from admission, search and bulk requests
from the gateway), `status` SUB (raft's reports: applied index, last change
frame, current LMDB file), `gateway` PUSH (answers and `mirror_status` every
0.5 s), `admission` PUSH (bulk ops). LMDB is opened read-only, SQLite is
`DATA_DIR/mirror.sqlite`.

A turn takes everything waiting, then lets the core do one batch of changes
(once they have waited FLUSH_S, or at once when a search is waiting), the
requests, one chunk of a reconcile or rebuild and the next bulk chunk; while
work is left the next turn follows at once instead of at the tick.
Nothing here is on the write path: raft sends without blocking, and a
mirror that is down or slow only makes the mirror lag (then repair).
"""
from __future__ import annotations

import logging
import os
import time

import zmq

from jobbie.transport import codec
from jobbie.transport.pump import Inbox, PumpActor, serve_process, socket

from .core import FLUSH_S, MirrorCore
from .db import MirrorFiles
from .source import JobSource

log = logging.getLogger("jobbie.mirror")

#: How often the mirror reports to the gateway, and looks whether its file is still there.
STATUS_EVERY_S = 0.5
FILE_CHECK_EVERY_S = 1.0
#: Niceness of the mirror process (the hot-path processes run at 0).
NICE = 10


class MirrorActor(PumpActor):
    inputs = ("in", "status")
    tick_s = 0.05

    def __init__(self, ctx, config):
        super().__init__(ctx)
        self.config = config
        self.files = MirrorFiles(config.mirror_path)
        self.source = JobSource(config.lmdb_path)
        self.core = MirrorCore(self.files, self.source, time.time_ns() & 0x7FFFFFFFFFFF, flush_s=FLUSH_S)
        self.next_status = 0.0
        self.next_file_check = 0.0

    def open_sockets(self, ctx):
        cfg = self.config
        self.core.start(time.time())
        return {
            "in": socket(ctx, zmq.PULL, bind=cfg.endpoint("mirror")),
            "status": socket(ctx, zmq.SUB, subscribe=True, connect=cfg.endpoint("raft-status")),
            "gateway": socket(ctx, zmq.PUSH, connect=cfg.endpoint("gateway")),
            "admission": socket(ctx, zmq.PUSH, connect=cfg.endpoint("admission")),
        }

    def handle(self, inbox: Inbox) -> list:
        core, now = self.core, inbox.now
        for name, frames in inbox.messages:
            msg = codec.decode_trusted(frames[0])
            kind = msg.get("k")
            if name == "status":
                if kind == "raft_status":
                    core.on_status(msg, now)
            elif kind == "changes":
                core.on_changes(msg)
            elif kind == "applied":
                core.on_results(msg, now)
            elif kind == "search":
                core.on_request(msg)
        core.step(now)
        mono = time.monotonic()
        if mono >= self.next_file_check:
            self.next_file_check = mono + FILE_CHECK_EVERY_S
            if core.live is not None and self.files.lost(core.live):
                core.on_file_lost(now)
        out = []
        replies, ops = core.take_outputs()
        if replies:
            out.append(("gateway", [codec.encode({"k": "applied", "index": None, "items": replies, "woken": {}})]))
        if ops:
            out.append(("admission", [codec.encode({"k": "ops", "items": ops})]))
        if mono >= self.next_status:
            self.next_status = mono + STATUS_EVERY_S
            out.append(("gateway", [codec.encode({"k": "mirror_status", "pid": os.getpid(), **core.status()})]))
        if core.busy(now):
            self._next_tick = mono  # more to do: the next turn does not wait for the tick
        else:
            flush_at = core.flush_at()
            if flush_at is not None:  # waiting frames: the turn that writes them comes when they are due
                self._next_tick = min(self._next_tick, mono + max(0.0, flush_at - now))
        return out

    def on_stop(self):
        super().on_stop()
        if self.core.repair is not None and self.core.repair.temp is not None:
            self.files.discard_temp(self.core.repair.temp)
        if self.core.live is not None:
            self.core.live.close()
        self.source.close()


def run(config) -> int:
    # The mirror writes in bursts (a flush window's jobs at a time); below the hot path's priority
    # those bursts wait for idle CPU instead of delaying the requests in flight.
    try:
        os.nice(NICE)
    except OSError:
        pass
    return serve_process(MirrorActor, zmq.Context(), config)
