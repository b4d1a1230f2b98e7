"""The mirror's rules: keep SQLite in step with LMDB, answer searches, drive bulk runs.

It owns:
- the change feed. After each apply, raft sends (coalesced, actors/raft/core.py
  FeedBatch) `{"k": "changes", "index": i, "prev": p, "jobs": [ids]}`, where `prev` is
  the index of the previous changes frame that raft process sent (for its
  first frame, the LMDB applied index it started from). The mirror re-reads
  those ids from LMDB (never trusting a copy in the frame) and upserts or
  deletes their rows, a drained batch of frames per SQLite transaction;
- `mirrored_index` M: every change up to raft index M is in SQLite. A frame
  continues the chain when `prev <= M` (nothing between `prev` and its own
  index changed a job); otherwise frames were lost (mirror or raft restart,
  a full socket) and a reconcile repairs the gap: scan LMDB's jobs in id
  order, a chunk per turn, upsert rows whose record differs (CRC), delete
  rows LMDB no longer has. Each such gap counts in `dropped_updates`;
- raft's status report: with no frame pending, `changes_index <= M` means
  the entries up to raft's applied index changed no job, so M moves up to it
  (the lag falls to 0 when idle); a report that stays ahead of M for a while
  means the last frames were lost, and a reconcile follows. A new LMDB file
  (a snapshot was installed) is reconciled too;
- rebuilds: a fresh file from LMDB, written on the side and swapped in
  (rebuild_mirror, or a file found damaged or deleted). Frames that arrive
  meanwhile still go to the live file and their ids are noted; after the
  swap those ids are read again, so nothing is lost in between;
- search_jobs, bulk and bulk_status requests from the gateway.

A reconcile or rebuild never blocks the pump for long: one chunk of jobs per
turn, with searches served between chunks. While one runs, M stays where it
was and the chain is tracked against its target instead.

Pure: the SQLite files, LMDB and the clock are outside (`files`, `source`,
`now`).
"""
from __future__ import annotations

import logging
from collections import deque

from jobbie.transport.errors import InvalidArgument, JobbieError, NotFound, Unavailable

from .bulk import HELD_ONLY, REQUEUE_STATES, BulkRuns
from .db import Broken
from .rows import rev
from .source import SourceUnavailable

log = logging.getLogger("jobbie.mirror")

#: Job ids re-read per SQLite transaction when frames pile up.
BATCH_IDS_MAX = 5000
#: Jobs per reconcile or rebuild chunk (one chunk per turn).
CHUNK_JOBS = 2000
#: How long raft's report may stay ahead of M, with no frame arriving, before the mirror reconciles.
STALL_S = 2.0
#: How long a search or bulk request may wait for the changes up to its `min_index` (the gateway's
#: newest result) before it is answered from what the mirror holds. Frames come within ~10 ms of
#: an apply (also for entries that changed no job); waiting longer means they were lost or the
#: mirror is behind.
CATCH_UP_S = 0.25
#: Ops that wait for `min_index` (rebuild_mirror and bulk_status read no rows).
WAIT_FOR_INDEX = ("search_jobs", "bulk")


class Repair:
    """A reconcile or a rebuild in progress."""

    def __init__(self, kind: str, reason: str, chain: int, now: float):
        self.kind = kind
        self.reason = reason
        self.chain = chain  # frames up to here are covered once the repair ends
        self.after = None  # scan position (last job id done)
        self.again = False  # a gap showed up meanwhile: reconcile once more afterwards
        self.scanned = 0
        self.started = now
        self.temp = None
        self.touched: set = set()
        self.waiters: list = []


