"""The transition table of storage/states.py, checked against the real state machine.

Every (from, to, event) row of TRANSITIONS is driven through apply_batch on a real LMDB
store; every pair that is not in the table is refused by `Apply.move`.
"""
from __future__ import annotations

import itertools

import pytest

from jobbie.storage.machine import Apply, Changes
from jobbie.storage.states import (ACTIVE, CANCELLED, COMPLETED, DEAD, HELD, PENDING, RETRYING, SCHEDULED,
                                   STATES, TERMINAL, TRANSITIONS, allowed)
from jobbie.transport.errors import InvariantViolation

#: Start of the state clock; the same as Harness.T0 in conftest.py.
T0 = 1_700_000_000_000


# ------------------------------------------------------------------------------- the table itself

def test_allowed_is_exactly_the_table():
    # Given every conceivable (from, to) pair
    pairs = itertools.product((None,) + STATES, STATES)
    # When allowed() judges each / Then it says yes exactly for the table's keys
    assert {p for p in pairs if allowed(*p)} == set(TRANSITIONS)


def test_table_names_only_known_states_and_has_no_self_moves():
    # Given the table / Then every row names known states, a real move and its events
    for (src, dst), events in TRANSITIONS.items():
        assert src is None or src in STATES
        assert dst in STATES
        assert src != dst
        assert events and all(isinstance(e, str) and e for e in events)


def test_every_state_is_reachable_from_creation():
    # Given the moves of the table as a graph
    # When we walk it from "no job yet"
    seen, frontier = set(), {None}
    while frontier:
        frontier = {dst for (src, dst) in TRANSITIONS if src in frontier} - seen
        seen |= frontier
    # Then every state can be reached
    assert seen == set(STATES)


def test_terminal_states_only_leave_through_retry_job():
    # Given the table / Then a finished job leaves only to pending, by retry_job
    for (src, dst), events in TRANSITIONS.items():
        if src in TERMINAL:
            assert (dst, events) == (PENDING, ("retry_job",))


def test_every_non_terminal_state_has_a_way_out():
    # Given the table / Then no unfinished state is a dead end
    for state in set(STATES) - TERMINAL:
        assert any(src == state for (src, _) in TRANSITIONS), state


# ------------------------------------------------------------------------------- drivers

def bring(h, state, **kw) -> str:
    """Create a job and bring it into `state` at time T0; returns its id."""
    t = h.T0
    if state == PENDING:
        return h.enqueue(now=t, **kw)
    if state == SCHEDULED:
        kw.setdefault("delay_ms", 10_000)
        return h.enqueue(now=t, **kw)
    if state == HELD:
        return h.enqueue(now=t, hold=True, **kw)
    if state == ACTIVE:
        jid = h.enqueue(now=t, **kw)
        assert h.fetch_one(now=t)["job_id"] == jid
        return jid
    if state == RETRYING:
        jid = bring(h, ACTIVE, **kw)
        assert h.ok("fail", {"job_id": jid, "error": "boom"}, now=t)["state"] == RETRYING
        return jid
    if state == DEAD:
        kw.setdefault("max_retries", 0)
        jid = bring(h, ACTIVE, **kw)
        assert h.ok("fail", {"job_id": jid, "error": "boom"}, now=t)["state"] == DEAD
        return jid
    if state == CANCELLED:
        jid = bring(h, PENDING, **kw)
        assert h.ok("cancel_job", {"job_id": jid}, now=t)["state"] == CANCELLED
        return jid
    if state == COMPLETED:
        jid = bring(h, ACTIVE, **kw)
        assert h.ok("ack", {"job_id": jid}, now=t)["state"] == COMPLETED
        return jid
    raise AssertionError(state)


def _tick_at(field):
    """Tick exactly at the job's `field` time."""
    def act(h, jid):
        return jid, h.run("tick", {"limit": 1000}, now=h.raw_job(jid)[field])
    return act


def _client(op, at=None, **extra):
    """Call `op` on the job at T0, or at the job's `at` field time."""
    def act(h, jid):
        now = h.T0 if at is None else h.raw_job(jid)[at]
        return jid, h.run(op, dict(job_id=jid, **extra), now=now)
    return act


def _create(**kw):
    def act(h, jid):
        assert jid is None
        result = h.run("enqueue", dict(queue="q", payload=1, **kw), now=h.T0)
        return result.get("ok", {}).get("job_id"), result
    return act


def _fetch(h, jid):
    result = h.run("fetch", {"queues": ["q"], "worker_id": "w1"}, now=h.T0)
    assert [j["job_id"] for j in result["ok"]["jobs"]] == [jid]
    return jid, result


