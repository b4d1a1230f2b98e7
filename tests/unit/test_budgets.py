"""Budgets, held jobs and the audit trail (storage/budgets.py, holds.py, audit.py) on a real LMDB store.

Scopes and layers, windows, enqueue refusals and holds, reservation at fetch, pause not kill,
approvals with and without extensions, rejections, hold time-outs, window roll-over, the
audit trail, and determinism (two stores fed the same ops end byte-identical).
"""
from __future__ import annotations

import pytest

from jobbie.storage import reads
from jobbie.storage.budgets import DAY_MS, HOUR_MS, _month_start, _next_month
from jobbie.storage.states import ACTIVE, CANCELLED, COMPLETED, HELD, PENDING

from .conftest import T0, Harness

DAY0 = T0 - T0 % DAY_MS  # start of T0's UTC day


def budget(h, budget_id="b", now=T0, **kw):
    args = dict(budget_id=budget_id, scope="global", limit_usd=1.0, on_exceed="hold")
    args.update(kw)
    return h.ok("set_budget", args, now=now)


def read(h, name, args=None, now=T0):
    with h.store.begin() as txn:
        return reads.READERS[name](txn, h.dbs, dict(args or {}, now=now))


def view(h, budget_id="b", now=T0):
    return read(h, "get_budget", {"budget_id": budget_id}, now)["budget"]


def audit(h, **args):
    return read(h, "list_audit", dict({"limit": 1000}, **args))["events"]


def run_one(h, queue="q", cost=0.1, now=T0, worker="w1", **enqueue):
    """Enqueue, fetch and ack one job that cost `cost`; returns its id."""
    jid = h.enqueue(queue=queue, now=now, **enqueue)
    (job,) = h.fetch(now=now, queues=(queue,), worker_id=worker)
    assert job["job_id"] == jid
    h.ok("ack", {"job_id": jid, "usage": {"cost_usd": cost}}, now=now)
    return jid


# ------------------------------------------------------------------ records, views, scopes

def test_set_budget_answers_the_record_and_list_shows_it(h):
    # When a day budget is set / Then its view says what it is and that nothing is spent
    ok = budget(h, limit_usd=5, window="day", note="team llm")
    assert ok["replaced"] is False
    assert (ok["limit_usd"], ok["spent_usd"], ok["reserved_usd"], ok["remaining_usd"]) == (5.0, 0.0, 0.0, 5.0)
    assert (ok["window_start"], ok["reset_at"], ok["exceeded"], ok["held"]) == (DAY0, DAY0 + DAY_MS, False, 0)
    assert [b["id"] for b in read(h, "list_budgets")["budgets"]] == ["b"]
    # And it is in the audit trail
    (event,) = audit(h, kind=["budget_set"])
    assert event["budget_id"] == "b" and event["details"]["limit_usd"] == 5.0 and event["op"] == "set_budget"


def test_replacing_keeps_the_spend_of_the_window_and_delete_forgets(h):
    budget(h, limit_usd=1.0)
    run_one(h, cost=0.4)
    # When the limit is raised / Then the spend stays
    ok = budget(h, limit_usd=2.0)
    assert ok["replaced"] and ok["spent_usd"] == pytest.approx(0.4)
    # When the window changes / Then the spend starts over
    assert budget(h, limit_usd=2.0, window="month")["spent_usd"] == 0.0
    # When it is deleted / Then it is gone, and a second delete is NOT_FOUND naming budget_id
    assert h.ok("delete_budget", {"budget_id": "b"}) == {"held": 0}
    assert read(h, "get_budget", {"budget_id": "b"}) is None
    err = h.run("delete_budget", {"budget_id": "b"})["err"]
    assert (err["code"], err["field"]) == ("NOT_FOUND", "budget_id")
    # And a job runs free again
    run_one(h, cost=5)
    assert h.meta_int(b"budgets") == 0


