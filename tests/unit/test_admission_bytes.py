"""Admission by bytes: an op too big for the rest of an entry leads the next one, and small ops of
other clients fill the space, so a small write never waits behind a line of large ones."""
from __future__ import annotations

from jobbie.actors.admission.core import AdmissionCore, AdmissionLimits

MIB = 1024 * 1024


def offer(core, client, size, name):
    assert core.offer(client, size, ["gw", 1, name], name.encode()) is None


def test_a_small_write_rides_in_the_next_entry_behind_large_ones():
    # Given six clients each with a ~1 MiB op waiting, then a small writer
    core = AdmissionCore(AdmissionLimits(entry_bytes_max=MIB + 64 * 1024, entries_in_flight_max=10))
    for c in range(6):
        offer(core, f"big{c}", MIB, f"big{c}")
    offer(core, "small", 100, "small")
    # When one entry is cut
    _, ops, _ = core.cut_batch(0.0)
    # Then it carries one big op and the small one (the other big ones did not fit)
    assert ops == [b"big0", b"small"]
    # And the big ones follow in their order, one per entry
    rest = [core.cut_batch(0.0)[1] for _ in range(5)]
    assert rest == [[b"big1"], [b"big2"], [b"big3"], [b"big4"], [b"big5"]]
    assert core.cut_batch(0.0) is None


def test_a_client_passed_over_keeps_its_place_at_the_front():
    core = AdmissionCore(AdmissionLimits(entry_bytes_max=1000, entries_in_flight_max=10))
    offer(core, "a", 900, "a1")
    offer(core, "b", 900, "b1")
    offer(core, "c", 50, "c1")
    offer(core, "c", 50, "c2")
    assert core.cut_batch(0.0)[1] == [b"a1", b"c1", b"c2"]
    assert core.cut_batch(0.0)[1] == [b"b1"]


def test_entries_stay_within_the_byte_cap():
    core = AdmissionCore(AdmissionLimits(entry_bytes_max=1000, entries_in_flight_max=100))
    sizes = [700, 300, 200, 900, 10, 10, 600, 450, 999, 1]
    for i, size in enumerate(sizes):
        offer(core, f"c{i % 3}", size, f"op{i}")
    seen = []
    while (cut := core.cut_batch(0.0)) is not None:
        ops = cut[1]
        total = sum(sizes[int(o.decode()[2:])] for o in ops)
        assert total <= 1000 or len(ops) == 1
        seen += ops
    assert sorted(seen) == sorted(f"op{i}".encode() for i in range(len(sizes)))
