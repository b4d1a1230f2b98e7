"""The usage actor's rules: hourly rollups of the usage records, and summaries over them.

It owns:
- the rollups. A cell is (hour, queue, model, provider, tags) and holds sums of
  input, output, cache-read and cache-write tokens, cost (integer nano-USD, so
  adding and taking away stay exact), attempts, jobs (a job counts in the cell
  of its first usage entry), and attempts per cost source. Day and namespace
  groups are sums of cells, so they need no cells of their own;
- catching up. The state machine writes every usage record with a sequence
  number that grows with each write and indexes it there (`usage_seq`, one
  entry per record, at its last write). The core reads the records after its
  own position, in order, a chunk at a time. A record seen before that was not
  yet final (an attempt still reporting by heartbeat) is taken out of its cell
  and put back with its new figures; a final record is never written again,
  so it is forgotten once counted. Reading by sequence loses nothing, whatever
  happened to the change feed: the feed only says when to look;
- the change feed. Raft's frames `{"k": "changes", "index", "prev", ...}` (the
  mirror's, actors/raft/core.py FeedBatch) chain by `prev`; a frame that does not
  continue the chain counts in `gaps` (a raft or usage restart, a full socket)
  and changes nothing else;
- rebuilds: on start, when LMDB is replaced (a snapshot installed) or when
  asked (rebuild_usage), every cell is dropped and the records are read again
  from the first sequence number. Requests wait until the core is caught up.

Pure: LMDB is behind `source`, and `now` is passed in.
"""
from __future__ import annotations

import logging
from collections import deque

from jobbie.transport.errors import InvalidArgument, JobbieError, Unavailable

log = logging.getLogger("jobbie.usage")

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
INT64_MAX = 2**63 - 1
#: Records read per chunk (one read transaction, one chunk per turn).
CHUNK_RECORDS = 5000
#: How long a request may wait for a catch-up before it is answered UNAVAILABLE.
WAIT_S = 5.0
#: Cell values: token sums, cost in nano-USD, attempts, jobs, attempts per cost source.
FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_nanousd", "attempts",
          "jobs", "unmetered", "price_table", "reported")
_SOURCE_SLOT = {"unmetered": 7, "price_table": 8, "reported": 9}


class SourceUnavailable(Exception):
    """LMDB cannot be read right now (not created yet, or being replaced)."""


def nanousd(cost) -> int:
    return int(round((cost or 0.0) * 1e9))


def cell_of(rec: dict) -> tuple:
    hour = (rec.get("at") or 0) // HOUR_MS * HOUR_MS
    tags = tuple(sorted((rec.get("tags") or {}).items()))
    return hour, rec.get("queue") or "", rec.get("model") or "", rec.get("provider") or "", tags


def contribution(rec: dict) -> tuple:
    out = [rec.get("input_tokens") or 0, rec.get("output_tokens") or 0, rec.get("cache_read_tokens") or 0,
           rec.get("cache_write_tokens") or 0, nanousd(rec.get("cost_usd")), 1, 1 if rec.get("n") == 1 else 0,
           0, 0, 0]
    slot = _SOURCE_SLOT.get(rec.get("cost_source"))
    if slot is not None:
        out[slot] = 1
    return tuple(out)


def dimension(cell: tuple, dim: str):
    hour, queue, model, provider, tags = cell
    if dim == "hour":
        return hour
    if dim == "day":
        return hour // DAY_MS * DAY_MS
    if dim == "queue":
        return queue
    if dim == "namespace":
        return queue.partition(".")[0]
    if dim == "model":
        return model or None
    if dim == "provider":
        return provider or None
    return dict(tags).get(dim[4:])  # tag:KEY


def figures(values) -> dict:
    out = {name: min(v, INT64_MAX) for name, v in zip(FIELDS, values)}
    out["cost_usd"] = out.pop("cost_nanousd") / 1e9
    out["cost_sources"] = {s: out.pop(s) for s in ("price_table", "reported", "unmetered")}
    out["unmetered"] = out["cost_sources"]["unmetered"]
    return out


