"""Lifecycle: time-driven transitions, proposed by the leader only.

The state machine never reads a clock, so something must tell it that time
has passed. The lifecycle actor looks at the heads of LMDB's time indexes
(due jobs, lease expiries, TTLs, old dedupe records, cron schedules, finished
jobs past the retention, throttle windows that reopen); when the earliest one
is due by this node's clock, it proposes one `tick` op through admission like
any client would. The apply does the work, deterministically, at the state
clock. Nothing is proposed while nothing is due, so an idle node writes no
log entries.

Only the node whose raft actor reports `leader` proposes ticks, one at a
time; a tick that comes back full (it hit its `limit`) is followed at once by
another. The completed-job retention is this node's configuration, so the
lifecycle writes it into each tick: the rule then travels in the raft log and
every node prunes the same jobs. Pure: the shell passes `now` (seconds) and
the earliest deadline.
"""
from __future__ import annotations

from jobbie.transport import codec

LC = "lc"
TICK_LIMIT = 1000
#: Counts of a tick result that stop at TICK_LIMIT (a full one: tick again at once).
FULL_COUNTS = ("promoted", "reclaimed", "expired", "fired", "pruned")  # (a worker sweep that stops at the
# limit is due again at once by storage.reads.next_deadline)


class LifecycleCore:
    def __init__(self, incarnation: int, tick_timeout_s: float = 3.0, status_stale_s: float = 2.0,
                 completed_retention_ms: int | None = None, worker_retention_ms: int | None = None):
        self.incarnation = incarnation
        #: None or 0: finished jobs are kept.
        self.completed_retention_ms = completed_retention_ms or None
        self.worker_retention_ms = worker_retention_ms or None
        self.tick_timeout_s = tick_timeout_s
        self.status_stale_s = status_stale_s
        self.leader = False
        self.status_seen_at = 0.0
        self.in_flight_since: float | None = None
        self.seq = 0
        self.again = False
        self.ticks = 0

    def on_status(self, msg: dict, now: float):
        if msg.get("k") == "raft_status":
            self.leader = msg.get("role") == "leader"
            self.status_seen_at = now

    def is_leader(self, now: float) -> bool:
        return self.leader and now - self.status_seen_at < self.status_stale_s

    def wants_deadline(self, now: float) -> bool:
        """Should the shell look up the earliest deadline now?"""
        if self.in_flight_since is not None and now - self.in_flight_since < self.tick_timeout_s:
            return False
        return self.is_leader(now)

    def decide(self, now: float, deadline_ms: int | None):
        """The tick op to propose (encoded), or None."""
        now_ms = int(now * 1000)
        if not self.again and (deadline_ms is None or deadline_ms > now_ms):
            return None
        self.again = False
        self.seq += 1
        self.in_flight_since = now
        self.ticks += 1
        tag = [LC, self.incarnation, self.seq]
        args = {"limit": TICK_LIMIT}
        if self.completed_retention_ms:
            args["completed_retention_ms"] = self.completed_retention_ms
        if self.worker_retention_ms:
            args["worker_retention_ms"] = self.worker_retention_ms
        return tag, codec.encode({"op": "tick", "args": args, "now": now_ms, "tag": tag})

    def on_applied(self, msg: dict):
        for tag, result in msg.get("items") or ():
            if tag[1] != self.incarnation or tag[2] != self.seq:
                continue
            self.in_flight_since = None
            ok = result.get("ok")
            if ok and max(ok.get(k, 0) for k in FULL_COUNTS) >= TICK_LIMIT:
                self.again = True
