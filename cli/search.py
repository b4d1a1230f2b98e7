"""CLI commands for search, bulk actions and the mirror (mixed into cli.main.Cli)."""
from __future__ import annotations

import json
import sys
import time

from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError

from . import render
from .common import _client, _fail, _fail_with, _flag, _json_arg, _json_default

#: Ids sent per bulk request when they come from stdin or --ids (the protocol allows 100000).
BULK_IDS_PER_REQUEST = 50_000


def _split(text) -> list[str]:
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        return [str(t) for t in text]
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _tags(text) -> dict | None:
    if text is None:
        return None
    if isinstance(text, dict):
        return {str(k): str(v) for k, v in text.items()}
    out = {}
    for part in _split(text):
        key, eq, value = part.partition("=")
        if not eq:
            _fail(f"--tag takes key=value pairs separated by commas, got {part!r}", 2)
        out[key] = value
    return out


def _call(client: Client, op: str, args: dict) -> dict:
    try:
        return client.call(op, **args)
    except JobbieError as exc:
        _fail_with(exc, client.endpoint)


class AdminCli:
    """Administration: the SQLite mirror behind search; replica digests."""

    def digest(self, server: str = None, tries: int = 10, output: str = "text"):
        """Hash each node's whole store and say whether replicas agree (exit 1 if two at the same index differ).

        Args:
          server: One node, or several comma-separated (default $JOBBIE_SERVER or tcp://127.0.0.1:7700).
          tries: Reads of every node, 0.5 s apart, until all are at the same applied index (writes keep moving it).
          output: text or json.
        """
        if output not in ("text", "json"):
            _fail(f"--output must be text or json, not {output!r}", 2)
        endpoints = _split(server) or [None]
        rows = []
        for attempt in range(max(1, int(tries))):
            rows = []
            for endpoint in endpoints:
                with _client(endpoint, timeout=60.0, retry_for=5.0) as client:
                    rows.append({"server": client.endpoint, **_call(client, "digest", {})})
            if len({r["applied_index"] for r in rows}) == 1:
                break
            time.sleep(0.5)
        by_index: dict = {}
        for r in rows:
            by_index.setdefault(r["applied_index"], set()).add(r["digest"])
        diverged = sorted(i for i, digests in by_index.items() if len(digests) > 1)
        if output == "json":
            print(json.dumps({"nodes": rows, "diverged_at": diverged}, sort_keys=True))
        else:
            for r in rows:
                print(f"{r['server']:<28} applied {r['applied_index']:>10}  digest {r['digest']}")
            if diverged:
                print(f"DIVERGED: replicas at index {', '.join(map(str, diverged))} hold different data")
            elif len(rows) > 1 and len(by_index) == 1:
                print(f"all {len(rows)} replicas agree at index {rows[0]['applied_index']}")
            elif len(rows) > 1:
                print("replicas are at different indexes (writes still arriving); nothing to compare yet")
        if diverged:
            sys.exit(1)

    def rebuild_mirror(self, server: str = None, output: str = "text"):
        """Rebuild the search mirror (SQLite) from LMDB; searches keep working meanwhile. Waits until it is swapped in."""
        if output not in ("text", "json"):
            _fail(f"--output must be text or json, not {output!r}", 2)
        with _client(server, timeout=600.0, retry_for=10.0) as client:
            result = _call(client, "rebuild_mirror", {})
        if output == "json":
            print(json.dumps(result, sort_keys=True))
        else:
            print(f"mirror rebuilt: {result['jobs']} jobs, mirrored index {result['applied_index']}, "
                  f"{result['duration_ms'] / 1000:.1f} s")


