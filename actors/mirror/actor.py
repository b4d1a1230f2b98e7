"""The mirror actor process: a thin shell around MirrorCore.

Sockets (all owned by the pump thread): `in` PULL (bulk results from raft,
bulk refusals from admission, search and bulk requests from the gateway),
`feed` PULL (raft's change frames; not polled, taken in every FLUSH_S and
before each search), `status` SUB (raft's reports: applied index, last change
frame, current LMDB file), `gateway` PUSH (answers and `mirror_status` every
0.5 s), `admission` PUSH (bulk ops). LMDB is opened read-only, SQLite is
`DATA_DIR/mirror.sqlite`.

A turn takes everything waiting (and the change feed, when it is due or a
search waits), then lets the core do one batch of changes, the requests, one
chunk of a reconcile or rebuild and the next bulk chunk; while work is left
the next turn follows at once instead of at the tick.
Nothing here is on the write path: raft sends without blocking, and a
mirror that is down or slow only makes the mirror lag (then repair).
"""
from __future__ import annotations

import logging
import os
import time

import zmq

from jobbie.transport import codec
from jobbie.transport.pump import Inbox, PumpActor, receive_waiting, serve_process, socket

from .core import MirrorCore
from .db import MirrorFiles
from .source import JobSource

log = logging.getLogger("jobbie.mirror")

#: How often the mirror reports to the gateway, and looks whether its file is still there.
STATUS_EVERY_S = 0.5
FILE_CHECK_EVERY_S = 1.0
#: Niceness of the mirror process (the hot-path processes run at 0).
NICE = 10
#: How often the change feed is taken in. Frames wait in their socket meanwhile, so the
#: process wakes ~10 times a second under load, not once per raft entry, and a job changed
#: several times within the window (enqueue, fetch, ack) is read and written once, in one
#: SQLite transaction with everything else of the window. A search takes the feed in first.
FLUSH_S = 0.1
#: How often the feed is looked at while a search waits for changes (core.CATCH_UP_S).
CATCH_UP_POLL_S = 0.003
#: Change frames taken from the feed socket in one turn at most.
FEED_DRAIN_MAX = 20_000


class MirrorActor(PumpActor):
    inputs = ("in", "status")
    tick_s = 0.05

    def __init__(self, ctx, config):
        super().__init__(ctx)
        self.config = config
        self.files = MirrorFiles(config.mirror_path)
        self.source = JobSource(config.lmdb_path)
        self.core = MirrorCore(self.files, self.source, time.time_ns() & 0x7FFFFFFFFFFF)
        self.next_status = 0.0
        self.next_file_check = 0.0
        self.next_feed = 0.0

    def open_sockets(self, ctx):
        cfg = self.config
        self.core.start(time.time())
        return {
            "in": socket(ctx, zmq.PULL, bind=cfg.endpoint("mirror")),
            # Not polled: taken in every FLUSH_S, or before a search (see drain_feed).
            "feed": socket(ctx, zmq.PULL, bind=cfg.endpoint("mirror-feed")),
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
            elif kind == "applied":
                core.on_results(msg, now)
            elif kind == "search":
                core.on_request(msg)
        mono = time.monotonic()
        if mono >= self.next_feed or core.requests or core.catching_up:
            # A search sees every change that reached the mirror before it.
            self.next_feed = mono + FLUSH_S
            self.drain_feed()
        core.step(now)
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
        if core.busy():
            self._next_tick = mono  # more to do: the next turn does not wait for the tick
        else:
            # While a search waits for changes, look at the feed every few ms.
            self._next_tick = min(self._next_tick, mono + CATCH_UP_POLL_S if core.catching_up else self.next_feed)
        return out

    def drain_feed(self):
        for frames in receive_waiting(self.sockets["feed"], FEED_DRAIN_MAX):
            self.core.on_changes(codec.decode_trusted(frames[0]))

    def on_stop(self):
        super().on_stop()
        if self.core.repair is not None and self.core.repair.temp is not None:
            self.files.discard_temp(self.core.repair.temp)
        if self.core.live is not None:
            self.core.live.close()
        self.source.close()


def run(config) -> int:
    # Derived data: below the hot path's priority, so under contention the requests in flight
    # get the CPU first.
    try:
        os.nice(NICE)
    except OSError:
        pass
    return serve_process(MirrorActor, zmq.Context(), config)
