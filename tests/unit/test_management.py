"""Queue management, limits, listings, cron schedules and retention on a real LMDB store.

Ops go through apply_batch (the `h` Harness of conftest.py); client ops are validated by
transport.ops first, exactly as the gateway does. After each scenario `consistent(h)` checks
the base invariants plus the indexes this work added (`by_queue`, `done`, `schedule_due`,
`throttled`).
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobbie.actors.lifecycle.core import TICK_LIMIT, LifecycleCore
from jobbie.storage import cron, reads
from jobbie.storage import keys as K
from jobbie.storage.machine import DEDUPE_TTL_MS
from jobbie.storage.schedules import schedule_job_id
from jobbie.storage.states import (ACTIVE, CANCELLED, COMPLETED, DEAD, HELD, PENDING, RETRYING, SCHEDULED,
                                   STATES)
from jobbie.transport import codec
from jobbie.transport.codec import decode_trusted

T0 = 1_700_000_000_000  # Harness.T0; a Tuesday, 22:13:20 UTC
MINUTE = 60_000
HOUR = 3_600_000
DAY = 86_400_000


def err(result) -> tuple:
    assert "err" in result, result
    e = result["err"]
    return e["code"], e.get("field"), e.get("reason")


def consistent(h):
    """Base invariants, plus: every job that is neither pending nor active is in `by_queue` under its
    queue and state, finished ones in `done` at finished_at, schedules in `schedule_due`."""
    h.assert_consistent()
    jobs = {}
    with h.store.begin() as txn:
        for k, v in txn.cursor(db=h.dbs["jobs"]):
            jobs[bytes(k).decode()] = decode_trusted(v)
    want_by_queue, want_done = [], []
    for jid, job in jobs.items():
        if job["state"] not in (PENDING, ACTIVE):
            want_by_queue.append(K.by_queue_key(job["queue"], job["state"], jid))
        if job["state"] in (COMPLETED, CANCELLED, DEAD):
            assert job["finished_at"] is not None
        if job["state"] in (COMPLETED, CANCELLED):
            want_done.append((job["finished_at"], jid))
        else:
            assert "finished_at" not in job or job["state"] == DEAD
    assert sorted(h.keys("by_queue")) == sorted(want_by_queue), "by_queue index does not match the jobs"
    assert sorted(h.time_index("done")) == sorted(want_done), "done index does not match finished jobs"
    schedules = {bytes(k).decode(): decode_trusted(v) for k, v in h.items("schedules")}
    want_due = sorted((s["next_fire_at"], n) for n, s in schedules.items() if s["next_fire_at"] is not None)
    assert h.time_index("schedule_due") == want_due
    throttled = sorted(n for n, row in h.queues().items() if row["throttle"])
    assert [k.decode() for k in h.keys("throttled")] == throttled


def deadline(h, retention=None):
    with h.store.begin() as txn:
        return reads.next_deadline(txn, h.dbs, DEDUPE_TTL_MS, retention)


def read(h, op, args=None):
    args = h.args(op, args)
    with h.store.begin() as txn:
        return reads.READERS[op](txn, h.dbs, args)


def bring(h, state, queue="q", **kw) -> str:
    """A job of `queue` in `state` (at T0)."""
    if state == PENDING:
        return h.enqueue(queue=queue, **kw)
    if state == SCHEDULED:
        return h.enqueue(queue=queue, delay_ms=60_000, **kw)
    if state == HELD:
        return h.enqueue(queue=queue, hold=True, **kw)
    jid = h.enqueue(queue=queue, max_retries=0 if state == DEAD else 3, **kw)
    assert h.fetch_one(queues=[queue])["job_id"] == jid
    if state == RETRYING:
        h.ok("fail", {"job_id": jid, "error": "boom"})
    elif state == DEAD:
        h.ok("fail", {"job_id": jid, "error": "boom"})
    elif state == COMPLETED:
        h.ok("ack", {"job_id": jid})
    elif state == CANCELLED:
        h.ok("cancel_job", {"job_id": jid})
        h.ok("fail", {"job_id": jid, "error": "stopped"})
    assert h.state(jid) == state
    return jid


# ====================================================================== move_job

def test_move_pending_job_goes_to_the_back_of_its_tier_in_the_new_queue(h):
    # Given a pending job in q, and two pending jobs already in q2
    jid = h.enqueue(queue="q")
    first, second = h.enqueue(queue="q2"), h.enqueue(queue="q2")
    # When it is moved to q2
    assert h.ok("move_job", {"job_id": jid, "queue": "q2"}) == {"state": PENDING}
    # Then it waits behind them (a new sequence number), counts moved, and q2 was woken
    assert h.pending_ids("q2") == [first, second, jid] and h.pending_ids("q") == []
    assert h.counts("q")[PENDING] == 0 and h.counts("q2")[PENDING] == 3
    assert h.last_changes.woken == {"q2": 1} and h.last_changes.jobs == [jid]
    assert h.raw_job(jid)["queue"] == "q2"
    consistent(h)


@pytest.mark.parametrize("state", [SCHEDULED, RETRYING, HELD, DEAD, COMPLETED, CANCELLED])
def test_move_keeps_the_state_of_a_job_that_is_not_pending(h, state):
    jid = bring(h, state)
    assert h.ok("move_job", {"job_id": jid, "queue": "other"}) == {"state": state}
    assert h.state(jid) == state and h.counts("other")[state] == 1 and h.counts("q")[state] == 0
    assert h.last_changes.woken == {}
    consistent(h)


def test_move_of_an_active_job_is_refused(h):
    jid = bring(h, ACTIVE)
    assert err(h.run("move_job", {"job_id": jid, "queue": "other"})) == \
        ("FAILED_PRECONDITION", "job_id", "job_active")
    # and nothing moved
    assert h.raw_job(jid)["queue"] == "q" and h.counts("other") == {s: 0 for s in STATES}
    consistent(h)


def test_move_unknown_job_and_same_queue(h):
    assert err(h.run("move_job", {"job_id": "nope", "queue": "q"})) == ("NOT_FOUND", "job_id", None)
    jid = h.enqueue()
    seq = h.raw_job(jid)["seq"]
    assert h.ok("move_job", {"job_id": jid, "queue": "q"}) == {"state": PENDING}
    assert h.raw_job(jid)["seq"] == seq  # a no-op keeps its place


def test_move_takes_the_unique_key_along_and_refuses_a_duplicate(h):
    # Given a unique job in q, and in q3 another live job with the same key
    jid = h.enqueue(queue="q", unique_key="k")
    h.enqueue(queue="q3", unique_key="k")
    # When moved to q2 / Then the lock moves: q is free for the key, q2 is not
    h.ok("move_job", {"job_id": jid, "queue": "q2"})
    assert h.ok("enqueue", {"queue": "q2", "payload": 1, "unique_key": "k"})["job_id"] == jid
    assert h.ok("enqueue", {"queue": "q", "payload": 1, "unique_key": "k"})["unique_existing"] is False
    # When moved on to q3, whose key is held / Then refused, nothing moves
    assert err(h.run("move_job", {"job_id": jid, "queue": "q3"})) == ("FAILED_PRECONDITION", "queue",
                                                                      "unique_conflict")
    assert h.raw_job(jid)["queue"] == "q2"
    consistent(h)


# ====================================================================== set_priority

def test_set_priority_reindexes_a_pending_job_at_the_back_of_its_new_tier(h):
    high = h.enqueue(priority="high")
    normal = [h.enqueue() for _ in range(2)]
    assert h.pending_ids() == [high, *normal]
    # When the last normal job becomes critical, then the first one high
    assert h.ok("set_priority", {"job_id": normal[1], "priority": "critical"}) == \
        {"state": PENDING, "priority": "critical"}
    h.ok("set_priority", {"job_id": normal[0], "priority": "high"})
    # Then fetch order follows: critical, then high (the changed job behind the older high one)
    assert h.pending_ids() == [normal[1], high, normal[0]]
    assert [h.fetch_one()["job_id"] for _ in range(3)] == [normal[1], high, normal[0]]
    consistent(h)


def test_set_priority_of_other_states_is_kept_for_the_next_run(h):
    jid = bring(h, SCHEDULED)
    assert h.ok("set_priority", {"job_id": jid, "priority": "low"}) == {"state": SCHEDULED, "priority": "low"}
    h.tick(T0 + 60_000)
    assert h.items("pending")[0][0] == K.pending_key("q", "low", h.raw_job(jid)["seq"])
    active = bring(h, ACTIVE, queue="a")
    assert h.ok("set_priority", {"job_id": active, "priority": "critical"})["state"] == ACTIVE
    assert err(h.run("set_priority", {"job_id": "nope", "priority": "low"}))[0] == "NOT_FOUND"
    consistent(h)


# ====================================================================== clear / drain / delete

def every_state(h, queue):
    # (pending last: bring() fetches the queue's oldest pending job for the other states)
    return {s: bring(h, s, queue=queue) for s in (SCHEDULED, RETRYING, HELD, ACTIVE, DEAD, COMPLETED, CANCELLED,
                                                  PENDING)}


@pytest.mark.parametrize("op,gone", [
    ("clear_queue", {PENDING, SCHEDULED, RETRYING, HELD}),
    ("drain_queue", {PENDING, SCHEDULED}),
])
def test_clear_and_drain_delete_their_states_only(h, op, gone):
    # Given one job in every state in q, and the same in another queue
    jobs, others = every_state(h, "q"), every_state(h, "keep")
    # When the queue is cleared / drained
    assert h.ok(op, {"queue": "q"}) == {"deleted": len(gone), "remaining": 0}
    # Then exactly those states' jobs are gone, with their counts; the other queue is untouched
    for state, jid in jobs.items():
        assert (h.raw_job(jid) is None) == (state in gone), state
        assert h.counts("q")[state] == (0 if state in gone else 1)
    assert all(h.raw_job(j) is not None for j in others.values())
    assert sorted(h.last_changes.jobs) == sorted(jobs[s] for s in gone)
    consistent(h)


def test_clear_removes_errors_ttl_and_unique_locks(h):
    jid = h.enqueue(unique_key="u", expire_after_ms=DAY, max_retries=5)
    h.fetch_one()
    h.ok("fail", {"job_id": jid, "error": "boom"})
    assert h.keys("errors") and h.keys("expiry") and h.keys("unique")
    h.ok("clear_queue", {"queue": "q"})
    assert h.keys("errors") == h.keys("expiry") == h.keys("unique") == [] and h.keys("jobs") == []
    consistent(h)


def test_clear_is_bounded_per_call_and_reports_what_remains(h):
    # Given 7 pending and 3 scheduled jobs
    for _ in range(7):
        h.enqueue()
    for _ in range(3):
        h.enqueue(delay_ms=1000)
    # When cleared 4 at a time / Then each call deletes at most 4 and says what is left
    assert h.ok("clear_queue", {"queue": "q", "limit": 4}) == {"deleted": 4, "remaining": 6}
    assert h.ok("clear_queue", {"queue": "q", "limit": 4}) == {"deleted": 4, "remaining": 2}
    assert h.ok("clear_queue", {"queue": "q", "limit": 4}) == {"deleted": 2, "remaining": 0}
    assert h.ok("clear_queue", {"queue": "q", "limit": 4}) == {"deleted": 0, "remaining": 0}
    consistent(h)


def test_clear_of_an_unknown_queue_deletes_nothing(h):
    assert h.ok("clear_queue", {"queue": "ghost"}) == {"deleted": 0, "remaining": 0}
    assert h.queues() == {}


def test_clear_fires_the_callback_of_a_batch_whose_last_member_it_deleted(h):
    h.ok("enqueue_batch", {"jobs": [{"queue": "q", "payload": 1}] * 2, "batch": {"callback_queue": "cb"}})
    h.ok("clear_queue", {"queue": "q"})
    assert h.counts("cb")[PENDING] == 1
    consistent(h)


def test_delete_queue_needs_confirm_and_refuses_while_jobs_are_active(h):
    jobs = every_state(h, "q")
    assert err(h.run("delete_queue", {"queue": "q", "confirm": False}, raw=True)) == \
        ("INVALID_ARGUMENT", "confirm", "confirm_required")
    assert err(h.run("delete_queue", {"queue": "ghost", "confirm": True})) == ("NOT_FOUND", "queue", None)
    assert err(h.run("delete_queue", {"queue": "q", "confirm": True})) == \
        ("FAILED_PRECONDITION", "queue", "jobs_active")
    assert all(h.raw_job(j) is not None for j in jobs.values())
    # When the active job finishes / Then the queue goes, jobs, record, limits and all
    h.ok("ack", {"job_id": jobs[ACTIVE]})
    h.ok("set_throttle", {"queue": "q", "rate": 5, "period_ms": 1000})
    h.ok("pause_queue", {"queue": "q"})
    assert h.ok("delete_queue", {"queue": "q", "confirm": True}) == {"deleted": 8, "remaining": 0}
    assert h.keys("jobs") == [] and h.queues() == {} and h.keys("throttled") == []
    consistent(h)
    # and a new job makes a fresh, unpaused queue
    h.enqueue()
    assert h.queues()["q"]["paused"] is False and h.queues()["q"]["throttle"] is None


def test_delete_queue_in_several_calls_keeps_the_queue_until_it_is_empty(h):
    for _ in range(5):
        bring(h, COMPLETED)
    assert h.ok("delete_queue", {"queue": "q", "confirm": True, "limit": 3}) == {"deleted": 3, "remaining": 2}
    assert "q" in h.queues()
    assert h.ok("delete_queue", {"queue": "q", "confirm": True, "limit": 3}) == {"deleted": 2, "remaining": 0}
    assert h.queues() == {}
    consistent(h)


# ====================================================================== concurrency

def test_concurrency_limits_how_many_jobs_of_a_queue_are_active(h):
    for _ in range(5):
        h.enqueue()
    assert h.ok("set_concurrency", {"queue": "q", "max": 2}) == {}
    assert h.queues()["q"]["max_concurrency"] == 2
    # When a worker asks for 5 / Then it gets 2, and nothing more while both are active
    got = h.fetch(count=5)
    assert len(got) == 2 and h.fetch(count=5, worker_id="w2") == []
    # When one is acked / Then the queue is woken and one more can be fetched
    h.ok("ack", {"job_id": got[0]["job_id"]})
    assert h.last_changes.woken == {"q": 1}
    assert len(h.fetch(count=5)) == 1
    # When the limit is removed / Then the rest come, and the pending jobs were woken
    h.ok("set_concurrency", {"queue": "q"})
    assert h.last_changes.woken == {"q": 2} and h.queues()["q"]["max_concurrency"] is None
    assert len(h.fetch(count=5)) == 2
    consistent(h)


def test_singleton_queue_and_other_queues_in_the_same_fetch(h):
    h.ok("set_concurrency", {"queue": "one", "max": 1})
    for _ in range(3):
        h.enqueue(queue="one", priority="critical")
        h.enqueue(queue="free")
    got = [j["queue"] for j in h.fetch(queues=["one", "free"], count=10)]
    # Then one job of the singleton queue, every job of the other
    assert sorted(got) == ["free", "free", "free", "one"]
    # Deleting the active job frees the slot too
    one = next(jid for jid in h.job_ids() if h.state(jid) == ACTIVE and h.raw_job(jid)["queue"] == "one")
    h.ok("delete_job", {"job_id": one})
    assert h.last_changes.woken == {"one": 1}
    assert len(h.fetch(queues=["one"], count=10)) == 1
    consistent(h)


def test_lowering_the_limit_below_the_active_count_takes_nothing_away(h):
    for _ in range(4):
        h.enqueue()
    h.fetch(count=3)
    h.ok("set_concurrency", {"queue": "q", "max": 1})
    assert h.counts()[ACTIVE] == 3 and h.fetch(count=5) == [] and h.last_changes.woken == {}


# ====================================================================== throttle

def take(h, n, now, queue="q") -> int:
    """Fetch up to n jobs and ack them at once (so no lease deadline hides the throttle's); how many came."""
    jobs = h.fetch(queues=[queue], count=n, now=now)
    for job in jobs:
        h.ok("ack", {"job_id": job["job_id"]}, now=now)
    return len(jobs)


def test_throttle_hands_out_at_most_rate_per_window(h):
    for _ in range(10):
        h.enqueue()
    h.ok("set_throttle", {"queue": "q", "rate": 3, "period_ms": 1000})
    assert h.queues()["q"]["throttle"] == {"rate": 3, "period_ms": 1000}
    w0 = (T0 // 1000) * 1000  # windows are floor(now / period): T0 is a window start
    # Within one window: 3 jobs over several fetches, then none
    assert len(h.fetch(count=2, now=w0 + 10)) == 2
    assert len(h.fetch(count=5, now=w0 + 500)) == 1
    assert h.fetch(count=5, now=w0 + 999) == []
    # The next window: 3 more
    assert len(h.fetch(count=5, now=w0 + 1000)) == 3
    consistent(h)


def test_used_up_window_gives_a_deadline_and_the_tick_wakes_the_queue(h):
    for _ in range(5):
        h.enqueue()
    h.ok("set_throttle", {"queue": "q", "rate": 2, "period_ms": 10_000})
    w = T0 // 10_000
    assert deadline(h) is None  # nothing used yet
    assert take(h, 1, now=T0 + 1) == 1
    assert deadline(h) is None  # window not used up: fetches would still get jobs
    assert take(h, 5, now=T0 + 2) == 1
    # Then the lifecycle is told to tick when the next window starts
    assert deadline(h) == (w + 1) * 10_000
    # When it ticks then / Then the queue's parked fetches are woken (up to rate) and the deadline is gone
    assert h.tick((w + 1) * 10_000)["woken"] == 1
    assert h.last_changes.woken == {"q": 2}
    assert deadline(h) is None
    assert take(h, 5, now=(w + 1) * 10_000 + 5) == 2
    consistent(h)


def test_throttle_with_nothing_pending_has_no_deadline_and_remove_throttle(h):
    h.enqueue()
    h.ok("set_throttle", {"queue": "q", "rate": 1, "period_ms": 60_000})
    assert take(h, 1, now=T0) == 1
    assert deadline(h) is None  # nothing pending: nobody to wake
    h.enqueue()
    assert deadline(h) == (T0 // 60_000 + 1) * 60_000
    assert h.fetch() == []
    assert h.ok("remove_throttle", {"queue": "q"}) == {}
    assert h.last_changes.woken == {"q": 1} and deadline(h) is None
    assert len(h.fetch()) == 1 and h.queues()["q"]["throttle"] is None
    assert h.ok("remove_throttle", {"queue": "never-seen"}) == {} and "never-seen" not in h.queues()
    consistent(h)


def test_throttle_and_concurrency_together_take_the_smaller_room(h):
    for _ in range(6):
        h.enqueue()
    h.ok("set_throttle", {"queue": "q", "rate": 4, "period_ms": 1000})
    h.ok("set_concurrency", {"queue": "q", "max": 3})
    assert len(h.fetch(count=10)) == 3
    assert h.queues()["q"]["throttle"] == {"rate": 4, "period_ms": 1000}


def test_paused_throttled_queue_is_not_woken(h):
    h.enqueue()
    h.enqueue()
    h.ok("set_throttle", {"queue": "q", "rate": 1, "period_ms": 1000})
    h.fetch()
    h.ok("pause_queue", {"queue": "q"})
    h.tick(T0 + 5000)
    assert h.last_changes.woken == {}


# ====================================================================== list_workers

def test_list_workers_shows_who_holds_what(h):
    for _ in range(3):
        h.enqueue()
    a = h.fetch(worker_id="w-b", hostname="box-b", count=2)
    h.fetch(worker_id="w-a", hostname="box-a", count=1, now=T0 + 5)
    h.fetch(worker_id="w-c", now=T0 + 7)
    # A heartbeat keeps the hostname
    h.ok("heartbeat", {"worker_id": "w-b", "jobs": {a[0]["job_id"]: {}}}, now=T0 + 9)
    workers = read(h, "list_workers")
    assert [w["worker_id"] for w in workers["workers"]] == ["w-a", "w-b", "w-c"] and workers["cursor"] is None
    wb = workers["workers"][1]
    assert wb == {"worker_id": "w-b", "hostname": "box-b", "last_seen_at": T0 + 9, "active": 2,
                  "jobs": sorted(j["job_id"] for j in a)}
    assert workers["workers"][2]["active"] == 0
    # Pages
    page = read(h, "list_workers", {"limit": 2})
    assert [w["worker_id"] for w in page["workers"]] == ["w-a", "w-b"] and page["cursor"] == "w-b"
    rest = read(h, "list_workers", {"limit": 2, "after": "w-b"})
    assert [w["worker_id"] for w in rest["workers"]] == ["w-c"] and rest["cursor"] is None


def worker_ids(h) -> list:
    return [w["worker_id"] for w in read(h, "list_workers")["workers"]]


def test_workers_not_seen_for_the_retention_are_forgotten(h):
    h.enqueue()
    h.fetch(worker_id="w-old", now=T0)
    h.fetch(worker_id="w-new", now=T0 + 50 * MINUTE)
    retention = HOUR
    with h.store.begin() as txn:
        # The first sweep is due at once once there are workers (and only with a retention)
        assert reads.next_deadline(txn, h.dbs, DEDUPE_TTL_MS, None, retention) == 0
        assert reads.next_deadline(txn, h.dbs, DEDUPE_TTL_MS, None, None) != 0
    # Before the retention has passed for anyone, nobody goes
    assert "workers_pruned" not in h.ok("tick", {"limit": 10, "worker_retention_ms": retention}, now=T0 + HOUR - 1)
    # The next pass is a minute later; then the worker unseen for an hour goes, the other stays
    with h.store.begin() as txn:
        assert reads.next_deadline(txn, h.dbs, DEDUPE_TTL_MS, None, retention) == T0 + HOUR - 1 + 60_000
    assert "workers_pruned" not in h.ok("tick", {"limit": 10, "worker_retention_ms": retention}, now=T0 + HOUR)
    result = h.ok("tick", {"limit": 10, "worker_retention_ms": retention}, now=T0 + HOUR + 60_000)
    assert result["workers_pruned"] == 1 and worker_ids(h) == ["w-new"]
    # Without the arg (an older lifecycle, or --worker-retention-ms 0) nothing is forgotten
    assert "workers_pruned" not in h.ok("tick", {"limit": 10}, now=T0 + 100 * DAY)
    assert worker_ids(h) == ["w-new"]
    # A forgotten worker that fetches again is listed again
    h.fetch(worker_id="w-old", now=T0 + 100 * DAY)
    assert worker_ids(h) == ["w-new", "w-old"]


def test_the_worker_sweep_goes_a_chunk_per_tick_and_keeps_its_place(h):
    h.enqueue()
    for i in (0, 2, 4, 6, 1, 3, 5):  # the even ones a day before the odd ones (the state clock only goes on)
        h.fetch(worker_id=f"w{i}", now=T0 + (0 if i % 2 == 0 else DAY))
    args = {"limit": 3, "worker_retention_ms": HOUR}
    seen = []
    now = T0 + DAY + HOUR - 1  # the even ones are stale, the odd ones not yet
    for _ in range(3):
        seen.append(h.ok("tick", args, now=now).get("workers_pruned", 0))
        with h.store.begin() as txn:
            due = reads.next_deadline(txn, h.dbs, DEDUPE_TTL_MS, None, HOUR)
        if due > now:
            break
    # Three ticks of at most three records each looked at all seven; the next pass waits a minute
    assert seen == [2, 1, 1] and due == now + 60_000
    assert worker_ids(h) == ["w1", "w3", "w5"]
    assert h.meta_int(b"worker_sweep_at") == now + 60_000


@pytest.mark.parametrize("retention,every", [(HOUR, 60_000), (5000, 5000), (10, 1000)])
def test_the_next_worker_sweep_waits_a_minute_or_the_retention_but_a_second_at_least(h, retention, every):
    h.enqueue()
    h.fetch(worker_id="w", now=T0)
    h.ok("tick", {"limit": 10, "worker_retention_ms": retention}, now=T0 + 1)
    assert h.meta_int(b"worker_sweep_at") == T0 + 1 + every


# ====================================================================== list_dead

def test_list_dead_by_queue_and_over_all_queues_with_a_cursor(h):
    dead = []
    for i, queue in enumerate(["b", "a", "b", "c", "a"]):
        jid = h.enqueue(queue=queue, max_retries=0, job_id=f"x_{i}")
        h.fetch_one(queues=[queue])
        h.ok("fail", {"job_id": jid, "error": f"boom {i}"})
        dead.append(jid)
    bring(h, COMPLETED, queue="a")
    every = read(h, "list_dead")
    assert [j["job_id"] for j in every["jobs"]] == dead and every["cursor"] is None
    assert every["jobs"][0] == {"job_id": "x_0", "queue": "b", "priority": "normal", "attempt": 1,
                                "max_retries": 0, "last_error": "boom 0", "failed_at": T0, "dead_at": T0,
                                "created_at": T0, "tags": {}}
    assert [j["job_id"] for j in read(h, "list_dead", {"queue": "a"})["jobs"]] == ["x_1", "x_4"]
    # Pages of two over all queues, then of one within a queue
    page = read(h, "list_dead", {"limit": 2})
    assert [j["job_id"] for j in page["jobs"]] == ["x_0", "x_1"] and page["cursor"] == "x_1"
    page = read(h, "list_dead", {"limit": 2, "after": page["cursor"]})
    assert [j["job_id"] for j in page["jobs"]] == ["x_2", "x_3"] and page["cursor"] == "x_3"
    page = read(h, "list_dead", {"limit": 2, "after": page["cursor"]})
    assert [j["job_id"] for j in page["jobs"]] == ["x_4"] and page["cursor"] is None
    page = read(h, "list_dead", {"queue": "b", "limit": 1, "after": "x_0"})
    assert [j["job_id"] for j in page["jobs"]] == ["x_2"] and page["cursor"] is None
    # A retried job leaves the list; a cursor at a job that is gone still works
    h.ok("retry_job", {"job_id": "x_1"})
    assert [j["job_id"] for j in read(h, "list_dead", {"after": "x_1"})["jobs"]] == ["x_2", "x_3", "x_4"]
    assert read(h, "list_dead", {"queue": "nothing-here"}) == {"jobs": [], "cursor": None}
    consistent(h)


# ====================================================================== schedules

def schedule(h, name="tick-tock", cron_expr="*/5 * * * *", now=T0, **kw):
    return h.ok("create_schedule", {"name": name, "queue": "cron", "cron": cron_expr, "payload": {"n": 1}, **kw},
                now=now)


def test_create_schedule_computes_the_first_fire_and_lists_it(h):
    rec = schedule(h)
    first = cron.next_fire("*/5 * * * *", "UTC", T0)
    assert rec["next_fire_at"] == first and rec["replaced"] is False and rec["fires"] == 0
    assert rec["options"] == {"priority": "normal", "max_retries": 3, "hold": False}
    (listed,) = read(h, "list_schedules")["schedules"]
    assert listed["name"] == "tick-tock" and listed["next_fire_at"] == first
    assert deadline(h) == first
    consistent(h)


def test_tick_fires_a_due_schedule_once_with_a_deterministic_id(h):
    first = schedule(h, max_retries=7, tags={"k": "v"}, priority="high")["next_fire_at"]
    # Before the fire time nothing happens
    assert "fired" not in h.tick(first - 1)
    # At it: one job with the id derived from (name, fire time), and the options of the schedule
    assert h.tick(first)["fired"] == 1
    jid = schedule_job_id("tick-tock", first)
    job = h.raw_job(jid)
    assert (job["queue"], job["state"], job["payload"], job["max_retries"], job["tags"], job["priority"]) == \
        ("cron", PENDING, {"n": 1}, 7, {"k": "v"}, "high")
    assert job["schedule"] == {"name": "tick-tock", "fire_at": first}
    assert h.last_changes.woken == {"cron": 1}
    # The same tick again (a new leader's first tick, say) fires nothing more
    assert "fired" not in h.tick(first)
    rec = read(h, "list_schedules")["schedules"][0]
    assert (rec["last_fire_at"], rec["last_job_id"], rec["fires"], rec["next_fire_at"]) == \
        (first, jid, 1, first + 5 * MINUTE)
    assert h.job_ids() == [jid]
    consistent(h)


def test_schedule_job_ids_sort_like_job_ids_and_differ_per_schedule_and_time():
    a, b = schedule_job_id("a", T0), schedule_job_id("a", T0 + 60_000)
    assert a.startswith("job_") and len(a) == 30 and a < b
    assert schedule_job_id("a", T0) == a != schedule_job_id("b", T0)


def test_missed_fires_make_one_job_not_a_burst(h):
    first = schedule(h, cron_expr="* * * * *")["next_fire_at"]
    # Given the cluster was down for an hour
    later = first + 60 * MINUTE + 30_000
    assert h.tick(later)["fired"] == 1
    assert h.job_ids() == [schedule_job_id("tick-tock", first)]
    # Then the next fire is the first one after now
    assert read(h, "list_schedules")["schedules"][0]["next_fire_at"] == first + 61 * MINUTE
    assert "fired" not in h.tick(later + 1)
    consistent(h)


def test_an_existing_job_with_the_derived_id_is_never_created_twice(h):
    first = schedule(h)["next_fire_at"]
    jid = schedule_job_id("tick-tock", first)
    h.enqueue(queue="elsewhere", job_id=jid)  # (only possible by hand; the check must hold anyway)
    assert h.tick(first)["fired"] == 1
    assert h.raw_job(jid)["queue"] == "elsewhere" and h.counts("cron")[PENDING] == 0
    consistent(h)


def test_unique_key_skips_a_fire_while_the_last_job_lives(h):
    first = schedule(h, cron_expr="* * * * *", unique_key="only-one")["next_fire_at"]
    h.tick(first)
    h.tick(first + MINUTE)
    rec = read(h, "list_schedules")["schedules"][0]
    assert (rec["fires"], rec["skipped"]) == (1, 1) and h.counts("cron")[PENDING] == 1
    consistent(h)


def test_replace_and_delete_schedule(h):
    schedule(h, cron_expr="0 0 * * *")
    rec = schedule(h, cron_expr="0 12 * * *", timezone="Europe/Berlin", now=T0 + 1)
    assert rec["replaced"] is True and rec["timezone"] == "Europe/Berlin"
    assert rec["next_fire_at"] == cron.next_fire("0 12 * * *", "Europe/Berlin", T0 + 1)
    assert len(h.keys("schedule_due")) == 1
    assert h.ok("delete_schedule", {"name": "tick-tock"}) == {}
    assert read(h, "list_schedules") == {"schedules": []} and deadline(h) is None
    assert err(h.run("delete_schedule", {"name": "tick-tock"})) == ("NOT_FOUND", "name", None)
    consistent(h)


def test_schedule_refusals_in_the_state_machine(h):
    # The gateway refuses these first; the state machine refuses them too (ops from an older gateway, say)
    bad_cron = {"name": "s", "queue": "q", "cron": "99 * * * *", "timezone": "UTC"}
    assert err(h.run("create_schedule", bad_cron, raw=True)) == ("INVALID_ARGUMENT", "cron", "invalid_cron")
    bad_tz = {"name": "s", "queue": "q", "cron": "* * * * *", "timezone": "Nowhere/Land"}
    assert err(h.run("create_schedule", bad_tz, raw=True)) == ("INVALID_ARGUMENT", "timezone", "invalid_timezone")
    assert h.keys("schedules") == []


def test_schedules_fire_identically_on_two_stores(make_harness):
    # Given the same ops applied on two nodes / Then the stores are byte-identical
    digests = []
    for _ in range(2):
        h = make_harness()
        h.ok("create_schedule", {"name": "berlin", "queue": "q", "cron": "30 2 * * *", "timezone": "Europe/Berlin"})
        h.ok("create_schedule", {"name": "fast", "queue": "q", "cron": "*/7 * * * *"})
        for step in range(1, 40):
            h.tick(T0 + step * 13 * 60_000)
        digests.append(h.digest())
        consistent(h)
    assert digests[0] == digests[1]


# ====================================================================== retention

def test_completed_and_cancelled_jobs_are_pruned_after_the_retention(h):
    done = bring(h, COMPLETED)
    cancelled = bring(h, CANCELLED, queue="c")
    dead = bring(h, DEAD)
    h.ok("fetch", {"queues": ["q"], "worker_id": "w"})  # nothing; just moves the clock
    retention = 10 * MINUTE
    # The lifecycle's deadline includes the oldest finished job + the retention, only when it has one
    assert deadline(h) is None and deadline(h, retention) == T0 + retention
    assert "pruned" not in h.ok("tick", {"limit": 10, "completed_retention_ms": retention}, now=T0 + retention - 1)
    # Without the arg (an older lifecycle) nothing is pruned
    assert "pruned" not in h.tick(T0 + 2 * retention)
    assert h.ok("tick", {"limit": 10, "completed_retention_ms": retention}, now=T0 + 2 * retention)["pruned"] == 2
    assert h.raw_job(done) is None and h.raw_job(cancelled) is None and h.state(dead) == DEAD
    assert sorted(h.last_changes.jobs) == sorted([done, cancelled])
    assert h.counts("q")[COMPLETED] == 0 and h.counts("c")[CANCELLED] == 0 and h.keys("errors") != []
    consistent(h)


def test_pruning_is_bounded_and_oldest_first(h):
    ids = []
    for i in range(5):
        jid = h.enqueue(now=T0 + i)
        h.fetch_one(now=T0 + i)
        h.ok("ack", {"job_id": jid}, now=T0 + i)
        ids.append(jid)
    result = h.ok("tick", {"limit": 2, "completed_retention_ms": 1000}, now=T0 + 5000)
    assert result["pruned"] == 2 and [h.raw_job(j) is None for j in ids] == [True, True, False, False, False]
    consistent(h)


def test_a_retried_finished_job_leaves_the_done_index(h):
    jid = bring(h, COMPLETED)
    h.ok("retry_job", {"job_id": jid})
    assert h.keys("done") == [] and "finished_at" not in h.raw_job(jid)
    assert "pruned" not in h.ok("tick", {"limit": 10, "completed_retention_ms": 1}, now=T0 + DAY)
    consistent(h)


# ====================================================================== lifecycle core

def test_lifecycle_puts_its_retention_in_every_tick():
    core = LifecycleCore(incarnation=1, completed_retention_ms=5000)
    core.on_status({"k": "raft_status", "role": "leader"}, 0.0)
    tag, op = core.decide(0.1, 0)
    assert codec.decode(op)["args"] == {"limit": TICK_LIMIT, "completed_retention_ms": 5000}
    assert LifecycleCore(incarnation=1, completed_retention_ms=0).completed_retention_ms is None
    core = LifecycleCore(incarnation=1, worker_retention_ms=HOUR)
    core.on_status({"k": "raft_status", "role": "leader"}, 0.0)
    assert codec.decode(core.decide(0.1, 0)[1])["args"] == {"limit": TICK_LIMIT, "worker_retention_ms": HOUR}


@pytest.mark.parametrize("field", ["fired", "pruned"])
def test_lifecycle_ticks_again_when_schedules_or_pruning_came_back_full(field):
    core = LifecycleCore(incarnation=1)
    core.on_status({"k": "raft_status", "role": "leader"}, 0.0)
    tag, _ = core.decide(0.1, 0)
    core.on_applied({"items": [[tag, {"ok": {"promoted": 0, "reclaimed": 0, "expired": 0, field: TICK_LIMIT}}]]})
    assert core.decide(0.2, None) is not None


# ====================================================================== random sequences

RANDOM_QUEUES = ("a", "b", "c")
STEP = st.one_of(
    st.tuples(st.just("enqueue"), st.sampled_from(RANDOM_QUEUES), st.sampled_from(("now", "delay", "hold")),
              st.sampled_from(("critical", "normal", "low")), st.sampled_from((None, "u"))),
    st.tuples(st.just("fetch"), st.sampled_from(RANDOM_QUEUES), st.integers(1, 4)),
    st.tuples(st.just("finish"), st.integers(0, 50), st.sampled_from(("ack", "fail", "cancel"))),
    st.tuples(st.just("move_job"), st.integers(0, 50), st.sampled_from(RANDOM_QUEUES)),
    st.tuples(st.just("set_priority"), st.integers(0, 50), st.sampled_from(("critical", "high", "low"))),
    st.tuples(st.sampled_from(("clear_queue", "drain_queue", "delete_queue")), st.sampled_from(RANDOM_QUEUES),
              st.integers(1, 3)),
    st.tuples(st.just("set_concurrency"), st.sampled_from(RANDOM_QUEUES), st.sampled_from((None, 1, 2))),
    st.tuples(st.just("set_throttle"), st.sampled_from(RANDOM_QUEUES), st.integers(1, 3),
              st.sampled_from((500, 2000))),
    st.tuples(st.just("remove_throttle"), st.sampled_from(RANDOM_QUEUES)),
    st.tuples(st.just("schedule"), st.sampled_from(("s1", "s2")), st.sampled_from(("* * * * * *", "*/3 * * * *"))),
    st.tuples(st.just("delete_schedule"), st.sampled_from(("s1", "s2"))),
    st.tuples(st.just("tick"), st.sampled_from((None, 1500))),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(STEP, st.integers(0, 1500)), min_size=5, max_size=40))
def test_random_management_sequences_keep_indexes_counts_and_limits(make_harness, steps):
    h = make_harness()
    now = T0
    for step, dt in steps:
        now += dt
        kind = step[0]
        ids = h.job_ids()
        pick = (lambda i: ids[i % len(ids)] if ids else "job_missing")
        if kind == "enqueue":
            _, queue, mode, prio, unique = step
            args = {"queue": queue, "payload": 1, "priority": prio, "max_retries": 1,
                    "backoff": {"strategy": "fixed", "base_ms": 700, "max_ms": 700}}
            if mode == "delay":
                args["delay_ms"] = 1000
            if mode == "hold":
                args["hold"] = True
            if unique:
                args["unique_key"] = unique
            result = h.run("enqueue", args, now=now)
        elif kind == "fetch":
            _, queue, count = step
            before = h.queues().get(queue)
            result = h.run("fetch", {"queues": [queue], "worker_id": "w", "count": count}, now=now)
            after = h.queues().get(queue)
            limit = before and before["max_concurrency"]
            if limit is not None and before:
                # fetch never makes a limited queue exceed its limit (it never lowers a count either)
                assert after["active"] <= max(before["active"], limit)
            if before and before["throttle"]:
                assert len(result["ok"]["jobs"]) <= before["throttle"]["rate"]
        elif kind == "finish":
            _, i, how = step
            jid = pick(i)
            op = {"ack": "ack", "fail": "fail", "cancel": "cancel_job"}[how]
            result = h.run(op, {"job_id": jid}, now=now)
        elif kind in ("move_job", "set_priority"):
            key = "queue" if kind == "move_job" else "priority"
            result = h.run(kind, {"job_id": pick(step[1]), key: step[2]}, now=now)
        elif kind in ("clear_queue", "drain_queue", "delete_queue"):
            args = {"queue": step[1], "limit": step[2]}
            if kind == "delete_queue":
                args["confirm"] = True
            result = h.run(kind, args, now=now)
        elif kind == "set_concurrency":
            result = h.run(kind, {"queue": step[1], "max": step[2]}, now=now)
        elif kind == "set_throttle":
            result = h.run(kind, {"queue": step[1], "rate": step[2], "period_ms": step[3]}, now=now)
        elif kind == "remove_throttle":
            result = h.run(kind, {"queue": step[1]}, now=now)
        elif kind == "schedule":
            result = h.run("create_schedule", {"name": step[1], "queue": "a", "cron": step[2]}, now=now)
        elif kind == "delete_schedule":
            result = h.run(kind, {"name": step[1]}, now=now)
        else:
            args = {"limit": 3} if step[1] is None else {"limit": 3, "completed_retention_ms": step[1]}
            result = h.run("tick", args, now=now)
        if "err" in result:
            assert result["err"]["code"] in ("NOT_FOUND", "FAILED_PRECONDITION"), (step, result)
        consistent(h)
