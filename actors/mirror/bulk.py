"""Bulk runs: many write ops, fed to admission one chunk at a time.

A run turns each job id into one ordinary write op (`retry_job`,
`delete_job`, `cancel_job`, `move_job`, `set_priority`, `approve_job`,
`reject_job`) and submits them
through admission exactly like the gateway does, under the client key "mr"
and tags `["mr", incarnation, seq]`; raft routes their results back to the
mirror. The rules:

- One chunk (at most `chunk_ops` ops) is in flight for the whole mirror at
  a time, and admission orders clients round-robin, so unary traffic keeps
  flowing beside a run of any size.
- Each op carries a request_id derived from the run and the job's position,
  so a re-sent op (its chunk timed out, or it was refused as overloaded or
  unavailable) is applied at most once.
- A refusal that is worth retrying (RESOURCE_EXHAUSTED, UNAVAILABLE) is
  retried after its `retry_after_ms`, up to `retry_max` times; any other
  refusal is the job's outcome, counted in `errors` (the first
  `errors_kept` are listed with their message).

Pure: `now` is passed in (seconds).
"""
from __future__ import annotations

import heapq
from collections import OrderedDict

from jobbie.transport import codec

MR = "mr"
ACTION_OPS = {"retry": "retry_job", "requeue": "retry_job", "delete": "delete_job", "cancel": "cancel_job",
              "move": "move_job", "change_priority": "set_priority", "approve": "approve_job",
              "reject": "reject_job"}
#: `requeue` takes only finished jobs; other states are skipped.
REQUEUE_STATES = ("dead", "cancelled", "completed")
#: With a filter, `approve` and `reject` take only held jobs.
HELD_ONLY = ("held",)
RETRYABLE = ("RESOURCE_EXHAUSTED", "UNAVAILABLE")


class Run:
    __slots__ = ("id", "action", "op", "extra", "ids", "total", "next", "done", "affected", "skipped", "errors",
                 "error_count", "started", "finished", "reply")

    def __init__(self, run_id, action, ids, extra, skipped, now, reply):
        self.id = run_id
        self.action = action
        self.op = ACTION_OPS[action]
        self.extra = extra
        self.ids = ids  # dropped once the run is done (finished runs are kept for bulk_status)
        self.total = len(ids)
        self.next = 0
        self.done = 0
        self.affected = 0
        self.skipped = skipped
        self.errors: list = []
        self.error_count = 0
        self.started = now
        self.finished = now if not ids else None
        self.reply = reply  # gateway tag waiting for the end (small runs), or None

    @property
    def status(self) -> str:
        return "done" if self.finished is not None else "running"

    def duration_ms(self, now) -> int:
        return int(round(((self.finished if self.finished is not None else now) - self.started) * 1000))

    def progress(self, now) -> dict:
        return {"bulk_id": self.id, "status": self.status, "action": self.action, "total": self.total,
                "done": self.done, "affected": self.affected, "skipped": self.skipped, "errors": list(self.errors),
                "error_count": self.error_count, "duration_ms": self.duration_ms(now)}

    def answer(self, now) -> dict:
        """The `ok` map of a small run, once it is done."""
        return {"affected": self.affected, "errors": list(self.errors), "duration_ms": self.duration_ms(now),
                "bulk_id": self.id, "status": self.status, "total": self.total, "skipped": self.skipped,
                "error_count": self.error_count}