@pytest.mark.parametrize("scope,target,queue,tags,applies", [
    ("global", None, "ai.chat", {}, True),
    ("namespace", "ai", "ai.chat", {}, True),
    ("namespace", "ai", "ai", {}, True),
    ("namespace", "ai", "aix.chat", {}, False),
    ("queue", "ai.chat", "ai.chat", {}, True),
    ("queue", "ai.chat", "ai.chat2", {}, False),
    ("tag", "team=search", "q", {"team": "search"}, True),
    ("tag", "team=search", "q", {"team": "ads"}, False),
    ("tag", "team=search", "q", {}, False),
])
def test_a_budget_applies_to_the_jobs_of_its_scope_only(h, scope, target, queue, tags, applies):
    # Given a budget of a scope
    args = {"scope": scope, "limit_usd": 10}
    if target:
        args["target"] = target
    budget(h, **args)
    # When a job of some queue and tags spends $1
    run_one(h, queue=queue, cost=1.0, tags=tags)
    # Then the budget was charged exactly when the scope matches
    assert view(h)["spent_usd"] == (1.0 if applies else 0.0)


def test_all_layers_are_charged_and_the_tightest_one_holds(h):
    # Given a generous global budget and a tight queue budget
    budget(h, "all", limit_usd=100)
    budget(h, "chat", scope="queue", target="chat", limit_usd=0.5)
    # When a chat job spends $0.5
    run_one(h, queue="chat", cost=0.5)
    # Then both were charged
    assert view(h, "all")["spent_usd"] == view(h, "chat")["spent_usd"] == 0.5
    # And the next chat job is held by the tight layer, while another queue runs on
    jid = h.enqueue(queue="chat")
    assert h.raw_job(jid)["state"] == HELD and h.raw_job(jid)["hold_reason"] == "budget:chat"
    run_one(h, queue="other", cost=1)
    assert view(h, "all")["spent_usd"] == 1.5


def test_token_limits_count_every_kind_of_token(h):
    budget(h, limit_usd=None, limit_tokens=1000)
    jid = h.enqueue()
    h.fetch_one()
    h.ok("ack", {"job_id": jid, "usage": {"input_tokens": 600, "output_tokens": 300, "cache_read_tokens": 100}})
    v = view(h)
    assert (v["spent_tokens"], v["remaining_tokens"], v["exceeded"]) == (1000, 0, True)
    assert h.state(h.enqueue()) == HELD


# ------------------------------------------------------------------ windows

def test_a_day_window_resets_at_utc_midnight(h):
    budget(h, window="day", limit_usd=1)
    run_one(h, cost=1)
    assert view(h)["exceeded"]
    # At the next UTC day the spend no longer counts, even before any op touches the budget
    tomorrow = DAY0 + DAY_MS
    assert view(h, now=tomorrow - 1)["exceeded"]
    v = view(h, now=tomorrow)
    assert (v["spent_usd"], v["exceeded"], v["window_start"], v["reset_at"]) == (0.0, False, tomorrow,
                                                                              tomorrow + DAY_MS)
    run_one(h, cost=0.25, now=tomorrow)
    assert view(h, now=tomorrow)["spent_usd"] == 0.25


def test_month_windows_follow_the_calendar():
    # 2024-02-15 12:00 UTC: the month started 2024-02-01 and the next starts 2024-03-01 (leap year)
    feb15 = 1_707_998_400_000
    assert _month_start(feb15) == 1_706_745_600_000
    assert _next_month(_month_start(feb15)) == 1_709_251_200_000
    # December rolls into January of the next year
    dec = 1_733_011_200_000  # 2024-12-01
    assert _next_month(dec) == 1_735_689_600_000


def test_a_rolling_window_forgets_hour_by_hour(h):
    budget(h, window="hours", hours=3, limit_usd=1)
    hour0 = T0 - T0 % HOUR_MS
    run_one(h, cost=0.5, now=hour0)
    run_one(h, cost=0.5, now=hour0 + HOUR_MS)
    assert view(h, now=hour0 + HOUR_MS)["exceeded"]
    assert view(h, now=hour0 + HOUR_MS)["reset_at"] == hour0 + 3 * HOUR_MS
    # Three hours after the first spend it drops out; the second stays until its own hour goes
    assert view(h, now=hour0 + 3 * HOUR_MS)["spent_usd"] == 0.5
    assert view(h, now=hour0 + 4 * HOUR_MS)["spent_usd"] == 0.0


