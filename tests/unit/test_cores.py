"""The actor cores, without processes or sockets: admission, gateway, lifecycle, raft routing, restarts."""
from __future__ import annotations

import pytest

from jobbie.actors.admission.actor import assemble_entry
from jobbie.actors.admission.core import AdmissionCore, AdmissionLimits
from jobbie.actors.gateway.core import GatewayCore
from jobbie.actors.lifecycle.core import TICK_LIMIT, LifecycleCore
from jobbie.actors.raft import core as raft_core
from jobbie.actors.supervisor import RestartPolicy
from jobbie.storage.machine import Changes
from jobbie.transport import codec

# ------------------------------------------------------------------ admission


def offer_many(core, client, n, size=10, start=0):
    return [core.offer(client, size, ["gw", 1, start + i], f"{client}-{start + i}".encode()) for i in range(n)]


def cut_applied(core, now=0.0):
    """Cut the next entry and have raft apply it at once: the shape of each entry, one at a time."""
    batch = core.cut_batch(now)
    if batch is not None:
        core.on_applied(batch[0], now)
    return batch


def test_admission_cuts_round_robin_between_clients():
    # Given a flooding client with 6 waiting ops and a light one with 2
    core = AdmissionCore(AdmissionLimits(entry_ops_max=4))
    offer_many(core, "flood", 6)
    offer_many(core, "light", 2)
    # When batches are cut
    _, ops1, _ = cut_applied(core)
    _, ops2, _ = cut_applied(core)
    # Then the light client's ops are interleaved, not queued behind the flood
    assert ops1 == [b"flood-0", b"light-0", b"flood-1", b"light-1"]
    assert ops2 == [b"flood-2", b"flood-3", b"flood-4", b"flood-5"]
    assert core.cut_batch(0.0) is None


def test_admission_per_client_limit_refuses_with_retry_hint():
    core = AdmissionCore(AdmissionLimits(inflight_max=100, inflight_per_client_max=3))
    results = offer_many(core, "a", 4)
    assert results[:3] == [None, None, None]
    err = results[3]["err"]
    assert err["code"] == "RESOURCE_EXHAUSTED" and err["reason"] == "overloaded"
    assert 5 <= err["retry_after_ms"] <= 5000
    # Another client is not affected by a's limit
    assert core.offer("b", 10, ["gw", 1, 99], b"b") is None


def test_admission_global_limit_and_release_on_applied():
    core = AdmissionCore(AdmissionLimits(inflight_max=3, inflight_per_client_max=3, entries_in_flight_max=1))
    assert offer_many(core, "a", 2) == [None, None]
    assert core.offer("b", 10, ["gw", 1, 9], b"b") is None
    assert "err" in core.offer("c", 10, ["gw", 1, 10], b"c")
    n, ops, tags = core.cut_batch(1.0)
    assert len(ops) == 3 and core.total == 3
    core.on_applied(n, 1.01)
    assert core.total == 0 and core.per_client == {}
    assert core.offer("c", 10, ["gw", 1, 11], b"c") is None


def test_admission_waits_while_raft_has_entries_in_flight_then_groups():
    core = AdmissionCore(AdmissionLimits(entries_in_flight_max=1))
    offer_many(core, "a", 1)
    first = core.cut_batch(0.0)
    offer_many(core, "a", 5, start=1)
    # One entry in flight: nothing is cut, the next ops pile up
    assert core.cut_batch(0.0) is None
    core.on_applied(first[0], 0.001)
    n, ops, _ = core.cut_batch(0.001)
    assert len(ops) == 5  # group commit: everything that piled up goes in one entry


def test_admission_splits_batches_by_ops_and_bytes():
    core = AdmissionCore(AdmissionLimits(entry_ops_max=3, entry_bytes_max=25))
    offer_many(core, "a", 7, size=10)
    sizes = []
    while (batch := cut_applied(core)) is not None:
        sizes.append(len(batch[1]))
    assert sizes == [2, 2, 2, 1]  # 25 bytes hold two 10-byte ops
    core2 = AdmissionCore(AdmissionLimits(entry_ops_max=3, entry_bytes_max=10**6))
    offer_many(core2, "a", 7)
    assert [len(cut_applied(core2)[1]) for _ in range(3)] == [3, 3, 1]


def test_admission_single_op_larger_than_the_byte_cap_still_goes_alone():
    core = AdmissionCore(AdmissionLimits(entry_bytes_max=5))
    offer_many(core, "a", 2, size=50)
    assert len(cut_applied(core)[1]) == 1
    assert len(cut_applied(core)[1]) == 1