class UsageCore:
    def __init__(self, source, chunk_records: int = CHUNK_RECORDS, wait_s: float = WAIT_S):
        self.source = source
        self.chunk_records = chunk_records
        self.wait_s = wait_s
        self.cells: dict[tuple, list] = {}
        self.open: dict[bytes, tuple] = {}  # usage key -> (cell, contribution) of records not final yet
        self.seq = 0  # every record version up to this sequence number is in the cells
        self.index = 0  # LMDB applied index as of the last complete catch-up
        self.records = 0
        self.rebuilds = 0
        self.gaps = 0
        self.feed_index = None  # index of the last change frame seen
        self.behind = True  # records may be waiting after `seq`
        self.rebuilding = None  # (reason, started) while a rebuild runs
        self.raft: dict = {}
        self.lmdb_id = None
        self.requests: deque = deque()  # (deadline, msg)
        self.replies: list = []
        self.rebuild_waiters: list = []
        self.source_away = False

    # ----------------------------------------------------------------- inputs
    def on_changes(self, frame: dict):
        index, prev = frame.get("index") or 0, frame.get("prev")
        if self.feed_index is not None and (prev is None or prev > self.feed_index):
            self.gaps += 1
        elif self.feed_index is None and prev is not None and prev > self.index:
            self.gaps += 1  # frames before our first one went missing (or we started after them)
        self.feed_index = max(index, self.feed_index or 0)
        self.behind = True

    def on_status(self, msg: dict, now: float):
        self.raft = msg
        lmdb_id = msg.get("lmdb_id")
        if lmdb_id and lmdb_id != self.lmdb_id:
            if self.lmdb_id is not None:
                log.warning("LMDB was replaced (snapshot installed); rebuilding the usage rollups")
                self.start_rebuild("LMDB replaced", now)
            self.lmdb_id = lmdb_id
        if (msg.get("applied_index") or 0) > self.index:
            self.behind = True

    def on_request(self, msg: dict, now: float):
        if msg.get("op") == "rebuild_usage":
            self.rebuild_waiters.append(msg["tag"])
            if self.rebuilding is None:
                self.start_rebuild("asked for", now)
            return
        self.requests.append((now + self.wait_s, msg))
        self.behind = True

    # --------------------------------------------------------------- rollups
    def start_rebuild(self, reason: str, now: float):
        log.info("usage rebuild started (%s)", reason)
        self.cells, self.open, self.seq, self.records = {}, {}, 0, 0
        self.rebuilding = (reason, now)
        self.behind = True

    def add(self, cell: tuple, values: tuple, sign: int):
        row = self.cells.get(cell)
        if row is None:
            row = self.cells[cell] = [0] * len(FIELDS)
        for i, v in enumerate(values):
            row[i] += sign * v
        if row[5] == 0:
            del self.cells[cell]

    def apply(self, key: bytes, rec: dict):
        """One record version, in sequence order."""
        old = self.open.pop(key, None)
        if old is not None:
            self.add(old[0], old[1], -1)
        else:
            self.records += 1
        cell, values = cell_of(rec), contribution(rec)
        self.add(cell, values, +1)
        if not rec.get("final"):
            self.open[key] = (cell, values)

    def catch_up_step(self, now: float) -> bool:
        """Read one chunk of records after `seq`; True once caught up with LMDB."""
        try:
            rows, applied, done = self.source.read_after(self.seq, self.chunk_records)
        except SourceUnavailable:
            self.source_away = True  # tried again at the next tick, not at once
            return False
        for seq, key, rec in rows:
            self.apply(key, rec)
            self.seq = seq
        if not done:
            return False
        self.index = max(self.index, applied)
        self.behind = False
        if self.rebuilding is not None:
            reason, started = self.rebuilding
            self.rebuilding = None
            self.rebuilds += 1
            log.info("usage rebuilt (%s): %d records, applied index %d", reason, self.records, self.index)
            for tag in self.rebuild_waiters:
                self.replies.append([tag, {"ok": {"records": self.records, "applied_index": self.index,
                                                  "duration_ms": int(round((now - started) * 1000))}}])
            self.rebuild_waiters = []
        return True

    # ------------------------------------------------------------------ turn
    def step(self, now: float):
        self.source_away = False
        caught_up = not self.behind
        if self.behind:
            caught_up = self.catch_up_step(now)
        waiting, self.requests = self.requests, deque()
        for deadline, msg in waiting:
            if caught_up:
                self.serve(msg)
            elif now >= deadline:
                self.replies.append([msg["tag"], {"err": Unavailable(
                    "the usage actor is still reading usage records from LMDB; retry shortly",
                    reason="usage_catching_up", retry_after_ms=1000).to_wire()}])
            else:
                self.requests.append((deadline, msg))

    def busy(self) -> bool:
        return self.behind and not self.source_away

    def take_replies(self) -> list:
        out, self.replies = self.replies, []
        return out

    # --------------------------------------------------------------- answers
    def serve(self, msg: dict):
        tag = msg["tag"]
        try:
            if msg.get("op") != "usage_summary":
                raise InvalidArgument(f"the usage actor does not serve {msg.get('op')}", field="op",
                                      reason="unknown_op")
            self.replies.append([tag, {"ok": self.summary(msg.get("args") or {}, msg.get("now") or 0)}])
        except JobbieError as exc:
            self.replies.append([tag, {"err": exc.to_wire()}])

    def summary(self, args: dict, now_ms: int) -> dict:
        until = args.get("until")
        until = now_ms if until is None else until
        since = args.get("since")
        since = until - DAY_MS if since is None else since
        since = max(0, since) // HOUR_MS * HOUR_MS
        until = -(-until // HOUR_MS) * HOUR_MS
        if until <= since:
            until = since + HOUR_MS
        group_by = list(args.get("group_by") or ())
        want_tags = tuple((args.get("tags") or {}).items())
        queue, namespace = args.get("queue"), args.get("namespace")
        model, provider = args.get("model"), args.get("provider")
        groups: dict[tuple, list] = {}
        totals = [0] * len(FIELDS)
        for cell, values in self.cells.items():
            hour, c_queue, c_model, c_provider, c_tags = cell
            if not since <= hour < until:
                continue
            if queue is not None and c_queue != queue:
                continue
            if namespace is not None and c_queue.partition(".")[0] != namespace:
                continue
            if model is not None and c_model != model:
                continue
            if provider is not None and c_provider != provider:
                continue
            if want_tags:
                have = dict(c_tags)
                if any(have.get(k) != v for k, v in want_tags):
                    continue
            for i, v in enumerate(values):
                totals[i] += v
            if group_by:
                key = tuple(dimension(cell, d) for d in group_by)
                row = groups.get(key)
                if row is None:
                    row = groups[key] = [0] * len(FIELDS)
                for i, v in enumerate(values):
                    row[i] += v
        ordered = sorted(groups.items(), key=lambda kv: (-kv[1][4], [("" if k is None else str(k)) for k in kv[0]]))
        limit = args.get("limit", 1000)
        out = [{"key": dict(zip(group_by, key)), **figures(values)} for key, values in ordered[:limit]]
        return {"since": since, "until": until, "group_by": group_by, "groups": out, "totals": figures(totals),
                "truncated": len(ordered) > limit, "applied_index": self.index, "lag": self.lag()}

    def lag(self):
        applied = self.raft.get("applied_index")
        return max(0, applied - self.index) if applied is not None else None

    def status(self) -> dict:
        return {"applied_index": self.index, "lag": self.lag(), "rebuilds": self.rebuilds, "gaps": self.gaps,
                "records": self.records, "open_records": len(self.open), "cells": len(self.cells), "seq": self.seq,
                "rebuilding": self.rebuilding is not None, "waiting": len(self.requests)}