class SearchCommands:
    admin = AdminCli()

    def search(self, queue: str = None, state: str = None, tag: str = None, payload_contains: str = None,
               jq: str = None, error_contains: str = None, worker_id: str = None, batch_id: str = None,
               priority: str = None, sort: str = "created_at", order: str = "desc", limit: int = 50,
               all: bool = False, cursor: str = None, filter_json: str = None, server: str = None,
               output: str = "text"):
        """Find jobs in the search mirror. Text output is a table; --output json prints one JSON job per line.

        Example: jobbie search --queue emails --state dead,retrying --jq '.user.plan == "pro"' --all --output json

        Args:
          queue: Only this queue.
          state: Comma-separated states (pending, active, scheduled, retrying, dead, completed, cancelled, held).
          tag: Comma-separated key=value tags; every one must match.
          payload_contains: Text the payload's JSON contains (case-sensitive).
          jq: A jq-subset expression over the payload (paths, == != < <= > >=, and/or/not, contains,
            startswith, endswith, length).
          error_contains: Text an error message contains (ASCII case-insensitive).
          worker_id: Only jobs last leased by this worker.
          batch_id: Only members of this batch.
          priority: critical, high, normal or low.
          sort: created_at (default), scheduled_at, started_at, completed_at, expire_at, updated_at, priority, attempt.
          order: desc (default) or asc.
          limit: Jobs per page (1-1000; default 50).
          all: Follow the cursor through every page.
          cursor: Continue after the page that printed this cursor.
          filter_json: Any other search_jobs args as a JSON object (e.g. '{"created_after": 1700000000000}').
        """
        if output not in ("text", "json"):
            _fail(f"--output must be text or json, not {output!r}", 2)
        args = dict(_json_arg(filter_json, "--filter-json") or {}) if filter_json is not None else {}
        given = {"queue": queue, "state": _split(state) or None, "tags": _tags(tag),
                 "payload_contains": payload_contains, "payload_jq": jq, "error_contains": error_contains,
                 "worker_id": worker_id, "batch_id": batch_id, "priority": priority, "sort": sort,
                 "order": order, "limit": int(limit), "cursor": cursor}
        args.update({k: v for k, v in given.items() if v is not None})
        every = _flag(all)
        if every and int(limit) == 50:
            args["limit"] = 1000  # --all: big pages unless a page size was asked for
        shown = 0
        with _client(server, timeout=15.0, retry_for=15.0) as client:
            while True:
                page = _call(client, "search_jobs", args)
                if output == "json":
                    for job in page["jobs"]:
                        print(json.dumps(job, default=_json_default, sort_keys=True))
                else:
                    if page["jobs"] or shown == 0:
                        print(render.search_page(page, header=shown == 0))
                shown += len(page["jobs"])
                if not (every and page["has_more"] and page["cursor"]):
                    break
                args["cursor"] = page["cursor"]
        if output == "text":
            more = "" if every or not page["has_more"] else f"; next page: --cursor {page['cursor']}"
            print(f"{shown} of {page['total']} matching jobs ({page['duration_ms']:.1f} ms){more}", file=sys.stderr)

    def bulk(self, action: str, ids: str = None, filter_json: str = None, move_to_queue: str = None,
             priority: str = None, server: str = None, output: str = "text"):
        """Apply ACTION to many jobs: retry, delete, cancel, move, requeue or change_priority.

        The jobs: --ids a,b,c, or --filter-json with search filters, or job ids on stdin (one per line,
        or the JSON lines of `jobbie search --output json`), e.g.
            jobbie search --queue emails --state dead --all --output json | jobbie bulk retry
        Large runs show a progress bar on stderr.

        Args:
          action: retry, delete, cancel, move (needs --move-to-queue), requeue (dead, cancelled and completed
            jobs only) or change_priority (needs --priority).
          ids: Comma-separated job ids.
          filter_json: search_jobs filters as a JSON object, e.g. '{"queue": "q", "state": ["dead"]}'.
          move_to_queue: Target queue of move.
          priority: New priority of change_priority.
        """
        if output not in ("text", "json"):
            _fail(f"--output must be text or json, not {output!r}", 2)
        base = {"action": str(action), "move_to_queue": move_to_queue, "priority": priority}
        base = {k: v for k, v in base.items() if v is not None}
        id_list = _split(ids)
        requests = []
        if filter_json is not None:
            if id_list:
                _fail("give --ids or --filter-json, not both", 2)
            requests.append(dict(base, filter=_json_arg(filter_json, "--filter-json")))
        else:
            piped = not id_list and not sys.stdin.isatty()
            if piped:
                id_list = list(_ids_from(sys.stdin))
                if not id_list:  # e.g. a search that found nothing: zero jobs, not a mistake
                    empty = {"affected": 0, "skipped": 0, "error_count": 0, "errors": [], "total": 0,
                             "duration_ms": 0}
                    print(json.dumps(empty, sort_keys=True) if output == "json"
                          else f"{action}: no job ids on stdin, nothing to do")
                    return
            if not id_list:
                _fail("no jobs given: pass --ids, --filter-json, or job ids on stdin", 2)
            for i in range(0, len(id_list), BULK_IDS_PER_REQUEST):
                requests.append(dict(base, job_ids=id_list[i:i + BULK_IDS_PER_REQUEST]))
        totals = {"affected": 0, "skipped": 0, "error_count": 0, "errors": [], "total": 0, "duration_ms": 0}
        # A bulk is not idempotent as a whole: never resend it on a time-out (retry_for=0).
        with _client(server, timeout=130.0, retry_for=0.0) as client, \
                _client(server, timeout=10.0, retry_for=30.0) as poller:
            for args in requests:
                result = _call(client, "bulk", args)
                if result.get("status") == "running":
                    result = _follow(poller, result, output == "text")
                for key in ("affected", "skipped", "total", "duration_ms"):
                    totals[key] += result.get(key) or 0
                totals["error_count"] += result.get("error_count", len(result.get("errors") or ()))
                totals["errors"].extend(result.get("errors") or ())
                totals.setdefault("bulk_ids", []).append(result.get("bulk_id"))
        if output == "json":
            print(json.dumps(totals, sort_keys=True, default=_json_default))
        else:
            print(render.bulk_result(str(action), totals))
        if totals["error_count"]:
            sys.exit(1)


def _ids_from(stream):
    for line in stream:
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                job = json.loads(line)
            except json.JSONDecodeError as exc:
                _fail(f"stdin line is not JSON: {exc}", 2)
            job_id = job.get("id") or job.get("job_id")
            if job_id:
                yield str(job_id)
        else:
            yield from (part for part in line.replace(",", " ").split() if part)


def _follow(client: Client, started: dict, bar: bool) -> dict:
    """Poll bulk_status until the run is done, drawing a one-line progress bar on stderr."""
    bulk_id = started["bulk_id"]
    tty = bar and sys.stderr.isatty()
    last_line = 0.0
    while True:
        status = _call(client, "bulk_status", {"bulk_id": bulk_id})
        now = time.monotonic()
        if bar and (tty or now - last_line >= 5.0 or status["status"] == "done"):
            line = render.bulk_progress(status)
            print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
            last_line = now
        if status["status"] == "done":
            if tty:
                print(file=sys.stderr)
            return status
        time.sleep(0.3)
