"""What the raft actor does with an applied entry, without sockets.

An entry is `{"v": 1, "id": [admission incarnation, n], "ops": [op, ...]}`;
each op carries a `tag` `[origin, incarnation, seq]` naming who waits for its
result. After an apply, `route` splits the results by origin: every node's
gateway gets the gateway results (a follower's gateway simply ignores tags it
did not issue) together with the queues that gained pending jobs, which wake
its parked long-polls, and, in the same frame, the entry's id, which tells
admission (in the same process as the gateway) that its in-flight slot is free;
lifecycle results go to the lifecycle; bulk results (origin "mr") go to the
mirror, which also gets change frames (`FeedBatch`: the jobs the entries
changed, at most one frame per 10 ms).
"""
from __future__ import annotations

from jobbie.transport import codec


def route(entry: dict, index: int, results: list | None, changes) -> list[tuple[str, dict]]:
    """Frames to send after applying `entry` at `index`: a list of (destination, message)."""
    out = []
    by_origin: dict[str, list] = {}
    if results is not None:
        for op, result in zip(entry.get("ops") or (), results):
            tag = op.get("tag")
            if tag:
                by_origin.setdefault(tag[0], []).append([tag, result])
    _to_gateway(out, index, by_origin.pop("gw", []), changes.woken if changes is not None else {}, entry.get("id"))
    for origin, items in by_origin.items():
        out.append((origin_socket(origin), {"k": "applied", "index": index, "items": items, "woken": {}}))
    return out


def failed(tags: list, entry_id, reason: str) -> list[tuple[str, dict]]:
    """Frames answering every op of an entry that raft could not commit here."""
    if reason == "disk_full":
        err = {"err": {"code": "RESOURCE_EXHAUSTED", "reason": "disk_full", "retry_after_ms": 5000,
                       "message": "the leader's disk is under its reserve (--disk-free-min-mb): it takes no "
                                  "writes until space is freed there; nothing was applied"}}
    else:
        err = {"err": {"code": "UNAVAILABLE", "reason": reason,
                       "message": f"the raft log did not take the request ({reason}); the outcome is unknown, "
                                  "retry with the same request_id"}}
    by_origin: dict[str, list] = {}
    for tag in tags:
        by_origin.setdefault(tag[0], []).append([tag, err])
    out = []
    _to_gateway(out, None, by_origin.pop("gw", []), {}, entry_id)
    for origin, items in by_origin.items():
        out.append((origin_socket(origin), {"k": "applied", "index": None, "items": items, "woken": {}}))
    return out


def _to_gateway(out: list, index, items: list, woken: dict, entry_id):
    """The frame to the admission process: the gateway's results and wake-ups, and the entry's id
    ("entry done" for admission); none when it would carry nothing."""
    msg = {"k": "applied", "index": index, "items": items, "woken": woken}
    if entry_id is not None:
        msg["entry"] = entry_id
    if items or woken or entry_id is not None:
        out.append(("gateway", msg))


def origin_socket(origin: str) -> str:
    return {"gw": "gateway", "lc": "lifecycle", "mr": "mirror"}.get(origin, "gateway")


def changes_frame(index: int, prev: int | None, jobs) -> dict:
    """The mirror's change feed: which jobs the entries after `prev` up to `index` changed (ids
    only; the mirror reads LMDB).

    `prev` is the index of the previous such frame this raft process sent (for its first one,
    the LMDB applied index it started from), so the mirror can tell when frames went missing.
    """
    return {"k": "changes", "index": index, "prev": prev, "jobs": list(dict.fromkeys(jobs))}


#: Change frames are sent at most this often; the entries applied meanwhile share one frame.
FEED_WINDOW_S = 0.01
#: ... unless this many job ids wait.
FEED_IDS_MAX = 5000


class FeedBatch:
    """Coalesces the change feed: one frame per FEED_WINDOW_S instead of one per raft entry.

    Each frame costs raft a send and the mirror a wake-up; at a few thousand entries a second
    that showed in everyone's tail latency. The first entry after a quiet window is sent at once,
    so an idle node's mirror is not held back; the rest go with a later entry or at the tick
    (`due`). A merged frame still chains: its `prev` is the last frame before it.
    """

    def __init__(self, last_index: int, window_s: float = FEED_WINDOW_S, ids_max: int = FEED_IDS_MAX):
        self.window_s = window_s
        self.ids_max = ids_max
        self.last = last_index  # newest entry whose changes are in a frame, sent or waiting
        self.prev = None  # `prev` of the waiting frame (None: nothing waits)
        self.jobs: dict = {}
        self.sent_at = float("-inf")

    def add(self, index: int, jobs: list, now: float) -> dict | None:
        """Entry `index` changed `jobs`: the frame to send now, or None (it waits)."""
        if self.prev is None:
            self.prev = self.last
        self.jobs.update(dict.fromkeys(jobs))
        self.last = index
        if now - self.sent_at >= self.window_s or len(self.jobs) >= self.ids_max:
            return self.take(now)
        return None

    def due(self, now: float) -> dict | None:
        """The waiting frame once its window is over (called on every tick)."""
        if self.prev is not None and now - self.sent_at >= self.window_s:
            return self.take(now)
        return None

    def take(self, now: float) -> dict:
        frame = changes_frame(self.last, self.prev, self.jobs)
        self.prev, self.jobs, self.sent_at = None, {}, now
        return frame

    def restart(self, last_index: int):
        """A new LMDB (snapshot installed): the chain starts again at its applied index."""
        self.last, self.prev, self.jobs = last_index, None, {}


def decode_entry(data: bytes) -> dict:
    entry = codec.decode_trusted(data)
    if not isinstance(entry, dict) or entry.get("v") != 1 or not isinstance(entry.get("ops"), list):
        raise ValueError("not a v1 jobbie raft entry")
    return entry