def test_admission_forgets_entries_raft_never_answered():
    core = AdmissionCore(AdmissionLimits(entry_timeout_s=5.0))
    offer_many(core, "a", 2)
    core.cut_batch(0.0)
    core.expire(4.0)
    assert core.total == 2
    core.expire(6.0)
    assert core.total == 0 and core.in_flight == {}


def test_assembled_entry_decodes_to_the_ops():
    ops = [codec.encode({"op": "enqueue", "i": i}) for i in (0, 15, 16, 70_000)]
    for count in (1, 15, 16, 17, 70_000):
        encoded = [codec.encode({"i": i}) for i in range(count)]
        entry = codec.decode(assemble_entry(7, 3, encoded))
        assert entry["v"] == 1 and entry["id"] == [7, 3] and len(entry["ops"]) == count
        assert entry["ops"][-1] == {"i": count - 1}
    assert len(ops) == 4

# -------------------------------------------------------------------- gateway


class FakeIds:
    def __init__(self):
        self.n = 0

    def new(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"


class Reader:
    """A real in-memory reader (the LMDB reader is exercised by the integration tests)."""

    def __init__(self, jobs=None):
        self.jobs = jobs or {}

    def read(self, op_name, args):
        if op_name == "get_job":
            return self.jobs.get(args["job_id"])
        return {"queues": []}


def gateway(**kwargs):
    return GatewayCore("n1", 42, FakeIds(), Reader(kwargs.pop("jobs", None)), write_timeout_s=5.0, **kwargs)


def request(core, req_id, op, args=None, now=100.0, ident=b"c1"):
    core.on_request([ident, codec.encode({"id": req_id, "op": op, "args": args or {}})], now)


def replies(core):
    out, _ = core.replies, None
    core.replies = []
    return [(frames[0], codec.decode(frames[-1])) for frames in out]


def test_gateway_stamps_writes_with_time_ids_and_tag():
    core = gateway()
    request(core, 1, "enqueue", {"queue": "q", "payload": 1}, now=100.5)
    _, ops = core.take_outputs()
    (client, size, tag, data), = ops
    op = codec.decode(data)
    assert tag == ["gw", 42, 1] and op["tag"] == tag and client == b"c1".hex()
    assert op["now"] == 100_500 and op["ids"] == ["job_1"] and op["args"]["priority"] == "normal"
    assert size == len(data)


def test_gateway_answers_bad_input_without_submitting():
    core = gateway()
    core.on_request([b"c1", b"\xc1"], 1.0)
    core.on_request([b"c1", codec.encode([1, 2])], 1.0)
    request(core, 7, "enqueue", {"queue": "-bad", "payload": 1})
    request(core, 8, "nope")
    got = replies(core)
    assert [r[1]["id"] for r in got] == [-1, -1, 7, 8]
    assert all(r[1]["err"]["code"] == "INVALID_ARGUMENT" for r in got)
    assert got[2][1]["err"]["field"] == "queue" and got[3][1]["err"]["reason"] == "unknown_op"
    assert core.take_outputs()[1] == []


def test_gateway_routes_results_and_ignores_other_incarnations():
    core = gateway()
    request(core, 5, "cancel_job", {"job_id": "j"})
    core.on_applied({"items": [[["gw", 41, 1], {"ok": {"state": "x"}}], [["gw", 42, 1], {"ok": {"state": "cancelled"}}]]}, 100.1)
    assert replies(core) == [(b"c1", {"id": 5, "ok": {"state": "cancelled"}})]
    core.on_applied({"items": [[["gw", 42, 1], {"ok": {}}]]}, 100.2)  # a duplicate is dropped
    assert replies(core) == []


def test_gateway_parks_an_empty_long_poll_and_wakes_it_on_new_jobs():
    core = gateway()
    request(core, 1, "fetch", {"queues": ["q"], "worker_id": "w", "wait_ms": 5000}, now=100.0)
    core.take_outputs()
    core.on_applied({"items": [[["gw", 42, 1], {"ok": {"jobs": []}}]]}, 100.01)
    assert replies(core) == [] and len(core.parked) == 1
    # A job arrives on the queue: the fetch is sent again, with a new tag
    core.on_applied({"items": [], "woken": {"q": 1}}, 100.2)
    _, ops = core.take_outputs()
    assert len(ops) == 1 and codec.decode(ops[0][3])["op"] == "fetch" and ops[0][2] == ["gw", 42, 2]
    core.on_applied({"items": [[["gw", 42, 2], {"ok": {"jobs": [{"job_id": "j1"}]}}]]}, 100.21)
    assert replies(core) == [(b"c1", {"id": 1, "ok": {"jobs": [{"job_id": "j1"}]}})]


def test_gateway_wakes_only_as_many_parked_fetches_as_there_are_jobs():
    core = gateway()
    for i in (1, 2, 3):
        request(core, i, "fetch", {"queues": ["q"], "worker_id": f"w{i}", "wait_ms": 5000}, now=100.0)
        core.on_applied({"items": [[["gw", 42, i], {"ok": {"jobs": []}}]]}, 100.0)
    core.take_outputs()
    core.on_applied({"items": [], "woken": {"q": 2}}, 100.1)
    assert len(core.take_outputs()[1]) == 2 and len(core.parked) == 1


def test_gateway_long_poll_ends_with_an_empty_list():
    core = gateway()
    request(core, 1, "fetch", {"queues": ["q"], "worker_id": "w", "wait_ms": 300}, now=100.0)
    core.on_applied({"items": [[["gw", 42, 1], {"ok": {"jobs": []}}]]}, 100.01)
    core.on_tick(100.2)
    assert replies(core) == []
    core.on_tick(100.31)
    assert replies(core) == [(b"c1", {"id": 1, "ok": {"jobs": []}})]
    assert core.in_flight() == 0


def test_gateway_times_out_a_lost_write_with_unavailable():
    core = gateway()
    request(core, 9, "enqueue", {"queue": "q", "payload": 1}, now=100.0)
    core.on_tick(104.9)
    assert replies(core) == []
    core.on_tick(105.1)
    ((_, reply),) = replies(core)
    assert reply["err"]["code"] == "UNAVAILABLE" and reply["err"]["reason"] == "timeout"
    assert "request_id" in reply["err"]["message"] and core.in_flight() == 0


def test_gateway_reads_and_local_status():
    core = gateway(jobs={"j1": {"id": "j1", "state": "pending"}})
    request(core, 1, "get_job", {"job_id": "j1"})
    request(core, 2, "get_job", {"job_id": "nope"})
    core.on_status({"k": "raft_status", "node_id": "n1", "role": "leader", "term": 3, "commit_index": 9,
                    "applied_index": 9, "durable": True}, 100.0)
    core.on_status({"k": "actors", "actors": [{"name": "raft", "pid": 1, "restarts": 0, "alive": True}]}, 100.0)
    request(core, 3, "cluster_status", now=101.0)
    request(core, 4, "cluster_status", now=103.0)
    got = dict((r["id"], r) for _, r in replies(core))
    assert got[1]["ok"]["state"] == "pending"
    assert got[2]["err"]["code"] == "NOT_FOUND" and got[2]["err"]["field"] == "job_id"
    assert got[3]["ok"]["role"] == "leader" and got[3]["ok"]["durable"] is True and got[3]["ok"]["actors"][0]["name"] == "raft"
    assert got[4]["ok"]["role"] == "unknown" and "warning" in got[4]["ok"]  # the raft report is stale


def test_gateway_accepts_req_socket_envelopes():
    core = gateway()
    core.on_request([b"c1", b"", codec.encode({"id": 3, "op": "cluster_status"})], 1.0)
    (frames,) = core.replies
    assert frames[1] == b"" and codec.decode(frames[2])["id"] == 3

# ------------------------------------------------------------------ lifecycle


def test_lifecycle_proposes_only_as_leader_and_only_when_due():
    core = LifecycleCore(incarnation=5)
    assert not core.wants_deadline(10.0)  # no raft report yet
    core.on_status({"k": "raft_status", "role": "follower"}, 10.0)
    assert not core.wants_deadline(10.0)
    core.on_status({"k": "raft_status", "role": "leader"}, 10.0)
    assert core.wants_deadline(10.5)
    assert core.decide(10.5, None) is None  # nothing scheduled
    assert core.decide(10.5, 11_000) is None  # due later
    tag, op = core.decide(10.5, 10_400)
    assert tag == ["lc", 5, 1] and codec.decode(op) == {"op": "tick", "args": {"limit": TICK_LIMIT},
                                                       "now": 10_500, "tag": tag}
    # One tick at a time, until its result arrives (or it times out)
    assert not core.wants_deadline(10.6)
    core.on_applied({"items": [[tag, {"ok": {"promoted": 3, "reclaimed": 0, "expired": 0}}]]})
    assert core.wants_deadline(10.6)
    assert not core.wants_deadline(13.0)  # the raft report went stale: maybe no longer leader


def test_lifecycle_ticks_again_at_once_when_a_tick_came_back_full():
    core = LifecycleCore(incarnation=1)
    core.on_status({"k": "raft_status", "role": "leader"}, 0.0)
    tag, _ = core.decide(0.1, 0)
    core.on_applied({"items": [[tag, {"ok": {"promoted": TICK_LIMIT, "reclaimed": 0, "expired": 0}}]]})
    assert core.decide(0.2, None) is not None


def test_lifecycle_retries_a_tick_that_never_came_back():
    core = LifecycleCore(incarnation=1, tick_timeout_s=3.0)
    core.on_status({"k": "raft_status", "role": "leader"}, 0.0)
    core.decide(0.1, 0)
    core.on_status({"k": "raft_status", "role": "leader"}, 3.0)
    assert not core.wants_deadline(3.0)
    assert core.wants_deadline(3.2)

# ----------------------------------------------------------------------- raft


def test_raft_routes_results_by_origin_and_wakes_the_gateway():
    entry = {"v": 1, "id": [9, 4], "ops": [{"op": "enqueue", "tag": ["gw", 1, 1]}, {"op": "tick", "tag": ["lc", 2, 1]}]}
    changes = Changes()
    changes.wake("q", 2)
    frames = dict(raft_core.route(entry, 17, [{"ok": {"a": 1}}, {"ok": {"b": 2}}], changes))
    # one frame to the admission process: the gateway's results and admission's "entry done"
    assert frames["gateway"] == {"k": "applied", "index": 17, "items": [[["gw", 1, 1], {"ok": {"a": 1}}]],
                                 "woken": {"q": 2}, "entry": [9, 4]}
    assert frames["lifecycle"]["items"] == [[["lc", 2, 1], {"ok": {"b": 2}}]]
    assert set(frames) == {"gateway", "lifecycle"}


def test_raft_tells_admission_an_entry_is_done_even_when_no_gateway_op_was_in_it():
    entry = {"v": 1, "id": [9, 6], "ops": [{"op": "tick", "tag": ["lc", 2, 1]}]}
    frames = dict(raft_core.route(entry, 18, [{"ok": {}}], Changes()))
    assert frames["gateway"] == {"k": "applied", "index": 18, "items": [], "woken": {}, "entry": [9, 6]}
    # an entry without an id (not admission's) and without gateway results or wake-ups: nothing for it
    assert "gateway" not in dict(raft_core.route({"v": 1, "ops": [entry["ops"][0]]}, 19, [{"ok": {}}], Changes()))


def test_raft_failed_entry_answers_every_op_unavailable():
    frames = raft_core.failed([["gw", 1, 1], ["gw", 1, 2]], [9, 5], "not_leader")
    gw = dict(frames)["gateway"]
    assert [item[1]["err"]["code"] for item in gw["items"]] == ["UNAVAILABLE", "UNAVAILABLE"]
    assert gw["items"][0][1]["err"]["reason"] == "not_leader"
    assert gw["entry"] == [9, 5]
    assert len(frames) == 1
    lc_only = dict(raft_core.failed([["lc", 2, 1]], [9, 7], "missing_leader"))
    assert lc_only["gateway"] == {"k": "applied", "index": None, "items": [], "woken": {}, "entry": [9, 7]}
    assert lc_only["lifecycle"]["items"][0][1]["err"]["reason"] == "missing_leader"


def test_raft_decode_entry_rejects_foreign_bytes():
    with pytest.raises(ValueError):
        raft_core.decode_entry(codec.encode({"v": 2, "ops": []}))

# ------------------------------------------------------------------- restarts


def test_restart_backoff_doubles_up_to_its_cap_and_resets_after_a_healthy_run():
    policy = RestartPolicy(backoff_base_s=0.1, backoff_max_s=0.5, intensity_max=100)
    delays = [policy.on_crash(float(i), ran_for_s=1.0) for i in range(5)]
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert policy.on_crash(10.0, ran_for_s=60.0) == 0.1


def test_restart_intensity_stops_the_node():
    policy = RestartPolicy(intensity_max=3, intensity_window_s=10.0)
    assert all(policy.on_crash(t, 0.1) is not None for t in (0.0, 1.0, 2.0))
    assert policy.on_crash(3.0, 0.1) is None
    # Crashes spread over more than the window are tolerated
    spread = RestartPolicy(intensity_max=3, intensity_window_s=10.0)
    assert all(spread.on_crash(t * 11.0, 0.1) is not None for t in range(10))


def test_admission_frees_everything_when_raft_says_hello_after_a_restart():
    core = AdmissionCore(AdmissionLimits(entries_in_flight_max=1))
    offer_many(core, "a", 3)
    core.cut_batch(0.0)
    offer_many(core, "a", 1, start=3)
    assert core.cut_batch(0.0) is None
    core.on_raft_restarted()
    assert core.in_flight == {} and core.total == 1
    assert len(core.cut_batch(0.1)[1]) == 1


def test_latency_window_summarises_the_recent_samples():
    from jobbie.transport.metrics import Window
    w = Window(size=100)
    assert w.summary() == {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    for v in range(1, 201):  # only the last 100 (101..200) are kept
        w.record(float(v))
    s = w.summary()
    assert s["count"] == 200 and s["max"] == 200.0 and s["p50"] == 151.0 and s["p99"] == 200.0


def test_admission_reports_queue_wait_and_entry_sizes():
    core = AdmissionCore(AdmissionLimits(entries_in_flight_max=1))
    for i in range(3):
        core.offer("a", 10, ["gw", 1, i], b"x", now=1.0)
    n, ops, _ = core.cut_batch(1.004)
    core.on_applied(n, 1.010)
    stats = core.stats()
    assert stats["queue_wait_ms"]["count"] == 3 and abs(stats["queue_wait_ms"]["p50"] - 4.0) < 0.01
    assert stats["entry_ops"]["max"] == 3 and abs(stats["entry_commit_ms"]["max"] - 6.0) < 0.01
    assert stats["in_flight"] == 0 and stats["limits"]["inflight_max"] == core.limits.inflight_max


def test_gateway_status_carries_the_pipeline_histograms():
    core = gateway()
    core.on_status({"k": "raft_status", "role": "leader", "apply_ms": {"count": 5, "p50": 0.2, "p90": 0.3,
                                                                       "p99": 0.4, "max": 0.5}}, 100.0)
    core.on_status({"k": "admission_status", "queue_wait_ms": {"count": 1, "p50": 1.0, "p90": 1.0, "p99": 1.0,
                                                               "max": 1.0}, "rejected": 2}, 100.0)
    request(core, 1, "cluster_status", now=100.5)
    ((_, reply),) = replies(core)
    pipe = reply["ok"]["pipeline"]
    assert pipe["apply_ms"]["p99"] == 0.4 and pipe["queue_wait_ms"]["p50"] == 1.0
    assert pipe["admission"]["rejected"] == 2


def test_gateway_without_a_mirror_refuses_search_at_once():
    core = GatewayCore("n1", 42, FakeIds(), Reader(), write_timeout_s=5.0, mirror=False)
    request(core, 1, "search_jobs", {"queue": "q"})
    ((_, reply),) = replies(core)
    assert reply["err"]["code"] == "UNAVAILABLE" and reply["err"]["reason"] == "mirror_disabled"


def test_gateway_routes_usage_ops_to_the_usage_actor_and_shows_its_status():
    # Given a gateway that has heard from the usage actor
    core = gateway()
    core.on_status({"k": "usage_status", "applied_index": 7, "lag": 0, "rebuilds": 1}, 100.0)
    # When a usage_summary arrives / Then it goes to the usage actor with a tag, the time and min_index
    request(core, 1, "usage_summary", {"group_by": ["model"]}, now=100.5)
    (sent,) = core.take_usage()
    assert sent["op"] == "usage_summary" and sent["now"] == 100_500 and sent["args"]["group_by"] == ["model"]
    # And its answer, on the raft results path, reaches the client
    core.on_applied({"k": "applied", "index": None, "items": [[sent["tag"], {"ok": {"totals": {}}}]]}, 100.6)
    ((_, reply),) = replies(core)
    assert reply["ok"] == {"totals": {}}
    # And cluster_status shows the usage row
    request(core, 2, "cluster_status", now=100.7)
    ((_, reply),) = replies(core)
    assert reply["ok"]["usage"]["applied_index"] == 7 and reply["ok"]["usage"]["stale"] is False


def test_gateway_without_a_usage_actor_refuses_usage_ops_at_once():
    core = GatewayCore("n1", 42, FakeIds(), Reader(), write_timeout_s=5.0, usage=False)
    request(core, 1, "usage_summary", {})
    ((_, reply),) = replies(core)
    assert reply["err"]["code"] == "UNAVAILABLE" and reply["err"]["reason"] == "usage_disabled"
    core = gateway()  # enabled, but no report yet: the actor is starting
    request(core, 1, "rebuild_usage", {})
    ((_, reply),) = replies(core)
    assert reply["err"]["reason"] == "usage_unavailable"
