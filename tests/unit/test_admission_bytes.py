"""Admission by bytes.

- An op too big for the rest of an entry leads the next one, and small ops of other clients fill
  the space, so a small write never waits behind a line of large ones.
- Raft commits in log order, so the bytes in flight are capped: at most about one large entry is
  ahead of a small write, and small ops are pipelined beside it instead of waiting for it.
- Small entries are not pipelined: while one is in flight, ops pile up for the next (group commit).
"""
from __future__ import annotations

import random

from jobbie.actors.admission.core import AdmissionCore, AdmissionLimits

MIB = 1024 * 1024


def offer(core, client, size, name):
    assert core.offer(client, size, ["gw", 1, name], name.encode()) is None


def cut_applied(core, now=0.0):
    batch = core.cut_batch(now)
    if batch is not None:
        core.on_applied(batch[0], now)
    return batch


def test_a_small_write_rides_in_the_next_entry_behind_large_ones():
    # Given six clients each with a ~1 MiB op waiting, then a small writer
    core = AdmissionCore(AdmissionLimits(entry_bytes_max=MIB + 64 * 1024))
    for c in range(6):
        offer(core, f"big{c}", MIB, f"big{c}")
    offer(core, "small", 100, "small")
    # When one entry is cut
    _, ops, _ = cut_applied(core)
    # Then it carries one big op and the small one (the other big ones did not fit)
    assert ops == [b"big0", b"small"]
    # And the big ones follow in their order, one per entry
    rest = [cut_applied(core)[1] for _ in range(5)]
    assert rest == [[b"big1"], [b"big2"], [b"big3"], [b"big4"], [b"big5"]]
    assert core.cut_batch(0.0) is None


def test_a_client_passed_over_keeps_its_place_at_the_front():
    core = AdmissionCore(AdmissionLimits(entry_bytes_max=1000))
    offer(core, "a", 900, "a1")
    offer(core, "b", 900, "b1")
    offer(core, "c", 50, "c1")
    offer(core, "c", 50, "c2")
    assert cut_applied(core)[1] == [b"a1", b"c1", b"c2"]
    assert cut_applied(core)[1] == [b"b1"]


def test_entries_stay_within_the_byte_cap():
    core = AdmissionCore(AdmissionLimits(entry_bytes_max=1000))
    sizes = [700, 300, 200, 900, 10, 10, 600, 450, 999, 1]
    for i, size in enumerate(sizes):
        offer(core, f"c{i % 3}", size, f"op{i}")
    seen = []
    while (cut := cut_applied(core)) is not None:
        ops = cut[1]
        total = sum(sizes[int(o.decode()[2:])] for o in ops)
        assert total <= 1000 or len(ops) == 1
        seen += ops
    assert sorted(seen) == sorted(f"op{i}".encode() for i in range(len(sizes)))


def test_small_ops_are_pipelined_behind_a_large_entry_and_the_next_large_one_waits():
    # Given a large entry in flight
    core = AdmissionCore(AdmissionLimits())
    offer(core, "big", MIB, "big1")
    offer(core, "big", MIB, "big2")
    first = core.cut_batch(0.0)
    assert first[1] == [b"big1"]
    # When small writes arrive while it is with raft
    for i in range(3):
        offer(core, f"small{i}", 200, f"s{i}")
    # Then they go at once, in an entry of their own, and the second large op waits
    n, ops, _ = core.cut_batch(0.001)
    assert ops == [b"s0", b"s1", b"s2"]
    offer(core, "small0", 200, "s3")
    assert core.cut_batch(0.002)[1] == [b"s3"]
    assert core.bytes_in_flight == MIB + 800
    # And once the large entry is applied the next one leads
    core.on_applied(first[0], 0.01)
    core.on_applied(n, 0.01)
    assert core.cut_batch(0.01) is None  # one small entry is still in flight: group commit
    core.on_applied(n + 1, 0.02)
    assert core.cut_batch(0.02)[1] == [b"big2"]


def test_small_entries_are_not_pipelined_ops_wait_for_the_next_entry():
    core = AdmissionCore(AdmissionLimits())
    offer(core, "a", 100, "a0")
    first = core.cut_batch(0.0)
    for i in range(1, 6):
        offer(core, "a", 100, f"a{i}")
    assert core.cut_batch(0.0) is None
    core.on_applied(first[0], 0.001)
    assert len(core.cut_batch(0.001)[1]) == 5


def test_pipelined_entries_are_capped_in_count():
    core = AdmissionCore(AdmissionLimits(entries_in_flight_max=3, entry_ops_max=1))
    offer(core, "big", MIB, "big")
    for i in range(5):
        offer(core, f"s{i}", 10, f"s{i}")
    cuts = []
    while (cut := core.cut_batch(0.0)) is not None:
        cuts.append(cut[1])
    assert cuts == [[b"big"], [b"s0"], [b"s1"]]


def test_bytes_in_flight_never_exceed_the_cap_but_for_one_entry_alone():
    # Random sizes and random applies: an invariant, checked after every step
    rng = random.Random(7)
    limits = AdmissionLimits()
    core = AdmissionCore(limits)
    offered = applied = 0
    for step in range(3000):
        if rng.random() < 0.5:
            size = rng.choice([50, 300, 5000, 200_000, MIB])
            offer(core, f"c{rng.randrange(8)}", size, f"op{step}")
            offered += 1
        if core.in_flight and rng.random() < 0.3:
            n = min(core.in_flight)  # raft applies in order
            applied += len(core.in_flight[n][1]) and sum(c for _, c in core.in_flight[n][1])
            core.on_applied(n, step)
        cut = core.cut_batch(step)
        if cut is not None:
            assert len(core.in_flight) == 1 or core.bytes_in_flight <= limits.bytes_in_flight_max
            assert len(core.in_flight) <= limits.entries_in_flight_max
    assert core.bytes_in_flight == sum(size for _, _, size in core.in_flight.values())
    assert offered > 1000 and applied > 500
