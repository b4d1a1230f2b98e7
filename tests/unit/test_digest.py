"""The `digest` read (storage/reads.py): equal for replicas that applied the same entries."""
from __future__ import annotations

from jobbie.storage.reads import read_digest


def digest_of(harness) -> dict:
    with harness.store.begin() as txn:
        return read_digest(txn, harness.dbs, {})


def test_two_stores_fed_the_same_entries_have_the_same_digest(make_harness):
    # Given two stores that apply the same enqueues and the same fetch
    a, b = make_harness(), make_harness()
    for h in (a, b):
        h.enqueue(payload={"n": 1})
        h.enqueue(payload={"n": 2})
        h.fetch()
    # When each is digested / Then they agree, index and per-database figures included
    da, db = digest_of(a), digest_of(b)
    assert da == db
    assert da["applied_index"] > 0 and da["dbs"]["jobs"]["entries"] == 2


def test_one_more_change_changes_the_digest_and_names_the_database(make_harness):
    a, b = make_harness(), make_harness()
    for h in (a, b):
        h.enqueue(payload={"n": 1})
    b.enqueue(payload={"n": 2})
    da, db = digest_of(a), digest_of(b)
    assert da["digest"] != db["digest"]
    assert da["dbs"]["jobs"]["digest"] != db["dbs"]["jobs"]["digest"]
