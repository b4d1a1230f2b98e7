"""Per-queue limits kept in the queue record: concurrency and throttle.

A queue record is `{"name", "paused", "counts", "max_concurrency"?, "throttle"?,
"throttle_window"?, "throttle_used"?}`:

- `max_concurrency` (int >= 1, absent = unlimited): fetch never makes more than
  this many jobs of the queue active at once (1 = a singleton queue).
- `throttle` `{"rate", "period_ms"}`: fetch hands out at most `rate` jobs of the
  queue per window. Windows are fixed and deterministic: window number
  `now // period_ms` of the state clock. `throttle_window` / `throttle_used`
  count the jobs handed out in the latest window that handed out any.

Pure functions of a record and the state clock, shared by the state machine
(fetch, tick) and by the lifecycle's deadline read.
"""
from __future__ import annotations

from .states import ACTIVE, PENDING


def throttle_used(rec: dict, now: int) -> int:
    """Jobs the throttle has handed out in the window holding `now`."""
    throttle = rec.get("throttle")
    if not throttle:
        return 0
    return rec.get("throttle_used", 0) if rec.get("throttle_window") == now // throttle["period_ms"] else 0


def fetch_room(rec: dict, now: int) -> int | None:
    """How many more jobs of this queue fetch may hand out now; None = no limit."""
    room = None
    limit = rec.get("max_concurrency")
    if limit is not None:
        room = limit - rec["counts"].get(ACTIVE, 0)
    throttle = rec.get("throttle")
    if throttle:
        left = throttle["rate"] - throttle_used(rec, now)
        room = left if room is None else min(room, left)
    return room


def note_handed_out(rec: dict, now: int, n: int):
    """Count `n` jobs handed out by fetch against the throttle window of `now`."""
    throttle = rec.get("throttle")
    if not throttle or n <= 0:
        return
    used = throttle_used(rec, now)
    rec["throttle_window"] = now // throttle["period_ms"]
    rec["throttle_used"] = used + n


def window_reopens_at(rec: dict) -> int | None:
    """When a throttled queue whose last window ran out, and that has pending jobs, can hand out again.

    None when the queue is not throttled, has nothing pending, or its last window was not used up.
    The lifecycle ticks at that time so that the state machine wakes the queue's parked fetches.
    """
    throttle = rec.get("throttle")
    if not throttle or not rec["counts"].get(PENDING):
        return None
    if rec.get("throttle_used", 0) < throttle["rate"] or rec.get("throttle_window") is None:
        return None
    return (rec["throttle_window"] + 1) * throttle["period_ms"]
