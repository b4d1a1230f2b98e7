"""The attempt time limit (`timeout_ms` on enqueue) in the pure state machine."""
from __future__ import annotations

import pytest

from jobbie.storage.states import ACTIVE, DEAD, PENDING, RETRYING
from jobbie.transport.errors import InvalidArgument
from jobbie.transport.ops import validate

from .conftest import T0


def test_the_lease_ends_at_started_at_plus_timeout_whatever_the_heartbeats(h):
    # Given a job with a 2 s time limit fetched with a 60 s lease
    jid = h.enqueue(timeout_ms=2_000, max_retries=1, backoff={"strategy": "fixed", "base_ms": 100, "max_ms": 100})
    assert h.raw_job(jid)["timeout_ms"] == 2_000
    job = h.fetch_one(lease_ms=60_000)
    # Then the fetched job tells the worker its limit, and the lease ends at the deadline
    assert job["timeout_ms"] == 2_000
    assert h.raw_job(jid)["lease_expires_at"] == T0 + 2_000
    # When heartbeats come in before the deadline
    for at in (500, 1_500, 1_999):
        answer = h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {"attempt": 1}}}, now=T0 + at)
        assert answer["jobs"][jid]["status"] == "ok"
    # Then none of them moves the lease past it
    assert h.raw_job(jid)["lease_expires_at"] == T0 + 2_000
    assert h.tick(now=T0 + 1_999)["reclaimed"] == 0 and h.state(jid) == ACTIVE
    # When the deadline passes / Then the attempt counts as failed with a timeout error
    assert h.tick(now=T0 + 2_000)["reclaimed"] == 1
    rec = h.job(jid)
    assert rec["last_error"] == "timeout after 2000 ms" and rec["errors"][0]["error"] == "timeout after 2000 ms"
    assert rec["state"] == PENDING and rec["attempt"] == 1
    # And the next attempt gets a fresh deadline from its own start
    h.fetch_one(now=T0 + 10_000, lease_ms=1_000)
    assert h.raw_job(jid)["attempt_deadline"] == T0 + 12_000
    assert h.raw_job(jid)["lease_expires_at"] == T0 + 11_000  # the shorter lease still ends first
    h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {}}}, now=T0 + 11_500)
    assert h.raw_job(jid)["lease_expires_at"] == T0 + 12_000
    h.tick(now=T0 + 12_000)
    assert (h.state(jid), h.raw_job(jid)["last_error"]) == (DEAD, "timeout after 2000 ms")
    h.assert_consistent()


def test_a_job_without_a_limit_keeps_plain_leases_and_lease_expired(h):
    jid = h.enqueue()
    job = h.fetch_one(lease_ms=5_000)
    assert job["timeout_ms"] is None and "attempt_deadline" not in h.raw_job(jid)
    h.ok("heartbeat", {"worker_id": "w1", "jobs": {jid: {}}}, now=T0 + 4_000)
    assert h.raw_job(jid)["lease_expires_at"] == T0 + 9_000
    h.tick(now=T0 + 9_000)
    assert h.raw_job(jid)["last_error"] == "lease expired"


def test_a_fail_before_the_deadline_is_an_ordinary_failure(h):
    jid = h.enqueue(timeout_ms=2_000)
    h.fetch_one()
    h.ok("fail", {"job_id": jid, "attempt": 1, "error": "timeout after 1.5 s"}, now=T0 + 1_500)
    assert (h.state(jid), h.raw_job(jid)["last_error"]) == (RETRYING, "timeout after 1.5 s")


def test_with_an_agent_iteration_timeout_the_smaller_limit_applies(h):
    jid = h.enqueue(timeout_ms=3_000, agent={"iteration_timeout": 10_000})
    assert h.fetch_one(lease_ms=60_000)["timeout_ms"] == 3_000
    assert h.raw_job(jid)["lease_expires_at"] == T0 + 3_000


@pytest.mark.parametrize("value", [99, 365 * 86_400_000 + 1, 1.5, "1s"])
def test_timeout_ms_out_of_bounds_is_refused_naming_the_field(value):
    with pytest.raises(InvalidArgument) as exc:
        validate("enqueue", {"queue": "q", "payload": 1, "timeout_ms": value})
    assert exc.value.field == "timeout_ms"
    with pytest.raises(InvalidArgument) as exc:
        validate("enqueue_batch", {"jobs": [{"queue": "q", "payload": 1, "timeout_ms": value}]})
    assert exc.value.field == "jobs[0].timeout_ms"
