"""Usage accounting (storage/usage.py) on a real LMDB store, and the usage actor's core
(actors/usage/core.py) reading those records: prices, cost sources, cumulative heartbeat
reports, saturation, unmetered counting, records that outlive jobs, exact rollups.
"""
from __future__ import annotations

import pytest

from jobbie.actors.usage.core import HOUR_MS, UsageCore
from jobbie.storage import keys as K
from jobbie.storage.usage import INT64_MAX
from jobbie.transport.codec import decode_trusted

from .conftest import T0


def prices(h) -> list:
    from jobbie.storage import reads
    with h.store.begin() as txn:
        return reads.READERS["list_prices"](txn, h.dbs, {})["prices"]


def usage_records(h) -> list:
    with h.store.begin() as txn:
        return [decode_trusted(v) for _, v in txn.cursor(db=h.dbs["usage"])]


def active(h, queue="ai.chat", tags=None, now=T0):
    jid = h.enqueue(queue=queue, tags=tags, now=now) if tags else h.enqueue(queue=queue, now=now)
    (job,) = h.run("fetch", {"queues": [queue], "worker_id": "w1"}, now=now)["ok"]["jobs"]
    assert job["job_id"] == jid
    return jid


class LmdbSource:
    """The usage actor's source over the harness's store (what actors/usage/actor.py reads)."""

    def __init__(self, h):
        self.h = h

    def read_after(self, seq, limit):
        from jobbie.storage.machine import applied_index
        with self.h.store.begin() as txn:
            cur = txn.cursor(db=self.h.dbs["usage_seq"])
            rows, done = [], True
            if cur.set_range(K.u64(seq + 1)):
                for key, value in cur:
                    if len(rows) >= limit:
                        done = False
                        break
                    rows.append((K.read_u64(key), bytes(value),
                                 decode_trusted(txn.get(value, db=self.h.dbs["usage"]))))
            return rows, applied_index(txn, self.h.dbs), done


def caught_up(core, now=0.0):
    core.behind = True  # as a change frame or raft's status report would say
    for _ in range(1000):
        core.step(now)
        if not core.behind:
            return core
    raise AssertionError("never caught up")


# ------------------------------------------------------------------ prices and cost sources

def test_price_table_prices_a_report_and_keeps_the_reported_cost(h):
    # Given a price for model m (any provider) and an active job
    assert h.run("set_price", {"model": "m", "input_usd_per_mtok": 2, "output_usd_per_mtok": 8,
                               "cache_read_usd_per_mtok": 0.5})["ok"]["replaced"] is False
    jid = active(h)
    # When it is acked with tokens of m and a cost of its own
    h.run("ack", {"job_id": jid, "attempt": 1, "usage": {"input_tokens": 1_000_000, "output_tokens": 500_000,
                                                          "cache_read_tokens": 2_000_000, "cache_write_tokens": 1_000,
                                                          "model": "m", "provider": "p", "cost_usd": 99.0}})
    # Then the server's price wins; the reported figure is kept beside it
    (entry,) = h.raw_job(jid)["usage"]
    assert entry["cost_source"] == "price_table" and entry["reported_cost_usd"] == 99.0
    assert entry["cost_usd"] == pytest.approx(2 + 4 + 1 + 0.002)  # cache write defaults to the input price
    assert h.raw_job(jid)["usage_total"]["cost_usd"] == entry["cost_usd"]


def test_provider_specific_price_wins_over_the_provider_less_one(h):
    h.run("set_price", {"model": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1})
    h.run("set_price", {"provider": "p", "model": "m", "input_usd_per_mtok": 10, "output_usd_per_mtok": 10})
    jid = active(h)
    h.run("ack", {"job_id": jid, "usage": {"input_tokens": 100_000, "model": "m", "provider": "p"}})
    assert h.raw_job(jid)["usage"][0]["cost_usd"] == pytest.approx(1.0)
    assert [(p["provider"], p["model"]) for p in prices(h)] == [("", "m"), ("p", "m")]