def _cancel_then(act):
    """Request the cancel of the active job, then `act`."""
    def run(h, jid):
        assert h.ok("cancel_job", {"job_id": jid}, now=h.T0) == {"state": ACTIVE, "cancel_requested": True}
        return act(h, jid)
    return run


def _budget(h, **kw):
    args = dict(budget_id="b", scope="global", limit_usd=0, on_exceed="hold")
    args.update(kw)
    h.ok("set_budget", args, now=h.T0)


def _enqueue_under_spent_budget(h, jid):
    _budget(h)
    return _create()(h, jid)


def _fetch_under_spent_budget(h, jid):
    _budget(h)
    result = h.run("fetch", {"queues": ["q"], "worker_id": "w1"}, now=h.T0)
    assert result["ok"]["jobs"] == []
    return jid, result


def _spent_then(act):
    """The active job reports more than its own cap on a heartbeat (budget_exceeded), then `act`."""
    def run(h, jid):
        beat = h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {"usage": {"cost_usd": 1.0}}}}, now=h.T0)
        assert beat["jobs"][jid] == {"status": "ok", "budget_exceeded": True}
        return act(h, jid)
    return run


def _budget_window_reset(h, jid):
    """A day budget spent by a job of another queue holds a new job of q; the next day releases it."""
    h.ok("delete_job", {"job_id": jid}, now=h.T0)
    _budget(h, limit_usd=1.0, window="day")
    side = h.enqueue(now=h.T0, queue="side")
    h.fetch_one(now=h.T0, queues=("side",))
    h.ok("ack", {"job_id": side, "usage": {"cost_usd": 1.0}}, now=h.T0)
    held = h.enqueue(now=h.T0)
    assert h.state(held) == HELD and h.raw_job(held)["hold_reason"] == "budget:b"
    next_day = h.T0 - h.T0 % 86_400_000 + 86_400_000
    return held, h.run("tick", {"limit": 1000}, now=next_day)


PROMOTED = {"promoted": 1, "reclaimed": 0, "expired": 0}
RELEASED = {"promoted": 0, "reclaimed": 0, "expired": 0, "released": 1}
RECLAIMED = {"promoted": 0, "reclaimed": 1, "expired": 0}
EXPIRED = {"promoted": 0, "reclaimed": 0, "expired": 1}

#: event text of TRANSITIONS -> variants (label, enqueue options for bring(), action, tick result or None).
#: An action is act(h, job_id) -> (job_id, result).
DRIVERS = {
    "enqueue": [("", {}, _create(), None)],
    "enqueue with run_at/delay_ms": [("run_at", {}, _create(run_at=T0 + 5_000), None),
                                     ("delay_ms", {}, _create(delay_ms=5_000), None)],
    "enqueue with hold": [("", {}, _create(hold=True), None)],
    "tick: run_at reached": [("", {}, _tick_at("run_at"), PROMOTED)],
    "tick: backoff elapsed": [("", {}, _tick_at("run_at"), PROMOTED)],
    "retry_job": [("", {}, _client("retry_job"), None)],
    "fetch": [("", {}, _fetch, None)],
    "ack": [("", {}, _client("ack", attempt=1), None)],
    "fail with attempts left": [("", {}, _client("fail", attempt=1, error="boom"), None)],
    "fail with attempts spent or past its TTL": [
        ("attempts-spent", {"max_retries": 0}, _client("fail", attempt=1, error="boom"), None),
        ("past-ttl", {"expire_after_ms": 500}, _client("fail", at="expire_at", attempt=1, error="boom"), None)],
    "tick: lease expired with attempts spent or past its TTL": [
        ("attempts-spent", {"max_retries": 0}, _tick_at("lease_expires_at"), RECLAIMED),
        ("past-ttl", {"expire_after_ms": 500}, _tick_at("lease_expires_at"), RECLAIMED)],
    "tick: lease expired": [("", {}, _tick_at("lease_expires_at"), RECLAIMED)],
    "fail after cancel_job": [("", {}, _cancel_then(_client("fail", error="boom")), None)],
    "tick: lease expired after cancel_job": [("", {}, _cancel_then(_tick_at("lease_expires_at")), RECLAIMED)],
    "cancel_job": [("", {}, _client("cancel_job"), None)],
    # expire before the job would be promoted, so the move really starts in `from`
    "tick: expired": [("", {"expire_after_ms": 500}, _tick_at("expire_at"), EXPIRED)],
    "enqueue while a hold budget is spent": [("", {}, _enqueue_under_spent_budget, None)],
    "reject_job": [("", {}, _client("reject_job", note="no"), None)],
    "approve_job": [("", {}, _client("approve_job", note="ok"), None)],
    "tick: hold timed out (reject)": [("", {"hold_timeout_ms": 1000, "timeout_action": "reject"},
                                       _tick_at("hold_until"), RELEASED)],
    "tick: hold timed out (approve)": [("", {"hold_timeout_ms": 1000, "timeout_action": "approve"},
                                        _tick_at("hold_until"), RELEASED)],
    "tick: budget window reset": [("", {}, _budget_window_reset, RELEASED)],
    "fetch: a budget is spent": [("", {}, _fetch_under_spent_budget, None)],
    "ack with agent_status hold": [("", {}, _client("ack", attempt=1, agent_status="hold", hold_reason="review"),
                                    None)],
    "ack with agent_status continue": [("", {"agent": {"max_iterations": 5}},
                                        _client("ack", attempt=1, agent_status="continue", checkpoint={"i": 1}),
                                        None)],
    "ack with agent_status continue: guardrail": [("", {"agent": {"max_iterations": 1}},
                                                   _client("ack", attempt=1, agent_status="continue"), None)],
    "reject_job with revise": [("", {"agent": {}}, _client("reject_job", revise=True, note="shorter"), None)],
    "fail after budget_exceeded": [("", {"budget_usd": 0.5}, _spent_then(_client("fail", error="paused")), None)],
    "tick: lease expired after budget_exceeded": [("", {"budget_usd": 0.5}, _spent_then(_tick_at("lease_expires_at")),
                                                   RECLAIMED)],
}