class BulkRuns:
    def __init__(self, incarnation: int, chunk_ops: int = 500, sync_max: int = 1000, errors_kept: int = 100,
                 retry_max: int = 5, chunk_timeout_s: float = 15.0, kept_runs: int = 64):
        self.incarnation = incarnation
        self.chunk_ops = chunk_ops
        self.sync_max = sync_max
        self.errors_kept = errors_kept
        self.retry_max = retry_max
        self.chunk_timeout_s = chunk_timeout_s
        self.kept_runs = kept_runs
        self.runs: OrderedDict[str, Run] = OrderedDict()
        self.active: list[Run] = []  # round-robin order of runs with ops left to send
        self.retries: list = []  # heap of (not_before, run id, index, attempts)
        self.inflight: dict[int, tuple] = {}  # seq -> (run, index, attempts)
        self.chunk_sent_at = 0.0
        self.seq = 0
        self.count = 0
        self.finished: list[Run] = []

    # ---------------------------------------------------------------- runs
    def start(self, action: str, ids: list, extra: dict, skipped: int, now: float, reply=None) -> Run:
        """A new run; `reply` is the gateway tag of a small run (answered when done), None for large ones."""
        self.count += 1
        run = Run(f"blk_{self.incarnation:x}_{self.count}", action, list(ids), extra, skipped, now,
                  reply if len(ids) <= self.sync_max else None)
        self.runs[run.id] = run
        while len(self.runs) > self.kept_runs:
            oldest = next(iter(self.runs.values()))
            if oldest.finished is None:
                break
            self.runs.popitem(last=False)
        if ids:
            self.active.append(run)
        else:
            self.finished.append(run)
        return run

    def is_sync(self, run: Run) -> bool:
        return run.total <= self.sync_max

    def get(self, bulk_id: str) -> Run | None:
        return self.runs.get(bulk_id)

    def running(self) -> int:
        return sum(1 for r in self.runs.values() if r.finished is None)

    def take_finished(self) -> list[Run]:
        out, self.finished = self.finished, []
        return out

    # -------------------------------------------------------------- chunks
    def busy(self) -> bool:
        return bool(self.inflight or self.active or self.retries)

    def next_chunk(self, now: float) -> list:
        """Ops to submit now, as admission items `[client, size, tag, op bytes]` (empty while one is in flight)."""
        if self.inflight:
            return []
        items = []
        while self.retries and self.retries[0][0] <= now and len(items) < self.chunk_ops:
            _, run_id, index, attempts = heapq.heappop(self.retries)
            run = self.runs.get(run_id)
            if run is not None:
                items.append(self.item(run, index, attempts, now))
        while self.active and len(items) < self.chunk_ops:
            run = self.active.pop(0)
            take = min(self.chunk_ops - len(items), run.total - run.next)
            for index in range(run.next, run.next + take):
                items.append(self.item(run, index, 1, now))
            run.next += take
            if run.next < run.total:
                self.active.append(run)  # round-robin between runs, one share per chunk
        if items:
            self.chunk_sent_at = now
        return items

    def item(self, run: Run, index: int, attempts: int, now: float) -> list:
        self.seq += 1
        tag = [MR, self.incarnation, self.seq]
        args = {"job_id": run.ids[index], **run.extra, "request_id": f"{run.id}-{index}"}
        op = codec.encode({"op": run.op, "args": args, "now": int(now * 1000), "tag": tag})
        self.inflight[self.seq] = (run, index, attempts)
        return [MR, len(op), tag, op]

    def on_result(self, tag, result: dict, now: float) -> bool:
        """One op's result (or refusal); False when it is not ours."""
        if not tag or tag[0] != MR or tag[1] != self.incarnation:
            return False
        entry = self.inflight.pop(tag[2], None)
        if entry is None:
            return True  # a late answer to an op that was sent again
        run, index, attempts = entry
        err = result.get("err")
        if err is not None and err.get("code") in RETRYABLE and attempts < self.retry_max:
            delay = min(max((err.get("retry_after_ms") or 100) / 1000.0, 0.05), 5.0)
            heapq.heappush(self.retries, (now + delay, run.id, index, attempts + 1))
            return True
        self.settle(run, index, err, now)
        return True

    def settle(self, run: Run, index: int, err: dict | None, now: float):
        """The final outcome of one job of a run."""
        if err is None:
            run.affected += 1
        else:
            run.error_count += 1
            if len(run.errors) < self.errors_kept:
                run.errors.append({"job_id": run.ids[index], "code": err.get("code", "INTERNAL"),
                                   "message": err.get("message", "")})
        run.done += 1
        if run.done == run.total and run.finished is None:
            run.finished = now
            run.ids = []
            self.finished.append(run)

    def check_timeouts(self, now: float):
        """A chunk without every answer after chunk_timeout_s: send the missing ops again (same request_id)."""
        if not self.inflight or now - self.chunk_sent_at < self.chunk_timeout_s:
            return
        for seq, (run, index, attempts) in list(self.inflight.items()):
            del self.inflight[seq]
            if attempts < self.retry_max:
                heapq.heappush(self.retries, (now, run.id, index, attempts + 1))
            else:
                self.settle(run, index, {"code": "UNAVAILABLE", "message": "no outcome after several tries; "
                                         "check the job"}, now)
