"""A three-node jobbie cluster of real processes, for the fault tests in test_cluster.py.

The cluster itself (nodes started, stopped and killed by verified pid; leader and convergence
waits; LMDB digests) is the installed package's chaos harness, `jobbie.cli.chaos_harness`, which
`jobbie chaos` runs too. This module adds what only tests need: readers and writers of pysyncobj's
journal file, a replay of the journal into a fresh LMDB, and the `make_cluster` fixture.
"""
from __future__ import annotations

import os
import shutil
import struct

import pytest

from jobbie.actors.supervisor import free_port  # noqa: F401 (re-exported for the tests)
from jobbie.cli.chaos_harness.cluster import (Cluster, copy_lmdb, describe_difference, digest,  # noqa: F401
                                              digest_path, lmdb_dump, open_readonly)
from jobbie.cli.chaos_harness.nodes import ClusterNode, proc_state, running, stdout_of  # noqa: F401
from jobbie.storage.env import Store

# ------------------------------------------------------------------- journal
# pysyncobj 0.3.17 FileJournal: a 40-byte header whose last field (offset 36,
# u32 little-endian) is the end of the last record; then records
# size(4) idx(8) term(8) command(size-16) size(4). A command's first byte is
# its type (0 = a replicated call: pickled (func_id, (entry_bytes,))).
JOURNAL_HEADER = 40
LAST_OFFSET_AT = 36


def journal_end(path: str) -> int:
    with open(path, "rb") as f:
        f.seek(LAST_OFFSET_AT)
        return struct.unpack("<I", f.read(4))[0]


def set_journal_end(path: str, offset: int):
    with open(path, "r+b") as f:
        f.seek(LAST_OFFSET_AT)
        f.write(struct.pack("<I", offset))


def journal_records(path: str, end: int | None = None):
    """(record start, record end, idx, term, command) of every whole record before `end` (default: the header's)."""
    with open(path, "rb") as f:
        data = f.read()
    recorded = struct.unpack_from("<I", data, LAST_OFFSET_AT)[0]
    end = min(recorded if end is None else end, len(data))
    out = []
    offset = JOURNAL_HEADER
    while offset + 4 <= end:
        size = struct.unpack_from("<I", data, offset)[0]
        rec_end = offset + 4 + size + 4
        if size < 16 or rec_end > end:
            break
        idx, term = struct.unpack_from("<QQ", data, offset + 4)
        out.append((offset, rec_end, idx, term, bytes(data[offset + 20:offset + 4 + size])))
        offset = rec_end
    return out


def journal_entry(command: bytes) -> dict | None:
    """The jobbie batch inside a journal command, or None for pysyncobj's own (no-op) commands."""
    import msgpack
    import pysyncobj.pickle as ps_pickle

    if not command or command[0] != 0:
        return None
    call = ps_pickle.loads(command[1:])
    entry_bytes = call[1][0]
    return msgpack.unpackb(entry_bytes, raw=False)


def journal_job_ids(path: str, end: int | None = None) -> set[str]:
    """Every job id that an op in the journal (up to `end`) carries."""
    ids = set()
    for _, _, _, _, command in journal_records(path, end):
        entry = journal_entry(command)
        for op in (entry or {}).get("ops") or ():
            ids.update(op.get("ids") or ())
    return ids


def replay_digest(journal_path: str, upto_index: int, work_dir: str) -> tuple[int, str]:
    """Apply the journal's jobbie entries up to `upto_index` to a fresh LMDB, as the raft actor does; digest it."""
    from jobbie.actors.raft.core import decode_entry
    from jobbie.storage.machine import apply_batch

    path = os.path.join(work_dir, "replay-lmdb")
    shutil.rmtree(path, ignore_errors=True)
    store = Store(path)
    try:
        for _, _, idx, _, command in journal_records(journal_path):
            if idx > upto_index or not command or command[0] != 0:
                continue
            try:
                entry = decode_entry(journal_entry_bytes(command))
            except Exception:  # noqa: BLE001 - the raft actor applies an undecodable entry as empty
                entry = {"v": 1, "ops": []}
            with store.begin(write=True) as txn:
                apply_batch(store, txn, idx, entry["ops"])
    finally:
        store.close()
    try:
        return digest_path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def journal_entry_bytes(command: bytes) -> bytes:
    import pysyncobj.pickle as ps_pickle

    return ps_pickle.loads(command[1:])[1][0]


# --------------------------------------------------------------------- fixture
@pytest.fixture
def make_cluster(tmp_path, request):
    """Clusters made by a test; stopped at teardown, with their logs shown if the test failed."""
    clusters: list[Cluster] = []
    failed_before = request.session.testsfailed

    def make(**kwargs) -> Cluster:
        c = Cluster(tmp_path / f"c{len(clusters)}", **kwargs)
        clusters.append(c)
        return c

    yield make
    if request.session.testsfailed > failed_before:
        for c in clusters:  # the node statuses and log tails, shown with the failure
            print(c.describe())
    for c in clusters:
        c.stop()
    left = {n.node_id: n.leftovers() for c in clusters for n in c.nodes}
    assert not any(left.values()), f"processes left behind: {left}"