def test_reported_cost_without_a_price_and_unmetered_without_either(h):
    a, b = active(h), None
    h.run("ack", {"job_id": a, "usage": {"input_tokens": 5, "model": "unknown", "cost_usd": 0.25}})
    b = active(h)
    h.run("fail", {"job_id": b, "error": "x", "usage": {"input_tokens": 5, "model": "unknown"}})
    assert h.raw_job(a)["usage"][0]["cost_source"] == "reported"
    assert h.raw_job(a)["usage_total"]["cost_usd"] == 0.25
    entry = h.raw_job(b)["usage"][0]
    assert (entry["cost_source"], entry["cost_usd"]) == ("unmetered", 0.0)
    assert h.raw_job(b)["usage_total"]["unmetered"] == 1


def test_set_price_replaces_and_delete_price_refuses_an_unknown_model(h):
    h.run("set_price", {"model": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}, now=T0)
    again = h.run("set_price", {"model": "m", "input_usd_per_mtok": 2, "output_usd_per_mtok": 3}, now=T0 + 5)["ok"]
    assert (again["replaced"], again["created_at"], again["updated_at"]) == (True, T0, T0 + 5)
    assert h.run("delete_price", {"model": "m"}) == {"ok": {}}
    assert h.run("delete_price", {"model": "m"})["err"]["code"] == "NOT_FOUND"
    assert prices(h) == []


# ------------------------------------------------------------------ attempts and reports

def test_heartbeat_usage_is_cumulative_for_the_attempt_and_ack_closes_it(h):
    jid = active(h)
    for n in (10, 30, 60):
        h.run("heartbeat", {"worker_id": "w1", "jobs": {jid: {"attempt": 1, "usage": {"input_tokens": n,
                                                                                      "cost_usd": n / 100}}}})
    job = h.raw_job(jid)
    assert len(job["usage"]) == 1 and job["usage_total"]["input_tokens"] == 60
    assert job["usage_total"]["cost_usd"] == pytest.approx(0.6) and job["usage"][0]["final"] is False
    # When acked without usage / Then the entry is closed as it stands, once in LMDB
    h.run("ack", {"job_id": jid, "attempt": 1})
    job = h.raw_job(jid)
    assert job["usage"][0]["final"] is True and job["usage_total"]["input_tokens"] == 60
    assert [r["input_tokens"] for r in usage_records(h)] == [60]
    with h.store.begin() as txn:
        assert len(list(txn.cursor(db=h.dbs["usage_seq"]))) == 1


def test_each_attempt_has_its_own_entry_and_retry_job_starts_new_ones(h):
    jid = active(h)
    h.run("fail", {"job_id": jid, "error": "e", "usage": {"input_tokens": 1, "cost_usd": 0.1}}, now=T0 + 1)
    h.run("retry_job", {"job_id": jid}, now=T0 + 2)
    h.run("fetch", {"queues": ["ai.chat"], "worker_id": "w1"}, now=T0 + 3)
    h.run("ack", {"job_id": jid, "usage": {"input_tokens": 2, "cost_usd": 0.2}}, now=T0 + 4)
    h.run("retry_job", {"job_id": jid}, now=T0 + 5)  # attempts start over at 1
    h.run("fetch", {"queues": ["ai.chat"], "worker_id": "w1"}, now=T0 + 6)
    h.run("ack", {"job_id": jid, "usage": {"input_tokens": 4, "cost_usd": 0.4}}, now=T0 + 7)
    job = h.raw_job(jid)
    assert [(e["n"], e["attempt"], e["input_tokens"]) for e in job["usage"]] == [(1, 1, 1), (2, 2, 2), (3, 1, 4)]
    assert job["usage_total"]["attempts"] == 3 and job["usage_total"]["cost_usd"] == pytest.approx(0.7)


def test_token_sums_saturate_instead_of_failing_the_op(h):
    # Given three attempts each reporting the largest token count
    jid = h.enqueue(queue="ai.chat", max_retries=5)
    for i in range(3):
        t = T0 + i * 10_000_000
        h.run("fetch", {"queues": ["ai.chat"], "worker_id": "w1"}, now=t)
        result = h.run("fail", {"job_id": jid, "error": "e", "usage": {"input_tokens": INT64_MAX}}, now=t + 1)
        assert "ok" in result, result
        h.run("tick", {"limit": 100}, now=t + 5_000_000)
    # Then the total saturates and the job moved on normally
    job = h.raw_job(jid)
    assert job["usage_total"]["input_tokens"] == INT64_MAX and job["usage_total"]["attempts"] == 3
    assert job["state"] in ("pending", "retrying")


