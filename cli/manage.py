"""CLI commands for queue and job management (mixed into cli.main.Cli)."""
from __future__ import annotations

import json

from . import render
from .common import _client, _fail, _fail_with, _flag, _json_arg, _run, _warn_if_unknown_queue


def _max_arg(value):
    """MAX of `jobbie concurrency`: a whole number >= 1, or none/unlimited."""
    if value is None or str(value).lower() in ("none", "unlimited", "nil", "null"):
        return None
    try:
        n = int(str(value))
    except ValueError:
        _fail(f"MAX must be a whole number of at least 1, or none; got {value!r}", 2)
    return n


def _int_arg(value, name):
    try:
        return int(str(value))
    except ValueError:
        _fail(f"{name} must be a whole number; got {value!r}", 2)


def _drain_calls(server, output, op, args, to_text):
    """Call a bounded delete op until nothing is left (or nothing more goes); print the summed answer."""
    from jobbie.transport.errors import JobbieError

    if output not in ("text", "json"):
        _fail(f"--output must be text or json, not {output!r}", 2)
    total = {"deleted": 0, "remaining": 0, "calls": 0}
    with _client(server, timeout=30.0, retry_for=10.0) as client:
        while True:
            try:
                result = client.call(op, **args)
            except JobbieError as exc:
                _fail_with(exc, server)
            total["deleted"] += result["deleted"]
            total["calls"] += 1
            # Stop when done, or when producers refill the queue as fast as it empties.
            if result["remaining"] == 0 or result["deleted"] == 0 or (
                    total["calls"] > 1 and result["remaining"] >= total["remaining"]):
                total["remaining"] = result["remaining"]
                break
            total["remaining"] = result["remaining"]
    print(json.dumps(total, sort_keys=True) if output == "json" else to_text(total))


class ManageCommands:
    def move(self, job_id: str, queue: str, server: str = None, output: str = "text"):
        """Move a job that is not active to QUEUE (it keeps its state; a pending job joins the back of its tier)."""
        return _run(server, output, "move_job", {"job_id": str(job_id), "queue": str(queue)},
                    lambda r: f"moved {job_id} to {queue} ({r['state']})")

    def priority(self, job_id: str, priority: str, server: str = None, output: str = "text"):
        """Set a job's PRIORITY: critical, high, normal or low."""
        return _run(server, output, "set_priority", {"job_id": str(job_id), "priority": str(priority)},
                    lambda r: f"{job_id} priority {r['priority']} ({r['state']})")

    def clear(self, queue: str, server: str = None, output: str = "text"):
        """Delete QUEUE's pending, scheduled, retrying and held jobs (active and finished jobs stay)."""
        return _drain_calls(server, output, "clear_queue", {"queue": str(queue)}, render.deleted(queue))

    def drain(self, queue: str, server: str = None, output: str = "text"):
        """Delete QUEUE's pending and scheduled jobs (like BullMQ drain); retrying, held and active jobs stay."""
        return _drain_calls(server, output, "drain_queue", {"queue": str(queue)}, render.deleted(queue))

    def delete_queue(self, queue: str, confirm: bool = False, server: str = None, output: str = "text"):
        """Delete QUEUE with every job in it (refused while jobs are active). Needs --confirm."""
        if not _flag(confirm):
            _fail(f"delete-queue deletes every job of {queue} and cannot be undone; add --confirm", 2)
        return _drain_calls(server, output, "delete_queue", {"queue": str(queue), "confirm": True},
                            render.deleted(queue, whole_queue=True))

    def concurrency(self, queue: str, max: str, server: str = None, output: str = "text"):  # noqa: A002
        """Let at most MAX jobs of QUEUE be active at once (1: one at a time); MAX none removes the limit."""
        limit = _max_arg(max)
        _warn_if_unknown_queue(server, str(queue))
        return _run(server, output, "set_concurrency", {"queue": str(queue), "max": limit},
                    lambda r: f"{queue}: at most {limit} active" if limit else f"{queue}: no concurrency limit")

    def throttle(self, queue: str, rate: int, period_ms: int, server: str = None, output: str = "text"):
        """Hand out at most RATE jobs of QUEUE per PERIOD_MS milliseconds."""
        rate, period = _int_arg(rate, "RATE"), _int_arg(period_ms, "PERIOD_MS")
        _warn_if_unknown_queue(server, str(queue))
        return _run(server, output, "set_throttle", {"queue": str(queue), "rate": rate, "period_ms": period},
                    lambda r: f"{queue}: at most {rate} jobs per {period} ms")

    def unthrottle(self, queue: str, server: str = None, output: str = "text"):
        """Remove QUEUE's throttle."""
        return _run(server, output, "remove_throttle", {"queue": str(queue)}, lambda r: f"{queue}: not throttled")

    def workers(self, server: str = None, output: str = "text"):
        """List workers by id: hostname, last seen, and the jobs each holds now."""
        return _run(server, output, "list_workers", {}, render.workers)

    def dead(self, queue: str = None, limit: int = 50, after: str = None, server: str = None, output: str = "text"):
        """List dead jobs (all queues, or QUEUE's) with their last error; --after JOB_ID for the next page."""
        args = {"queue": str(queue) if queue is not None else None, "limit": _int_arg(limit, "--limit"),
                "after": after}
        return _run(server, output, "list_dead", args, render.dead)

    def schedules(self, server: str = None, output: str = "text"):
        """List cron schedules: cron, time zone, queue, next and last fire."""
        return _run(server, output, "list_schedules", {}, render.schedules)

    def schedule_add(self, name: str, queue: str, cron: str, timezone: str = "UTC", payload: str = "null",
                     priority: str = None, max_retries: int = None, unique_key: str = None, tags: str = None,
                     server: str = None, output: str = "text"):
        """Create (or replace) schedule NAME: enqueue a job on QUEUE at every CRON time.

        Example: jobbie schedule-add nightly reports "0 3 * * *" --timezone Europe/Berlin --payload '{"k": 1}'

        Args:
          name: Schedule name (replaces an existing schedule of that name).
          queue: Queue of the jobs it makes.
          cron: Five fields: minute hour day-of-month month day-of-week (quote it); @daily etc. also work.
          timezone: IANA zone the cron is read in (default UTC).
          payload: JSON payload of each job (default null).
          priority: critical, high, normal (default) or low.
          max_retries: Retries after the first attempt (default 3).
          unique_key: At most one live job of this schedule at a time (a fire while one is live is skipped).
          tags: JSON object of string tags.
        """
        args = {"name": str(name), "queue": str(queue), "cron": str(cron), "timezone": str(timezone),
                "payload": _json_arg(payload, "payload"), "priority": priority,
                "max_retries": None if max_retries is None else _int_arg(max_retries, "--max-retries"),
                "unique_key": unique_key, "tags": _json_arg(tags, "tags") if tags is not None else None}
        return _run(server, output, "create_schedule", args, render.schedule_created)

    def schedule_delete(self, name: str, server: str = None, output: str = "text"):
        """Delete schedule NAME (jobs it already made stay)."""
        return _run(server, output, "delete_schedule", {"name": str(name)}, lambda r: f"deleted schedule {name}")