def test_a_total_window_never_resets(h):
    budget(h, window="total", limit_usd=1)
    run_one(h, cost=1)
    v = view(h, now=T0 + 400 * DAY_MS)
    assert v["exceeded"] and v["reset_at"] is None


# ------------------------------------------------------------------ enqueue

def test_a_spent_reject_budget_refuses_enqueue_with_retry_after(h):
    budget(h, on_exceed="reject", window="day", limit_usd=1)
    run_one(h, cost=1)
    # When a job is enqueued / Then RESOURCE_EXHAUSTED budget_exceeded, retry after the window's end
    err = h.run("enqueue", {"queue": "q", "payload": 1}, now=T0)["err"]
    assert (err["code"], err["reason"]) == ("RESOURCE_EXHAUSTED", "budget_exceeded")
    assert err["retry_after_ms"] == DAY0 + DAY_MS - T0
    # And a batch with one job in the scope is refused whole
    before = h.job_ids()
    err = h.run("enqueue_batch", {"jobs": [{"queue": "q", "payload": 1}] * 3})["err"]
    assert err["reason"] == "budget_exceeded" and err["message"].startswith("jobs[0]")
    assert h.job_ids() == before


def test_a_reject_budget_leaves_pending_jobs_pending(h):
    budget(h, on_exceed="reject", limit_usd=1, window="total")
    waiting = h.enqueue()
    run_one(h, queue="q2", cost=1)
    # When a worker fetches / Then nothing is leased and the job stays pending
    assert h.fetch() == []
    assert h.state(waiting) == PENDING


def test_a_spent_hold_budget_holds_new_jobs_with_its_time_out(h):
    budget(h, limit_usd=1, hold_timeout_ms=60_000, timeout_action="approve")
    run_one(h, cost=1)
    jid = h.enqueue()
    job = h.raw_job(jid)
    assert (job["state"], job["hold_reason"], job["hold_until"], job["timeout_action"]) == \
        (HELD, "budget:b", T0 + 60_000, "approve")
    assert view(h)["held"] == 1
    (row,) = read(h, "list_held")["jobs"]
    assert (row["job_id"], row["hold_reason"], row["held_at"]) == (jid, "budget:b", T0)
    assert read(h, "list_held", {"budget_id": "b"})["jobs"][0]["job_id"] == jid


def test_an_alert_budget_records_and_enqueues_an_alert_once_per_window(h):
    budget(h, on_exceed="alert", limit_usd=0.5, alert_queue="alerts", window="day")
    # When two jobs spend past the limit / Then both ran, and one alert job carries the figures
    run_one(h, cost=0.3)
    run_one(h, cost=0.3)
    run_one(h, cost=0.3)
    alerts = h.fetch(queues=("alerts",), count=10)
    assert len(alerts) == 1
    payload = alerts[0]["payload"]
    assert (payload["budget_id"], payload["limit_usd"], payload["spent_usd"]) == ("b", 0.5, pytest.approx(0.6))
    (crossing,) = audit(h, kind=["budget_exceeded"])
    assert crossing["budget_id"] == "b" and crossing["who"] == "server"
    # The next day it may alert again
    run_one(h, cost=0.6, now=DAY0 + DAY_MS)
    assert len(h.fetch(queues=("alerts",), count=10, now=DAY0 + DAY_MS)) == 1


# ------------------------------------------------------------------ reservation

