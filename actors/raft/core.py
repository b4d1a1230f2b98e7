"""What the raft actor does with an applied entry, without sockets.

An entry is `{"v": 1, "id": [admission incarnation, n], "ops": [op, ...]}`;
each op carries a `tag` `[origin, incarnation, seq]` naming who waits for its
result. After an apply, `route` splits the results by origin: every node's
gateway gets the gateway results (a follower's gateway simply ignores tags it
did not issue) together with the queues that gained pending jobs, which wake
its parked long-polls; lifecycle results go to the lifecycle; admission is
told the entry is done so it can free the in-flight slot; bulk results
(origin "mr") go to the mirror, which also gets `changes_frame` after every
entry that changed jobs.
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
    gateway_msg = {"k": "applied", "index": index, "items": by_origin.pop("gw", []),
                   "woken": changes.woken if changes is not None else {}}
    if gateway_msg["items"] or gateway_msg["woken"]:
        out.append(("gateway", gateway_msg))
    for origin, items in by_origin.items():
        out.append((origin_socket(origin), {"k": "applied", "index": index, "items": items, "woken": {}}))
    if entry.get("id") is not None:
        out.append(("admission", {"k": "applied", "entry": entry["id"], "n": len(entry.get("ops") or ())}))
    return out


def failed(tags: list, entry_id, reason: str) -> list[tuple[str, dict]]:
    """Frames answering every op of an entry that raft could not commit here."""
    err = {"err": {"code": "UNAVAILABLE", "reason": reason,
                   "message": f"the raft log did not take the request ({reason}); the outcome is unknown, "
                              "retry with the same request_id"}}
    by_origin: dict[str, list] = {}
    for tag in tags:
        by_origin.setdefault(tag[0], []).append([tag, err])
    out = [(origin_socket(o), {"k": "applied", "index": None, "items": items, "woken": {}})
           for o, items in by_origin.items()]
    if entry_id is not None:
        out.append(("admission", {"k": "applied", "entry": entry_id, "n": len(tags)}))
    return out


def origin_socket(origin: str) -> str:
    return {"gw": "gateway", "lc": "lifecycle", "mr": "mirror"}.get(origin, "gateway")


def changes_frame(index: int, prev: int | None, jobs: list) -> dict:
    """The mirror's change feed: which jobs entry `index` changed (ids only; the mirror reads LMDB).

    `prev` is the index of the previous such frame this raft process sent (for its first one,
    the LMDB applied index it started from), so the mirror can tell when frames went missing.
    """
    return {"k": "changes", "index": index, "prev": prev, "jobs": list(dict.fromkeys(jobs))}


def decode_entry(data: bytes) -> dict:
    entry = codec.decode_trusted(data)
    if not isinstance(entry, dict) or entry.get("v") != 1 or not isinstance(entry.get("ops"), list):
        raise ValueError("not a v1 jobbie raft entry")
    return entry