KNOWN_BUGS: dict = {}


def _cases():
    for (src, dst), events in TRANSITIONS.items():
        for event in events:
            marks = ()
            if (src, dst, event) in KNOWN_BUGS:
                marks = pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(src, dst, event)])
            # an event without a driver still gets a case, which fails and names it
            for variant in range(max(1, len(DRIVERS.get(event, ())))):
                label = DRIVERS[event][variant][0] if event in DRIVERS else "no-driver"
                case_id = f"{src}->{dst}:{event}" + (f":{label}" if label else "")
                yield pytest.param(src, dst, event, variant, id=case_id, marks=marks)


@pytest.mark.parametrize("src,dst,event,variant", list(_cases()))
def test_every_transition_is_reachable(h, src, dst, event, variant):
    assert event in DRIVERS, f"TRANSITIONS names event {event!r} that no test drives"
    _, options, act, tick_result = DRIVERS[event][variant]
    # Given a job in `src` (or none yet)
    assert h.T0 == T0
    jid = None if src is None else bring(h, src, **options)
    if jid is not None:
        assert h.state(jid) == src
    # When the event happens
    jid, result = act(h, jid)
    # Then the op succeeded and the job is in `dst`, with indexes and counts in step
    assert "ok" in result, result
    if tick_result is not None:
        assert result["ok"] == tick_result
    assert h.state(jid) == dst
    assert h.counts("q")[dst] == 1
    h.assert_consistent()


def test_every_driver_is_used_by_the_table():
    # Given the drivers above / Then each drives an event the table names (no stale drivers)
    used = {e for events in TRANSITIONS.values() for e in events}
    assert set(DRIVERS) == used


# ------------------------------------------------------------------------------- illegal moves

ILLEGAL = [(src, dst) for src in (None,) + STATES for dst in STATES if (src, dst) not in TRANSITIONS]


@pytest.mark.parametrize("src,dst", ILLEGAL, ids=[f"{s}->{d}" for s, d in ILLEGAL])
def test_illegal_move_raises_invariant_violation(store, src, dst):
    # Given a job record in `src`
    job = {"id": "job_x", "queue": "q", "state": src, "priority": "normal", "seq": 1, "run_at": T0,
           "lease_expires_at": T0, "expire_at": None, "unique_key": None, "batch_id": None}
    with store.begin(write=True) as txn:
        a = Apply(txn, store.dbs, T0, Changes())
        # When it is moved to a state the table does not allow / Then the move is refused as a bug
        with pytest.raises(InvariantViolation, match="not a legal move"):
            a.move(job, dst, "test")
        # and nothing was changed on the way
        assert job["state"] == src
        assert list(txn.cursor(db=store.dbs["queues"])) == []
        txn.abort()


def test_legal_move_through_apply_keeps_index_and_counts(store):
    # Given a job record about to be created
    job = {"id": "job_x", "queue": "q", "state": None, "priority": "high", "seq": 0, "run_at": T0,
           "lease_expires_at": None, "expire_at": None, "unique_key": None, "batch_id": None}
    with store.begin(write=True) as txn:
        changes = Changes()
        a = Apply(txn, store.dbs, T0, changes)
        # When Apply.move makes it pending
        a.move(job, PENDING, "test")
        # Then it got a sequence number, one pending key, a count, and a wake-up for its queue
        assert job["state"] == PENDING and job["seq"] == 1
        assert [v for _, v in txn.cursor(db=store.dbs["pending"])] == [b"job_x"]
        assert changes.woken == {"q": 1}
        txn.abort()