def test_fifty_workers_on_a_dollar_overshoot_by_at_most_one_job(h):
    # Given a $1 budget and 60 jobs that each cost $0.10, with that estimate
    budget(h, limit_usd=1.0, window="total")
    for _ in range(60):
        h.enqueue(estimate_usd=0.10)
    # When 50 workers fetch at once / Then only what fits in $1 is leased
    leased = [j for w in range(50) for j in h.fetch(worker_id=f"w{w}")]
    assert len(leased) == 10
    assert view(h)["reserved_usd"] == pytest.approx(1.0) and view(h)["running"] == 10
    # When they finish at $0.10 each and the workers ask again, round after round
    while leased:
        for job in leased:
            h.ok("ack", {"job_id": job["job_id"], "usage": {"cost_usd": 0.10}})
        leased = [j for w in range(50) for j in h.fetch(worker_id=f"w{w}")]
    # Then spend stayed within $1 + one job, and the rest are held, not run
    v = view(h)
    assert v["spent_usd"] <= 1.10 and v["reserved_usd"] == 0 and v["running"] == 0
    counts = h.counts()
    assert counts[COMPLETED] == 10 and counts[HELD] == 50 and counts[ACTIVE] == 0
    h.assert_consistent()


def test_without_an_estimate_one_job_probes_the_cost_first(h):
    budget(h, limit_usd=1.0, window="total")
    for _ in range(20):
        h.enqueue()
    # With no estimate and no history, one job of unknown cost runs at a time
    first = [j for w in range(5) for j in h.fetch(worker_id=f"w{w}")]
    assert len(first) == 1
    h.ok("ack", {"job_id": first[0]["job_id"], "usage": {"cost_usd": 0.25}})
    assert view(h)["avg_attempt_usd"] == 0.25
    # Then the learnt cost per attempt is the estimate: 3 more fit in the remaining $0.75
    second = [j for w in range(5) for j in h.fetch(worker_id=f"w{w}")]
    assert len(second) == 3 and view(h)["reserved_usd"] == pytest.approx(0.75)


def test_spend_while_running_uses_up_the_reservation_first(h):
    budget(h, limit_usd=1.0)
    jid = h.enqueue(estimate_usd=0.4)
    h.fetch_one()
    h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {"usage": {"cost_usd": 0.3}}}})
    v = view(h)
    assert (v["spent_usd"], v["reserved_usd"]) == (pytest.approx(0.3), pytest.approx(0.1))
    # The attempt's end releases what is left
    h.ok("ack", {"job_id": jid, "usage": {"cost_usd": 0.35}})
    v = view(h)
    assert (v["spent_usd"], v["reserved_usd"], v["running"]) == (pytest.approx(0.35), 0, 0)


@pytest.mark.parametrize("end", ["fail", "lease expiry", "delete"])
def test_every_end_of_an_attempt_releases_its_reservation(h, end):
    budget(h, limit_usd=1.0)
    jid = h.enqueue(estimate_usd=0.5)
    job = h.fetch_one()
    assert view(h)["reserved_usd"] == 0.5
    if end == "fail":
        h.ok("fail", {"job_id": jid, "error": "x"})
    elif end == "lease expiry":
        h.tick(now=T0 + job["lease_ms"])
    else:
        h.ok("delete_job", {"job_id": jid})
    v = view(h)
    assert (v["reserved_usd"], v["running"]) == (0, 0)


def test_a_job_cap_holds_the_job_that_spent_it(h):
    # Given a job with its own $0.5 cap that spent it in a first attempt that failed
    jid = h.enqueue(budget_usd=0.5)
    h.fetch_one()
    h.ok("fail", {"job_id": jid, "error": "x", "usage": {"cost_usd": 0.5}})
    # When it is due again and fetched / Then it is held for its own cap, not run
    h.tick(now=T0 + 10 * 60_000)
    assert h.fetch(now=T0 + 10 * 60_000) == []
    assert (h.state(jid), h.raw_job(jid)["hold_reason"]) == (HELD, "budget:job")


# ------------------------------------------------------------------ pause, not kill

