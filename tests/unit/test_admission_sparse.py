"""Sparse clients first: a client with a request or two does not wait for a dense client's next full entry.

While a dense client (many ops waiting) keeps the entries full, a sparse client's ops leave at once
in a small entry of their own, pipelined behind the one in flight. Without a dense client the
entries carry everyone's ops together, as group commit wants.
"""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from jobbie.actors.admission.core import AdmissionCore, AdmissionLimits


def offer(core, client, name, size=100):
    assert core.offer(client, size, ["gw", 1, name], name.encode()) is None


def test_a_sparse_clients_op_leaves_at_once_in_its_own_entry_while_a_dense_client_waits():
    # Given an entry of the flood in flight and 40 more of its ops waiting
    core = AdmissionCore(AdmissionLimits())
    for i in range(40):
        offer(core, "flood", f"f{i}")
    first = core.cut_batch(0.0)
    assert len(first[1]) == 40
    for i in range(40, 80):
        offer(core, "flood", f"f{i}")
    assert core.cut_batch(0.001) is None  # group commit: the flood waits for the entry in flight
    # When a light client's op arrives
    offer(core, "light", "l0")
    express = core.cut_batch(0.002)
    # Then it goes at once, alone, behind the entry in flight; the flood still waits
    assert express[1] == [b"l0"] and express[2] == [["gw", 1, "l0"]]
    assert core.cut_batch(0.003) is None
    assert core.stats()["express_entries"] == 1
    # And once both are applied the flood's ops go in one entry, in their order
    core.on_applied(first[0], 0.004)
    core.on_applied(express[0], 0.004)
    rest = core.cut_batch(0.005)
    assert rest[1] == [f"f{i}".encode() for i in range(40, 80)]


def test_without_a_dense_client_nobody_is_pipelined():
    # Given ten clients with one request each, the way a closed loop of ten connections runs
    core = AdmissionCore(AdmissionLimits())
    for c in range(10):
        offer(core, f"c{c}", f"a{c}")
    core.cut_batch(0.0)
    for c in range(10):
        offer(core, f"c{c}", f"b{c}")
    # Then their next ops wait for the entry in flight and go together (group commit)
    assert core.cut_batch(0.001) is None
    assert core.stats()["express_entries"] == 0


def test_a_client_with_more_than_a_few_requests_is_not_sparse():
    core = AdmissionCore(AdmissionLimits(sparse_ops_max=2, dense_ops_min=16))
    for i in range(20):
        offer(core, "flood", f"f{i}")
    core.cut_batch(0.0)
    for i in range(20):
        offer(core, "flood", f"g{i}")
    for i in range(3):  # three: over sparse_ops_max
        offer(core, "medium", f"m{i}")
    assert core.cut_batch(0.001) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["flood", "a", "b", "c"]), st.integers(1, 30),
                          st.booleans()), min_size=1, max_size=60))
def test_every_op_leaves_once_in_its_clients_order_and_the_pipeline_bound_holds(steps):
    # Given any mix of offers (a burst of n ops from one client), cuts and applies
    limits = AdmissionLimits(entries_in_flight_max=3, dense_ops_min=4)
    core = AdmissionCore(limits)
    sent: dict[str, list] = {}
    offered: dict[str, list] = {}
    seq = 0
    for client, n, apply_one in steps:
        for _ in range(n):
            seq += 1
            name = f"{client}:{seq}"
            if core.offer(client, 10, ["gw", 1, name], name.encode()) is None:
                offered.setdefault(client, []).append(name)
        while (cut := core.cut_batch(0.0)) is not None:
            assert len(core.in_flight) <= limits.entries_in_flight_max
            for tag in cut[2]:
                sent.setdefault(tag[2].split(":")[0], []).append(tag[2])
        if apply_one and core.in_flight:
            core.on_applied(next(iter(core.in_flight)), 0.0)
    # Then, once everything is applied, every op left exactly once and each client's in order
    while core.in_flight or core.queues:
        for n in list(core.in_flight):
            core.on_applied(n, 0.0)
        while (cut := core.cut_batch(0.0)) is not None:
            for tag in cut[2]:
                sent.setdefault(tag[2].split(":")[0], []).append(tag[2])
    assert sent == offered
    assert core.total == 0 and not core.per_client


def test_an_express_entry_keeps_to_the_entry_caps():
    core = AdmissionCore(AdmissionLimits(entry_ops_max=5))
    for i in range(30):  # the first entry takes 5: 25 wait, a dense client
        offer(core, "flood", f"f{i}")
    core.cut_batch(0.0)
    for c in range(12):
        offer(core, f"light{c}", f"l{c}")
    express = core.cut_batch(0.001)
    assert express[1] == [f"l{c}".encode() for c in range(5)]
    assert sum(len(q) for q in core.queues.values()) == 25 + 7
