"""Human-readable output for the CLI: aligned tables and short lines."""
from __future__ import annotations

import datetime
import json


def _time(ms):
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def table(rows: list[list], headers: list[str]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def enqueued(r):
    note = " (existing job for this unique key)" if r.get("unique_existing") else ""
    return f"{r['job_id']} {r['state']}{note}"


def state(r):
    extra = " (cancel requested; the worker is told on its next heartbeat)" if r.get("cancel_requested") else ""
    return f"{r['state']}{extra}"


def job(j):
    fields = [
        ("id", j["id"]), ("queue", j["queue"]), ("state", j["state"]), ("priority", j["priority"]),
        ("attempt", f"{j['attempt']} of {j['max_retries'] + 1}"), ("created", _time(j["created_at"])),
        ("run at", _time(j.get("run_at"))), ("started", _time(j.get("started_at"))),
        ("completed", _time(j.get("completed_at"))), ("worker", j.get("worker_id") or "-"),
        ("lease until", _time(j.get("lease_expires_at"))), ("progress", json.dumps(j.get("progress"))),
        ("tags", json.dumps(j.get("tags") or {})), ("payload", _short(j.get("payload"))),
        ("result", _short(j.get("result"))), ("last error", j.get("last_error") or "-"),
    ]
    out = "\n".join(f"{k:<12} {v}" for k, v in fields)
    for err in j.get("errors") or []:
        out += f"\n  attempt {err['attempt']} at {_time(err['at'])}: {err['error']}"
    return out


def _short(value, limit=200):
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def queues(r):
    rows = [[q["name"], "paused" if q["paused"] else "active", q["pending"], q["active"], q["scheduled"],
             q["retrying"], q["held"], q["dead"], q["completed"], q["cancelled"]] for q in r["queues"]]
    if not rows:
        return "no queues yet"
    return table(rows, ["QUEUE", "STATUS", "PENDING", "ACTIVE", "SCHEDULED", "RETRYING", "HELD", "DEAD",
                        "COMPLETED", "CANCELLED"])


def status(s):
    head = (f"node {s['node_id']}: {s['role']} (term {s['term']}, leader {s.get('leader') or '-'}), "
            f"commit {s['commit_index']}, applied {s['applied_index']}, "
            f"durable={'true' if s['durable'] else 'false'}")
    if s.get("warning"):
        head += f"\nwarning: {s['warning']}"
    pipe = s.get("pipeline") or {}
    lines = []
    for label, key in (("queue wait", "queue_wait_ms"), ("apply", "apply_ms"), ("commit", "entry_commit_ms")):
        h = pipe.get(key) or {}
        if h.get("count"):
            lines.append(f"{label:<11} p50 {h['p50']:.2f} ms  p90 {h['p90']:.2f} ms  p99 {h['p99']:.2f} ms  "
                         f"max {h['max']:.2f} ms  ({h['count']} samples)")
    ops = pipe.get("entry_ops") or {}
    adm = pipe.get("admission") or {}
    if ops.get("count"):
        lines.append(f"ops/entry   p50 {ops['p50']:g}  p99 {ops['p99']:g}  max {ops['max']:g}")
    if adm:
        limits = adm.get("limits") or {}
        lines.append(f"admission   {adm.get('in_flight', 0)} in flight (limit {limits.get('inflight_max', '?')}, "
                     f"{limits.get('inflight_per_client_max', '?')} per client), {adm.get('rejected', 0)} refused")
    rows = [[a["name"], a["pid"] or "-", a["restarts"], "yes" if a["alive"] else "NO"] for a in s["actors"]]
    middle = ("\n".join(lines) + "\n") if lines else ""
    return head + "\n" + middle + table(rows, ["ACTOR", "PID", "RESTARTS", "ALIVE"])


def cluster(s):
    out = status(s)
    snap = s.get("snapshot")
    extra = [f"journal     {s.get('journal_entries', '?')} entries since the last snapshot"]
    if snap:
        extra.append(f"snapshot    index {snap['index']}, {snap['bytes']:,} bytes, taken {_time(snap['at'])}")
    else:
        extra.append("snapshot    none yet")
    peers = s.get("peers") or []
    if peers and isinstance(peers[0], dict):
        rows = [[p["address"], "yes" if p.get("connected") else "NO",
                 p.get("match_index") if p.get("match_index") is not None else "-",
                 p.get("next_index") if p.get("next_index") is not None else "-"] for p in peers]
        extra.append(table(rows, ["PEER", "CONNECTED", "MATCH INDEX", "NEXT INDEX"]))
    elif not peers:
        extra.append("peers       none (single node)")
    return out + "\n" + "\n".join(extra)