def test_usage_records_outlive_the_job(h):
    jid = active(h, queue="ai.chat", tags={"team": "a"})
    h.run("ack", {"job_id": jid, "usage": {"output_tokens": 7, "model": "m", "cost_usd": 0.5}})
    h.run("delete_job", {"job_id": jid})
    (rec,) = usage_records(h)
    assert (rec["job_id"], rec["queue"], rec["namespace"], rec["tags"], rec["output_tokens"], rec["at"]) == \
        (jid, "ai.chat", "ai", {"team": "a"}, 7, T0)


# ------------------------------------------------------------------ the usage actor's core

def sum_records(h, **match) -> dict:
    out = {"input_tokens": 0, "cost_nano": 0, "attempts": 0, "unmetered": 0}
    for r in usage_records(h):
        if any(r.get(k) != v for k, v in match.items()):
            continue
        out["input_tokens"] += r.get("input_tokens") or 0
        out["cost_nano"] += int(round(r["cost_usd"] * 1e9))
        out["attempts"] += 1
        out["unmetered"] += r["cost_source"] == "unmetered"
    return out


def test_rollups_equal_a_sum_over_the_usage_records_through_open_and_final_reports(h):
    h.run("set_price", {"model": "m1", "input_usd_per_mtok": 3, "output_usd_per_mtok": 1})
    core = UsageCore(LmdbSource(h), chunk_records=3)
    core.start_rebuild("start", 0.0)
    ids = []
    for i in range(12):
        jid = active(h, queue=f"q{i % 3}.x", tags={"team": "ab"[i % 2]}, now=T0 + i * HOUR_MS // 4)
        ids.append(jid)
        h.run("heartbeat", {"worker_id": "w1", "jobs": {jid: {"usage": {"input_tokens": i, "model": f"m{i % 2}"}}}},
              now=T0 + i * HOUR_MS // 4)
        if i % 4 == 0:
            caught_up(core)  # the core sees some records while they are still open
    for i, jid in enumerate(ids):
        if i % 5 != 4:  # some attempts never finish
            h.run("ack", {"job_id": jid, "usage": {"input_tokens": 10 * i, "model": f"m{i % 2}",
                                                    "cost_usd": 0.01 * i}}, now=T0 + 3 * HOUR_MS + i)
    caught_up(core)
    s = core.summary({"since": 0, "until": T0 + 10 * HOUR_MS, "group_by": ["model"]}, T0)
    for g in s["groups"]:
        want = sum_records(h, model=g["key"]["model"])
        assert (g["input_tokens"], round(g["cost_usd"] * 1e9), g["attempts"], g["unmetered"]) == \
            (want["input_tokens"], want["cost_nano"], want["attempts"], want["unmetered"])
    total = sum_records(h)
    assert s["totals"]["attempts"] == 12 == total["attempts"] and s["totals"]["jobs"] == 12
    assert s["totals"]["input_tokens"] == total["input_tokens"]
    # And a rebuild from scratch gives the same numbers
    fresh = caught_up(UsageCore(LmdbSource(h)))
    assert fresh.summary({"since": 0, "until": T0 + 10 * HOUR_MS, "group_by": ["model"]}, T0) == s
    assert fresh.cells == core.cells


def test_summary_groups_filters_and_hour_window(h):
    core = UsageCore(LmdbSource(h))
    for i, (queue, team) in enumerate([("ai.a", "x"), ("ai.b", "x"), ("ops.c", "y")]):
        jid = active(h, queue=queue, tags={"team": team}, now=T0 + i * HOUR_MS)
        h.run("ack", {"job_id": jid, "usage": {"input_tokens": 1 + i, "cost_usd": 1.0 + i}}, now=T0 + i * HOUR_MS)
    caught_up(core)
    s = core.summary({"since": 0, "until": T0 + 5 * HOUR_MS, "group_by": ["namespace", "tag:team"]}, T0)
    assert [(g["key"], g["cost_usd"]) for g in s["groups"]] == [
        ({"namespace": "ai", "tag:team": "x"}, 3.0), ({"namespace": "ops", "tag:team": "y"}, 3.0)]  # ties by key
    only = core.summary({"since": 0, "until": T0 + 5 * HOUR_MS, "tags": {"team": "x"}, "queue": "ai.b"}, T0)
    assert only["totals"]["cost_usd"] == 2.0 and only["groups"] == []
    # The window is whole hours: the hour of T0 + 1 h alone
    hour = core.summary({"since": T0 + HOUR_MS, "until": T0 + HOUR_MS + 1}, 0)
    assert hour["until"] - hour["since"] <= 2 * HOUR_MS
    limited = core.summary({"since": 0, "until": T0 + 5 * HOUR_MS, "group_by": ["queue"], "limit": 1}, T0)
    assert limited["truncated"] and len(limited["groups"]) == 1


def test_feed_gaps_are_counted_and_requests_wait_for_the_catch_up(h):
    core = UsageCore(LmdbSource(h), chunk_records=1)
    core.on_changes({"k": "changes", "index": 5, "prev": 0, "jobs": []})
    core.on_changes({"k": "changes", "index": 9, "prev": 7, "jobs": []})  # 5..7 went missing
    assert core.gaps == 1
    for _ in range(2):
        jid = active(h)
        h.run("ack", {"job_id": jid, "usage": {"input_tokens": 1}})
    core.on_request({"k": "search", "tag": ["gw", 1, 1], "op": "usage_summary", "args": {}, "now": T0}, 0.0)
    core.step(0.0)  # one record per chunk: not caught up yet, the request waits
    assert core.take_replies() == []
    caught_up(core)
    ((tag, reply),) = core.take_replies()
    assert tag == ["gw", 1, 1] and reply["ok"]["totals"]["attempts"] == 2
    # A rebuild answers its waiter with the record count
    core.on_request({"k": "search", "tag": ["gw", 1, 2], "op": "rebuild_usage", "args": {}}, 1.0)
    caught_up(core, 1.0)
    ((tag, reply),) = core.take_replies()
    assert reply["ok"]["records"] == 2 and core.rebuilds == 1


# ------------------------------------------------------------------ bad input the rows cannot say

@pytest.mark.parametrize("op_name,args,field,reason", [
    ("usage_summary", {"group_by": ["model", "bogus"]}, "group_by[1]", "invalid_choice"),
    ("usage_summary", {"group_by": ["tag:"]}, "group_by[0]", "invalid_choice"),
    ("usage_summary", {"group_by": [1]}, "group_by[0]", "wrong_type"),
    ("usage_summary", {"group_by": ["model", "model"]}, "group_by", "conflicting_fields"),
    ("usage_summary", {"group_by": ["hour"] * 9}, "group_by", "too_large"),
    ("usage_summary", {"since": T0, "until": T0}, "until", "out_of_range"),
    ("usage_summary", {"since": T0 + 5, "until": T0}, "until", "out_of_range"),
    ("usage_summary", {"since": 0, "until": T0}, "since", "out_of_range"),
    ("usage_summary", {"since": -1}, "since", "out_of_range"),
    ("set_price", {"model": "m\x00x", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}, "model", "invalid_name"),
    ("set_price", {"model": "", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}, "model", "missing_field"),
    ("set_price", {"model": "m", "input_usd_per_mtok": -1, "output_usd_per_mtok": 1}, "input_usd_per_mtok",
     "out_of_range"),
    ("set_price", {"model": "m", "input_usd_per_mtok": float("nan"), "output_usd_per_mtok": 1},
     "input_usd_per_mtok", "out_of_range"),
    ("set_price", {"provider": "p\x00", "model": "m", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1},
     "provider", "invalid_name"),
    ("delete_price", {"model": "m", "colour": "x"}, "colour", "unknown_field"),
    ("ack", {"job_id": "j", "usage": {"cache_read_tokens": -1}}, "usage.cache_read_tokens", "out_of_range"),
])
def test_bad_usage_and_price_input_names_the_field(op_name, args, field, reason):
    from jobbie.transport.errors import InvalidArgument
    from jobbie.transport.ops import validate
    with pytest.raises(InvalidArgument) as info:
        validate(op_name, args, now_ms=T0)
    assert (info.value.field, info.value.reason) == (field, reason), info.value.message
