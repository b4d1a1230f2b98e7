"""Human-readable output for the CLI: aligned tables and short lines."""
from __future__ import annotations

import datetime
import json
import time


def when(ms) -> str:
    """The one way the CLI writes a time: ISO 8601, UTC, to the second."""
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(ms, now_ms: float | None = None) -> str:
    """A time relative to now, for tables: `42s ago`, `3h ago`, `in 5m`."""
    if not ms:
        return "-"
    delta = ((time.time() * 1000 if now_ms is None else now_ms) - ms) / 1000
    seconds = abs(delta)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or unit == "s":
            text = f"{int(seconds // size)}{unit}"
            break
    return f"in {text}" if delta < 0 else f"{text} ago"


def _time(ms):
    """A time in a record view: absolute, then relative (`2026-12-04T19:14:00Z (5m ago)`)."""
    if not ms:
        return "-"
    return f"{when(ms)} ({ago(ms)})"


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
             q["retrying"], q["held"], q["dead"], q["completed"], q["cancelled"], _limit(q.get("max_concurrency")),
             _throttle(q.get("throttle"))] for q in r["queues"]]
    if not rows:
        return "no queues yet"
    return table(rows, ["QUEUE", "STATUS", "PENDING", "ACTIVE", "SCHEDULED", "RETRYING", "HELD", "DEAD",
                        "COMPLETED", "CANCELLED", "MAX_ACTIVE", "THROTTLE"])


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
    mirror = mirror_line(s.get("mirror"))
    if mirror:
        lines.append(mirror)
    usage = s.get("usage")
    if usage:
        lag = usage.get("lag")
        lines.append(f"usage       applied {usage.get('applied_index')}, lag {lag if lag is not None else '?'}, "
                     f"{usage.get('records', 0)} records, {usage.get('rebuilds', 0)} rebuilds, "
                     f"{usage.get('gaps', 0)} feed gaps" + (" (no recent report: restarting?)"
                                                            if usage.get("stale") else ""))
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
                 p.get("next_index") if p.get("next_index") is not None else "-",
                 f"{p['last_contact_ms']} ms ago" if p.get("last_contact_ms") is not None else "-"] for p in peers]
        extra.append(table(rows, ["PEER", "CONNECTED", "MATCH INDEX", "NEXT INDEX", "LAST CONTACT"]))
    elif not peers:
        extra.append("peers       none (single node)")
    return out + "\n" + "\n".join(extra)


# ------------------------------------------------------------------ queue management (cli/manage.py)

def _stamp(ms):
    """A time for a table cell: relative to now."""
    return ago(ms)


def _limit(n):
    return "-" if n is None else str(n)


def _throttle(t):
    return "-" if not t else f"{t['rate']}/{t['period_ms']}ms"


def deleted(queue, whole_queue=False):
    """Renderer for the summed answer of clear / drain / delete-queue."""
    def text(r):
        line = f"{queue}: deleted {r['deleted']} jobs"
        if r["remaining"]:
            line += f", {r['remaining']} remain (new jobs arrived or a call was cut short; run it again)"
        elif whole_queue:
            line += "; queue deleted"
        return line
    return text


def workers(r):
    rows = [[w["worker_id"], w.get("hostname") or "-", _stamp(w["last_seen_at"]), w["active"],
             ",".join(w["jobs"][:3]) + (",…" if len(w["jobs"]) > 3 else "") if w["jobs"] else "-"]
            for w in r["workers"]]
    if not rows:
        return "no workers seen yet"
    out = table(rows, ["WORKER", "HOSTNAME", "LAST_SEEN", "ACTIVE", "JOBS"])
    if r.get("cursor"):
        out += f"\n(more: --after {r['cursor']})"
    return out


def dead(r):
    rows = [[j["job_id"], j["queue"], f"{j['attempt']}/{j['max_retries'] + 1}", _stamp(j.get("dead_at")),
             _one_line(j.get("last_error"))] for j in r["jobs"]]
    if not rows:
        return "no dead jobs"
    out = table(rows, ["JOB", "QUEUE", "ATTEMPTS", "DEAD_AT", "LAST_ERROR"])
    if r.get("cursor"):
        out += f"\n(more: --after {r['cursor']})"
    return out


def _one_line(text, limit=80):
    text = " ".join(str(text or "-").split())
    return text if len(text) <= limit else text[:limit] + "…"


def schedules(r):
    # The cron expression holds spaces: it goes last, where it cannot shift other columns.
    rows = [[s["name"], s["queue"], s["timezone"], _stamp(s.get("next_fire_at")), _stamp(s.get("last_fire_at")),
             s["fires"], s["cron"]] for s in r["schedules"]]
    if not rows:
        return "no schedules"
    return table(rows, ["SCHEDULE", "QUEUE", "TIMEZONE", "NEXT_FIRE", "LAST_FIRE", "FIRES", "CRON"])


def schedule_created(r):
    verb = "replaced" if r.get("replaced") else "created"
    return (f"{verb} schedule {r['name']}: {r['cron']} ({r['timezone']}) -> {r['queue']}, "
            f"next fire {_time(r.get('next_fire_at'))}")


# ------------------------------------------------------------------ search, bulk and the mirror (cli/search.py)

def search_page(page, header: bool = True) -> str:
    """One page of search_jobs as an aligned table (the header only on the first page)."""
    rows = [[j["id"], j["queue"], j["state"], j.get("priority", "-"), j.get("attempt", 0), ago(j.get("created_at")),
             _error_line(j.get("last_error"))] for j in page["jobs"]]
    if not rows:
        return "no matching jobs"
    text = table(rows, ["JOB", "QUEUE", "STATE", "PRIORITY", "ATTEMPT", "CREATED", "LAST_ERROR"])
    return text if header else text.split("\n", 1)[1]


def _error_line(text, limit=60):
    text = " ".join(str(text or "-").split())
    return text if len(text) <= limit else text[:limit] + "…"


def bulk_progress(s, width: int = 30) -> str:
    """One line: [#####-----] done/total, affected, errors (for a \\r-updated progress bar)."""
    total = s.get("total") or 0
    done = s.get("done") or 0
    filled = int(width * done / total) if total else width
    return (f"{s.get('action', 'bulk')} [{'#' * filled}{'-' * (width - filled)}] {done}/{total}  "
            f"affected {s.get('affected', 0)}  errors {s.get('error_count', 0)}")


def bulk_result(action: str, r) -> str:
    line = f"{action}: {r['affected']} of {r['total']} jobs affected"
    if r.get("skipped"):
        line += f", {r['skipped']} skipped (not in a state the action takes)"
    line += f", {r['error_count']} errors ({r['duration_ms'] / 1000:.1f} s)"
    for err in (r.get("errors") or [])[:20]:
        line += f"\n  {err['job_id']}: {err['code']}: {err['message']}"
    if r["error_count"] > 20:
        line += f"\n  … {r['error_count'] - 20} more"
    return line


def mirror_line(m) -> str | None:
    """The `mirror` row of `jobbie status`."""
    if not m:
        return None
    lag = m.get("lag")
    text = (f"mirror      applied {m.get('applied_index')}, lag {lag if lag is not None else '?'}, "
            f"{m.get('dropped_updates', 0)} dropped updates, {m.get('rebuilds', 0)} rebuilds")
    repair = m.get("repair")
    if repair:
        text += f" ({repair['kind']} in progress: {repair['scanned']} jobs scanned)"
    if m.get("stale"):
        text += " (no recent report: restarting?)"
    return text