def test_a_running_job_whose_budget_runs_out_is_paused_with_its_checkpoint(h):
    budget(h, limit_usd=1.0)
    jid = h.enqueue(max_retries=0)
    h.fetch_one()
    # When a heartbeat reports spend that reaches the limit / Then budget_exceeded, lease still extended
    beat = h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {"usage": {"cost_usd": 1.0},
                                                                 "checkpoint": {"step": 3}}}})
    assert beat["jobs"][jid] == {"status": "ok", "budget_exceeded": True}
    # When the worker saves its checkpoint and fails the attempt
    ok = h.ok("fail", {"job_id": jid, "error": "budget exceeded", "checkpoint": {"step": 4}})
    # Then the job is held, checkpoint kept, and the paused attempt did not spend its only try
    assert (ok["state"], ok["attempts_remaining"]) == (HELD, 1)
    job = h.raw_job(jid)
    assert (job["state"], job["hold_reason"], job["checkpoint"]) == (HELD, "budget:b", {"step": 4})
    # When a person approves it / Then it runs again from that checkpoint, past the budget this once
    assert h.ok("approve_job", {"job_id": jid, "note": "worth it", "actor": "ana"})["state"] == PENDING
    again = h.fetch_one()
    assert (again["job_id"], again["checkpoint"], again["attempt"]) == (jid, {"step": 4}, 2)
    beat = h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {"usage": {"cost_usd": 0.2}}}})
    assert beat["jobs"][jid]["budget_exceeded"] is False
    assert h.ok("ack", {"job_id": jid})["state"] == COMPLETED
    h.assert_consistent()


def test_an_ack_after_budget_exceeded_still_completes(h):
    budget(h, limit_usd=1.0)
    jid = h.enqueue()
    h.fetch_one()
    h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {"usage": {"cost_usd": 1.5}}}})
    assert h.ok("ack", {"job_id": jid})["state"] == COMPLETED


def test_a_paused_job_whose_worker_vanished_is_held_at_lease_expiry(h):
    budget(h, limit_usd=1.0)
    jid = h.enqueue()
    job = h.fetch_one()
    h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {"usage": {"cost_usd": 1.0}, "checkpoint": 7}}})
    h.tick(now=T0 + job["lease_ms"])
    assert (h.state(jid), h.raw_job(jid)["checkpoint"]) == (HELD, 7)


# ------------------------------------------------------------------ approve, reject, time-outs

def test_approve_with_extend_raises_the_budget_once(h):
    budget(h, limit_usd=1.0)
    run_one(h, cost=1.0)
    held = [h.enqueue() for _ in range(3)]
    ok = h.ok("approve_job", {"job_ids": held, "extend": {"usd": 2.0}, "note": "more"})
    assert ok == {"affected": 3, "errors": []}
    assert view(h)["limit_usd"] == 3.0  # once per budget, not per job
    (ext,) = audit(h, kind=["budget_extended"])
    assert ext["details"]["usd"] == 2.0 and ext["note"] == "more"
    assert all(h.state(j) == PENDING for j in held)


def test_approve_refuses_what_is_not_held_and_extend_without_a_budget(h):
    pending = h.enqueue()
    held = h.enqueue(hold=True, hold_reason="review")
    err = h.run("approve_job", {"job_id": pending})["err"]
    assert (err["code"], err["reason"], err["field"]) == ("FAILED_PRECONDITION", "wrong_state", "job_id")
    err = h.run("approve_job", {"job_id": "job_nope"})["err"]
    assert err["code"] == "NOT_FOUND"
    err = h.run("approve_job", {"job_id": held, "extend": {"usd": 1}})["err"]
    assert (err["reason"], err["field"]) == ("no_budget_hold", "extend")
    assert h.state(held) == HELD  # nothing changed
    # A list answers per job and does the rest
    ok = h.ok("approve_job", {"job_ids": [pending, held, "job_nope"]})
    assert ok["affected"] == 1 and [e["job_id"] for e in ok["errors"]] == [pending, "job_nope"]
    assert h.state(held) == PENDING


def test_reject_cancels_with_the_note_as_the_reason(h):
    jid = h.enqueue(hold=True)
    ok = h.ok("reject_job", {"job_id": jid, "note": "too costly", "actor": "bob"})
    assert ok["state"] == CANCELLED
    job = h.raw_job(jid)
    assert (job["state"], job["last_error"]) == (CANCELLED, "rejected: too costly")
    kinds = [(e["kind"], e.get("who")) for e in audit(h, job_id=jid)]
    assert kinds == [("released", "bob"), ("rejected", "bob"), ("held", "server")]