class MirrorCore:
    def __init__(self, files, source, incarnation: int, bulk: BulkRuns | None = None,
                 chunk_jobs: int = CHUNK_JOBS, batch_ids_max: int = BATCH_IDS_MAX, stall_s: float = STALL_S):
        self.files = files
        self.source = source
        self.bulk = bulk or BulkRuns(incarnation)
        self.chunk_jobs = chunk_jobs
        self.batch_ids_max = batch_ids_max
        self.stall_s = stall_s
        self.live = None
        self.index = 0
        self.repair: Repair | None = None
        self.pending_repair: str | None = None  # a reconcile to start once LMDB is readable
        self.dropped = 0
        self.rebuilds = 0
        self.reconciles = 0
        self.lmdb_id = None
        self.raft: dict = {}
        self.stall = None  # (since, M then) while raft's report is ahead of M
        self.backlog: deque = deque()
        self.requests: deque = deque()
        self.catching_up: deque = deque()  # (deadline, request) waiting for M to reach min_index
        self.results_index = 0  # newest raft index of a bulk result seen here: searches wait for it too
        self.replies: list = []
        self.ops_out: list = []
        self.source_away = False

    # ------------------------------------------------------------------ start
    def start(self, now: float):
        """Open the live file; plan a rebuild when it is missing (with jobs to mirror) or damaged."""
        db, state = self.files.open_live()
        if db is not None:
            self.live = db
            self.index = int(db.meta("mirrored_index", 0) or 0)
            self.dropped = int(db.meta("dropped_updates", 0) or 0)
            self.rebuilds = int(db.meta("rebuilds", 0) or 0)
            self.lmdb_id = db.meta("lmdb_id")
            log.info("mirror file open at mirrored index %d", self.index)
            return
        try:
            applied = self.source.applied_index() if self.source.ready() else 0
        except SourceUnavailable:
            applied = 0
        if state == "missing" and applied == 0:
            self.live = self.files.create_live()  # a new node: nothing to copy yet
            return
        log.warning("mirror file %s; rebuilding it from LMDB (applied index %d)", state, applied)
        self.start_repair("rebuild", f"file {state}", now)

    # ------------------------------------------------------------------ inputs
    def on_changes(self, msg: dict):
        self.backlog.append(msg)

    def on_request(self, msg: dict):
        self.requests.append(msg)

    def on_results(self, msg: dict, now: float):
        index = msg.get("index")
        if index is not None and index > self.results_index:
            self.results_index = index
        for tag, result in msg.get("items") or ():
            self.bulk.on_result(tag, result, now)

    def on_status(self, msg: dict, now: float):
        self.raft = msg
        lmdb_id = msg.get("lmdb_id")
        if lmdb_id and lmdb_id != self.lmdb_id:
            if self.lmdb_id is not None:
                log.warning("LMDB was replaced (snapshot installed); reconciling the mirror")
                self.gap("LMDB replaced", now, count=False)
            self.lmdb_id = lmdb_id
        self.source.watch(lmdb_id)
        if self.repair is not None or self.backlog:
            self.stall = None
            return
        applied, changed = msg.get("applied_index") or 0, msg.get("changes_index")
        if changed is not None and changed <= self.index:
            # Nothing after M changed a job (as of raft's report): M catches up with raft.
            if applied > self.index:
                self.index = applied
            self.stall = None
        elif applied > self.index or (changed is not None and changed > self.index):
            if self.stall is None or self.stall[1] != self.index:
                self.stall = (now, self.index)
            elif now - self.stall[0] >= self.stall_s:
                self.stall = None
                self.gap(f"raft reports changes up to {changed} but none arrived after {self.index}", now)

    def on_file_lost(self, now: float):
        """The live file was deleted or replaced behind the mirror's back: rebuild (it still answers meanwhile)."""
        if self.repair is None or self.repair.kind != "rebuild":
            log.warning("mirror file deleted or replaced; rebuilding it from LMDB")
            self.start_repair("rebuild", "file deleted", now)

    # -------------------------------------------------------------------- feed
    def gap(self, reason: str, now: float, count: bool = True):
        if count:
            self.dropped += 1
        if self.repair is not None:
            self.repair.again = True
        else:
            self.start_repair("reconcile", reason, now)

    def apply_backlog(self, now: float):
        """Re-read the jobs of the waiting change frames (up to BATCH_IDS_MAX ids) and write them in one transaction."""
        ids: dict = {}
        newest = self.index
        while self.backlog and (not ids or len(ids) < self.batch_ids_max):
            frame = self.backlog.popleft()
            index, prev = frame.get("index") or 0, frame.get("prev")
            base = self.repair.chain if self.repair is not None else newest
            if prev is None or prev > base:
                log.info("change feed gap: frame %d follows %s, mirror at %d", index, prev, base)
                self.gap(f"frame {index} follows {prev}, mirror at {base}", now)
            if self.repair is not None:
                self.repair.chain = max(self.repair.chain, index)
            elif index > newest:
                newest = index
            ids.update(dict.fromkeys(frame.get("jobs") or ()))
        if not ids:  # entries that changed no job: nothing to write, M moves on (saved with the next write)
            self.index = max(self.index, newest)
            return
        try:
            changes = self.source.read(list(ids))
        except SourceUnavailable:
            self.pending_repair = "LMDB unreadable while applying changes"
            return
        if self.repair is not None and self.repair.kind == "rebuild":
            self.repair.touched.update(ids)
        if self.live is None:
            return
        self.index = max(self.index, newest)  # frames that chained before any gap of this batch
        self.write(changes, now)

    def write(self, changes: list, now: float = 0.0):
        try:
            self.live.write(changes, self.meta())
        except Broken as exc:
            self.on_broken(exc, now)

    def meta(self) -> dict:
        return {"mirrored_index": self.index, "dropped_updates": self.dropped, "rebuilds": self.rebuilds,
                "lmdb_id": self.lmdb_id}

    def on_broken(self, exc, now: float):
        log.error("mirror file is damaged (%s); rebuilding it from LMDB", exc)
        self.files.drop_live(self.live)
        self.live = None
        if self.repair is None or self.repair.kind != "rebuild":
            if self.repair is not None:
                self.files.discard_temp(self.repair.temp)
            self.repair = None
            self.start_repair("rebuild", f"file damaged: {exc}", now)

    # ----------------------------------------------------------------- repairs
    def start_repair(self, kind: str, reason: str, now: float, waiter=None) -> bool:
        """Begin a reconcile or rebuild (False when LMDB cannot be read yet: tried again next turn)."""
        if self.repair is not None and self.repair.kind == "rebuild":
            if waiter is not None:
                self.repair.waiters.append(waiter)
            return True
        try:
            target = self.source.applied_index() if self.source.ready() else 0
        except SourceUnavailable:
            self.pending_repair = kind if kind == "rebuild" else reason
            return False
        waiters = []
        if self.repair is not None:  # a rebuild replaces a running reconcile
            waiters = self.repair.waiters
        repair = Repair(kind, reason, max(self.index, target,
                                          self.repair.chain if self.repair is not None else 0), now)
        repair.waiters = waiters + ([waiter] if waiter is not None else [])
        if kind == "rebuild":
            try:
                repair.temp = self.files.create_temp()
            except Exception as exc:  # no disk space and the like: try again next turn
                log.error("cannot create the rebuild file: %s", exc)
                self.pending_repair = "rebuild"
                return False
        self.repair = repair
        self.pending_repair = None
        self.stall = None
        log.info("mirror %s started (%s); target index %d", kind, reason, repair.chain)
        return True

    def repair_step(self, now: float):
        """One chunk of the running reconcile or rebuild."""
        r = self.repair
        try:
            if r.kind == "rebuild":
                rows = self.source.scan(r.after, self.chunk_jobs, errors=True)
                try:
                    if rows:
                        r.temp.write(rows)
                    else:
                        r.temp.write([], self.meta())
                        live = self.files.swap(r.temp, self.live)
                except (Broken, OSError) as exc:
                    log.error("cannot write the rebuild file (%s); starting the rebuild again", exc)
                    self.files.discard_temp(r.temp)
                    self.repair = None
                    self.pending_repair = "rebuild"
                    return
                if rows:
                    r.after = rows[-1][0]
                    r.scanned += len(rows)
                else:
                    self.finish_rebuild(live, now)
                return
            if self.live is None:
                return
            rows = self.source.scan(r.after, self.chunk_jobs)
            if rows:
                last = rows[-1][0]
                revs = self.live.revs_between(r.after, last)
                in_lmdb = {job_id for job_id, _ in rows}
                stale = [job_id for job_id, raw in rows if revs.get(job_id) != rev(raw)]
                changes = self.source.read(stale) if stale else []
                changes += [(job_id, None, []) for job_id in revs if job_id not in in_lmdb]
                if changes:
                    self.live.write(changes)
                r.after = last
                r.scanned += len(rows)
                return
            extra = self.live.ids_after(r.after, self.chunk_jobs)
            if extra:
                self.live.write([(job_id, None, []) for job_id in extra])
                return
            self.finish_reconcile()
        except SourceUnavailable:
            self.source_away = True  # LMDB is being replaced: try again at the next tick, not at once
        except Broken as exc:
            self.on_broken(exc, now)

    def finish_reconcile(self):
        r = self.repair
        self.repair = None
        self.reconciles += 1
        self.index = max(self.index, r.chain)
        log.info("mirror reconciled (%s): %d jobs scanned; mirrored index %d", r.reason, r.scanned, self.index)
        if self.live is not None:
            self.write([])
        if r.again:
            self.gap("another gap during the reconcile", r.started, count=False)

    def finish_rebuild(self, live, now: float):
        r = self.repair
        self.live = live
        r.temp = None
        self.repair = None
        self.rebuilds += 1
        self.index = max(self.index, r.chain)
        try:
            # Jobs that changed while the file was being written: read them again, now.
            self.write(self.source.read(sorted(r.touched)) if r.touched else [], now)
        except SourceUnavailable:
            r.again = True
            self.write([], now)
        count = 0
        if self.live is not None:
            try:
                count = self.live.count()
            except Broken as exc:
                self.on_broken(exc, now)
        log.info("mirror rebuilt (%s): %d jobs; mirrored index %d", r.reason, count, self.index)
        for tag in r.waiters:
            self.replies.append([tag, {"ok": {"jobs": count, "applied_index": self.index,
                                              "duration_ms": int(round((now - r.started) * 1000))}}])
        if r.again:
            self.gap("a gap during the rebuild", now, count=False)

    # ---------------------------------------------------------------- requests
    def serve(self, msg: dict, now: float):
        tag, op, args = msg["tag"], msg["op"], msg.get("args") or {}
        try:
            if op == "rebuild_mirror":
                if not self.start_repair("rebuild", "asked for", now, waiter=tag):
                    raise Unavailable("LMDB cannot be read right now; retry", reason="store_unavailable",
                                      retry_after_ms=500)
                return
            if op == "bulk_status":
                run = self.bulk.get(args["bulk_id"])
                if run is None:
                    raise NotFound(f"bulk run {args['bulk_id']} not found (runs are kept until the mirror restarts)",
                                   field="bulk_id")
                self.reply(tag, run.progress(now))
                return
            if self.live is None:
                raise Unavailable("the mirror is being rebuilt from LMDB; retry shortly", reason="mirror_rebuilding",
                                  retry_after_ms=500)
            if op == "search_jobs":
                self.reply(tag, self.live.search(args, self.source.records))
            elif op == "bulk":
                self.start_bulk(tag, args, now)
            else:
                raise InvalidArgument(f"the mirror does not serve {op}", field="op", reason="unknown_op")
        except JobbieError as exc:
            self.replies.append([tag, {"err": exc.to_wire()}])
        except SourceUnavailable:  # a search page's records come from LMDB, which is being replaced
            self.replies.append([tag, {"err": Unavailable("LMDB cannot be read right now; retry",
                                                          reason="store_unavailable", retry_after_ms=500).to_wire()}])
        except Broken as exc:
            self.on_broken(exc, now)
            self.replies.append([tag, {"err": Unavailable("the mirror file was damaged and is being rebuilt; retry "
                                                          "shortly", reason="mirror_rebuilding",
                                                          retry_after_ms=500).to_wire()}])

    def reply(self, tag, ok: dict):
        self.replies.append([tag, {"ok": ok}])

    def start_bulk(self, tag, args: dict, now: float):
        action = args["action"]
        if args.get("job_ids") is not None:
            ids = list(args["job_ids"])
            states = self.live.states(ids) if action == "requeue" else {}
            # A job the mirror does not hold yet (lag) is submitted; the state machine decides.
            keep = [i for i in ids if states.get(i, REQUEUE_STATES[0]) in REQUEUE_STATES] \
                if action == "requeue" else ids
        else:
            found = self.live.resolve(args["filter"])
            wanted = REQUEUE_STATES if action == "requeue" else HELD_ONLY if action in ("approve", "reject") else None
            keep = [i for i, s in found if wanted is None or s in wanted]
            ids = found
        extra = {}
        if action == "move":
            extra["queue"] = args["move_to_queue"]
        elif action == "change_priority":
            extra["priority"] = args["priority"]
        elif action in ("approve", "reject"):
            extra.update({k: args[k] for k in ("note", "actor") if args.get(k) is not None})
        run = self.bulk.start(action, keep, extra, len(ids) - len(keep), now, reply=tag)
        if not self.bulk.is_sync(run):
            self.reply(tag, {"bulk_id": run.id, "status": "running", "total": run.total, "skipped": run.skipped})

    # -------------------------------------------------------------------- turn
    def step(self, now: float):
        """One turn's work: a batch of changes, the waiting requests, a repair chunk, bulk chunks."""
        self.source_away = False
        if self.pending_repair is not None and self.repair is None:
            kind = "rebuild" if self.pending_repair == "rebuild" else "reconcile"
            self.start_repair(kind, self.pending_repair, now)
        if self.backlog:
            self.apply_backlog(now)
        if self.catching_up:
            waiting, self.catching_up = self.catching_up, deque()
            for deadline, msg in waiting:
                if self.caught_up(msg) or now >= deadline:
                    self.serve(msg, now)
                else:
                    self.catching_up.append((deadline, msg))
        while self.requests:
            msg = self.requests.popleft()
            if self.caught_up(msg):
                self.serve(msg, now)
            else:
                self.catching_up.append((now + CATCH_UP_S, msg))
        if self.repair is not None:
            self.repair_step(now)
        self.bulk.check_timeouts(now)
        for run in self.bulk.take_finished():
            if run.reply is not None:
                self.reply(run.reply, run.answer(now))
                run.reply = None
        items = self.bulk.next_chunk(now)
        if items:
            self.ops_out.extend(items)

    def caught_up(self, msg: dict) -> bool:
        """The mirror holds every change up to the request's `min_index` and up to the newest bulk
        result it has seen (or cannot get there by waiting: a repair runs, or there is no file)."""
        wanted = max(msg.get("min_index") or 0, self.results_index)
        return (msg.get("op") not in WAIT_FOR_INDEX or wanted <= self.index
                or self.repair is not None or self.live is None)

    def busy(self) -> bool:
        """More work is waiting that should not wait for the next tick."""
        return bool(self.backlog or self.requests or (self.repair is not None and not self.source_away))

    def take_outputs(self):
        replies, ops = self.replies, self.ops_out
        self.replies, self.ops_out = [], []
        return replies, ops

    def status(self) -> dict:
        applied = self.raft.get("applied_index")
        r = self.repair
        return {
            "applied_index": self.index,
            "lag": max(0, applied - self.index) if applied is not None else None,
            "dropped_updates": self.dropped,
            "rebuilds": self.rebuilds,
            "reconciles": self.reconciles,
            "repair": None if r is None else {"kind": r.kind, "reason": r.reason, "scanned": r.scanned},
            "backlog": len(self.backlog),
            "catching_up": len(self.catching_up),
            "bulk_running": self.bulk.running(),
            "available": self.live is not None,
        }
