"""ack_batch: many acks and fails in one op, each applied as if it came alone."""
from __future__ import annotations

import pytest

from jobbie.storage.states import ACTIVE, COMPLETED, RETRYING
from jobbie.transport.errors import InvalidArgument
from jobbie.transport.ops import validate

T0 = 1_700_000_000_000


def active_jobs(h, n):
    ids = [h.enqueue(now=T0) for _ in range(n)]
    jobs = h.fetch(now=T0, count=n)
    assert sorted(j["job_id"] for j in jobs) == sorted(ids)
    return ids


def test_acks_and_fails_apply_one_by_one_and_answer_in_order(h):
    # Given four active jobs
    a, b, c, d = active_jobs(h, 4)
    # When one frame acks two, fails one, and acks one with a stale attempt
    result = h.run("ack_batch", {
        "acks": [{"job_id": a, "attempt": 1, "result": {"n": 1}, "usage": {"cost_usd": 0.25}},
                 {"job_id": c, "attempt": 7},
                 {"job_id": b, "attempt": 1, "result": "two"}],
        "fails": [{"job_id": d, "attempt": 1, "error": "boom"}]}, now=T0 + 10)
    # Then each answer is what the op alone would have answered, in its place
    acks, fails = result["ok"]["acks"], result["ok"]["fails"]
    assert acks[0] == {"ok": {"state": COMPLETED}} and acks[2] == {"ok": {"state": COMPLETED}}
    assert acks[1]["err"]["reason"] == "lease_lost"
    assert fails[0]["ok"]["state"] == RETRYING
    # And the refused one changed nothing while the others were applied
    assert [h.state(j) for j in (a, b, c, d)] == [COMPLETED, COMPLETED, ACTIVE, RETRYING]
    assert h.raw_job(a)["result"] == {"n": 1} and h.raw_job(a)["usage_total"]["cost_usd"] == 0.25
    assert h.raw_job(d)["last_error"] == "boom"
    assert h.counts() == {**{s: 0 for s in h.counts()}, "completed": 2, "active": 1, "retrying": 1}


def test_the_same_outcome_as_separate_ops(h, make_harness):
    # Given the same jobs in two stores
    other = make_harness()
    ids = active_jobs(h, 3)
    assert active_jobs(other, 3) == ids
    items = [{"job_id": j, "attempt": 1, "result": i} for i, j in enumerate(ids)]
    # When one store gets one ack_batch and the other three acks
    h.run("ack_batch", {"acks": items}, now=T0 + 5)
    for item in items:
        other.run("ack", item, now=T0 + 5)
    # Then both hold the same jobs
    assert [h.raw_job(j) for j in ids] == [other.raw_job(j) for j in ids]
    assert h.counts() == other.counts()


def test_a_retry_with_the_same_request_id_answers_the_first_outcome(h):
    (a,) = active_jobs(h, 1)
    first = h.run("ack_batch", {"acks": [{"job_id": a, "attempt": 1}], "request_id": "r1"}, now=T0 + 1)
    again = h.run("ack_batch", {"acks": [{"job_id": a, "attempt": 1}], "request_id": "r1"}, now=T0 + 2)
    assert first == again == {"ok": {"acks": [{"ok": {"state": COMPLETED}}], "fails": []}}


@pytest.mark.parametrize("args,field,reason", [
    ({}, "acks", "missing_field"),
    ({"acks": []}, "acks", "missing_field"),
    ({"acks": [{"job_id": f"j{i}"} for i in range(1001)]}, "acks", "too_large"),
    ({"acks": ["j1"]}, "acks[0]", "wrong_type"),
    ({"acks": [{"attempt": 1}]}, "acks[0].job_id", "missing_field"),
    ({"acks": [{"job_id": "j1", "request_id": "x"}]}, "acks[0].request_id", "unknown_field"),
    ({"acks": [{"job_id": "j1", "hold_reason": "x"}]}, "acks[0].hold_reason", "conflicting_fields"),
    ({"fails": [{"job_id": "j1", "error": 5}]}, "fails[0].error", "wrong_type"),
    ({"acks": [{"job_id": "j1"}], "fails": [{"job_id": "j2", "attempt": 0}]}, "fails[0].attempt", "out_of_range"),
])
def test_bad_items_refuse_the_whole_request_naming_the_field(args, field, reason):
    with pytest.raises(InvalidArgument) as caught:
        validate("ack_batch", args)
    assert (caught.value.field, caught.value.reason) == (field, reason)
