"""Cron schedules: create_schedule, delete_schedule, and firing from `tick`.

A schedule record (db `schedules`, key: its name) holds the job to enqueue
(queue, payload, enqueue options), the cron expression and time zone, and
`next_fire_at`, which the `schedule_due` index orders (next fire first).

Rules (docs/management.md):

- The gateway validated the expression and the zone (transport/ops_manage.py);
  here `next_fire` (storage/cron.py) is a pure function of the record and the
  state clock, so every node computes the same times.
- `tick` fires every schedule whose `next_fire_at` is at or before the state
  clock: it enqueues one job whose id is derived from (name, fire time), so
  the same fire can never make two jobs (the id is checked before creating),
  then sets `next_fire_at` to the first fire strictly after the state clock.
  Fires missed while the cluster was down therefore make one job, not a burst.
- `create_schedule` of an existing name replaces it (an upsert).
"""
from __future__ import annotations

import hashlib

from jobbie.transport.errors import check, error_result

from jobbie.transport.ids import crockford32

from . import cron
from . import keys as K
from .apply import Apply, _ok

#: Enqueue options a schedule passes to each job it makes.
JOB_OPTIONS = ("priority", "max_retries", "backoff", "expire_after_ms", "unique_key", "unique_period_ms", "tags",
               "hold", "hold_reason", "agent")

def schedule_job_id(name: str, fire_at: int) -> str:
    """The id of the job schedule `name` makes at `fire_at`: a ULID whose time is the fire time and whose
    other 80 bits are a hash of (name, fire time), so it sorts with other job ids and is the same on
    every node and every retry."""
    digest = hashlib.blake2b(f"{name}\x00{fire_at}".encode(), digest_size=10).digest()
    return "job_" + crockford32(fire_at, 10) + crockford32(int.from_bytes(digest, "big"), 16)


def _set_next(a: Apply, rec: dict, next_at: int | None):
    old = rec.get("next_fire_at")
    if old is not None:
        a.txn.delete(K.time_key(old, rec["name"]), db=a.db["schedule_due"])
    rec["next_fire_at"] = next_at
    if next_at is not None:
        a.txn.put(K.time_key(next_at, rec["name"]), b"", db=a.db["schedule_due"])


def handle_create_schedule(a: Apply, args: dict, ids: list) -> dict:
    name = args["name"]
    try:
        cron.parse(args["cron"])
    except cron.CronError as exc:
        return error_result("INVALID_ARGUMENT", f"cron: {exc}", "cron", "invalid_cron")
    try:
        cron.zone(args.get("timezone", "UTC"))
    except cron.CronError as exc:
        return error_result("INVALID_ARGUMENT", str(exc), "timezone", "invalid_timezone")
    next_at = cron.next_fire(args["cron"], args.get("timezone", "UTC"), a.now)
    old = a.get("schedules", name.encode())
    rec = {
        "name": name, "queue": args["queue"], "cron": args["cron"], "timezone": args.get("timezone", "UTC"),
        "payload": args.get("payload"),
        "options": {k: args[k] for k in JOB_OPTIONS if args.get(k) is not None},
        "next_fire_at": old["next_fire_at"] if old else None,
        "last_fire_at": old["last_fire_at"] if old else None, "last_job_id": old["last_job_id"] if old else None,
        "fires": old["fires"] if old else 0, "skipped": old["skipped"] if old else 0,
        "created_at": old["created_at"] if old else a.now, "updated_at": a.now,
    }
    _set_next(a, rec, next_at)
    a.put("schedules", name.encode(), rec)
    return _ok(**rec, replaced=old is not None)


def handle_delete_schedule(a: Apply, args: dict, ids: list) -> dict:
    name = args["name"]
    rec = a.get("schedules", name.encode())
    if rec is None:
        return error_result("NOT_FOUND", f"schedule {name} not found", "name")
    _set_next(a, rec, None)
    a.txn.delete(name.encode(), db=a.db["schedules"])
    return _ok()


def fire_due(a: Apply, due: list) -> int:
    """Fire the schedules of `due` ((next_fire_at, name) pairs, at most a tick's limit); returns how many."""
    fired = 0
    for at, name in due:
        rec = a.get("schedules", name.encode())
        check(rec is not None and rec["next_fire_at"] == at, f"schedule_due holds {name} at {at} wrongly")
        job_id = schedule_job_id(name, at)
        if a.txn.get(job_id.encode(), db=a.db["jobs"]) is None:
            job_args = dict(rec["options"], queue=rec["queue"], payload=rec["payload"])
            holder = None
            if job_args.get("unique_key") is not None:
                holder = a.unique_holder(job_args["queue"], job_args["unique_key"])
            if holder is None:
                a.create_job(job_id, job_args, extra={"schedule": {"name": name, "fire_at": at}})
                rec["last_job_id"] = job_id
                rec["fires"] += 1
            else:
                rec["skipped"] += 1  # the job of an earlier fire still holds the unique key
        rec["last_fire_at"] = at
        try:
            next_at = cron.next_fire(rec["cron"], rec["timezone"], max(a.now, at))
        except cron.CronError as exc:  # a rule a newer parser refuses: stop the schedule, keep its record
            next_at = None
            rec["last_error"] = str(exc)
        _set_next(a, rec, next_at)
        rec["updated_at"] = a.now
        a.put("schedules", name.encode(), rec)
        fired += 1
    return fired


HANDLERS = {
    "create_schedule": handle_create_schedule,
    "delete_schedule": handle_delete_schedule,
}