@pytest.mark.parametrize("action,state", [("approve", PENDING), ("reject", CANCELLED)])
def test_a_hold_time_out_acts_as_told(h, action, state):
    jid = h.enqueue(hold=True, hold_timeout_ms=5_000, timeout_action=action)
    assert reads.next_deadline(h.store.begin(), h.dbs, 300_000) == T0 + 5_000
    assert h.tick(now=T0 + 4_999).get("released") is None
    assert h.tick(now=T0 + 5_000)["released"] == 1
    assert h.state(jid) == state
    kinds = [e["kind"] for e in audit(h, job_id=jid)]
    assert kinds[:2] == ["released", "approved" if action == "approve" else "rejected"]


def test_a_raised_budget_releases_its_held_jobs(h):
    budget(h, limit_usd=1.0)
    run_one(h, cost=1.0)
    held = h.enqueue()
    # When the limit is raised past the spend / Then the next tick sends its held jobs back
    budget(h, limit_usd=5.0)
    assert h.tick(now=T0 + 1)["released"] == 1
    assert h.state(held) == PENDING


def test_deleting_a_budget_leaves_its_held_jobs_held(h):
    budget(h, limit_usd=0)
    held = h.enqueue()
    assert h.ok("delete_budget", {"budget_id": "b"}) == {"held": 1}
    h.tick(now=T0 + DAY_MS)
    assert h.state(held) == HELD
    assert h.ok("approve_job", {"job_id": held})["state"] == PENDING
    h.assert_consistent()


# ------------------------------------------------------------------ the audit trail

def test_the_audit_trail_pages_newest_first_and_filters(h):
    h.ok("set_price", {"model": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 2})
    ids = [h.enqueue(hold=True) for _ in range(5)]
    for jid in ids:
        h.ok("approve_job", {"job_id": jid})
    everything = audit(h)
    assert [e["seq"] for e in everything] == sorted((e["seq"] for e in everything), reverse=True)
    assert everything[-1]["kind"] == "price_set"
    page = read(h, "list_audit", {"limit": 4})
    assert page["has_more"] and len(page["events"]) == 4
    rest = read(h, "list_audit", {"limit": 1000, "before": page["cursor"]})["events"]
    assert page["events"] + rest == everything
    assert {e["kind"] for e in audit(h, kind=["approved"])} == {"approved"}
    assert len(audit(h, kind=["approved"])) == 5
    assert [e["kind"] for e in audit(h, job_id=ids[0])] == ["released", "approved", "held"]
    assert audit(h, since=T0 + 1) == []
    # get_job shows the job's own entries, oldest first
    assert [e["kind"] for e in h.job(ids[0])["audit"]] == ["held", "approved", "released"]


def test_who_is_the_actor_arg_else_the_client_key_the_gateway_put_in(h):
    jid = h.enqueue(hold=True)
    op = h.op("approve_job", {"job_id": jid})
    op["who"] = "client-7"
    h.apply([op])
    assert {e["who"] for e in audit(h, job_id=jid) if e["kind"] != "held"} == {"client-7"}


# ------------------------------------------------------------------ determinism

def test_two_stores_fed_the_same_ops_end_identical(tmp_path):
    # The replicated guarantee: spend counters, reservations and audit records are a pure
    # function of the op log.
    def script(h):
        budget(h, limit_usd=0.5, window="hours", hours=2)
        budget(h, "tag", scope="tag", target="team=a", limit_usd=0.3, on_exceed="reject")
        for i in range(12):
            h.enqueue(tags={"team": "a" if i % 2 else "b"}, estimate_usd=0.1)
        for step in range(6):
            for job in h.fetch(worker_id=f"w{step}", count=3, now=T0 + step * 1000):
                h.ok("ack", {"job_id": job["job_id"], "usage": {"cost_usd": 0.1}}, now=T0 + step * 1000)
        h.tick(now=T0 + 3 * HOUR_MS)
        return h.digest()

    one, two = Harness(str(tmp_path / "a")), Harness(str(tmp_path / "b"))
    try:
        assert script(one) == script(two)
        one.assert_consistent()
    finally:
        one.close()
        two.close()
