"""Before pysyncobj opens anything: make the journal, the snapshot and LMDB agree.

The rules (startup must never replay the log on top of a stale or ahead-of-log LMDB):
- a torn journal tail is cut back to the last sound record, never loaded;
- LMDB that is ahead of the log (its applied index is past the journal's
  end and the snapshot's index) cannot be trusted: it is set aside and the
  state is rebuilt from snapshot + journal, deterministically;
- in --durable mode, an LMDB that was not closed cleanly is set aside too
  (it is never fsynced, so after a power loss it may be torn);
- a snapshot the journal does not line up with (pysyncobj would clear the
  journal on loading it, losing acknowledged entries) is
  dealt with here: dropped when journal + LMDB cover everything without it,
  otherwise the journal is compacted to start where the snapshot ends;
- LMDB older than the journal's first entry with no usable snapshot cannot
  be recovered automatically: the node refuses to start, saying why.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass

from jobbie.storage.env import Store
from jobbie.storage.machine import applied_index

from . import recovery

log = logging.getLogger("jobbie.raft")

CLEAN_MARKER = "clean-shutdown"


class CannotStart(Exception):
    """The data dir cannot be recovered automatically; the message says why and what to do."""


@dataclass
class Prepared:
    journal: recovery.JournalScan
    snapshot_index: int
    lmdb_applied: int
    actions: list


def prepare(raft_dir: str, lmdb_path: str, durable: bool) -> Prepared:
    os.makedirs(raft_dir, exist_ok=True)
    actions = []
    journal_path = os.path.join(raft_dir, "journal")
    snapshot_path = os.path.join(raft_dir, "snapshot")
    marker = os.path.join(raft_dir, CLEAN_MARKER)
    was_clean = os.path.exists(marker)
    if was_clean:
        os.unlink(marker)

    scan = recovery.scan_journal(journal_path)
    if scan.torn:
        log.warning("journal %s: %s; cutting it after index %s (offset %d)", journal_path, scan.problem,
                    scan.last_index or "none", scan.good_offset)
        recovery.cut_journal(journal_path, scan)
        actions.append(f"cut torn journal tail ({scan.problem})")

    header = recovery.read_snapshot_header(snapshot_path)
    if header is None and os.path.exists(snapshot_path):
        log.error("%s is not a readable jobbie snapshot; setting it aside", snapshot_path)
        os.replace(snapshot_path, snapshot_path + f".damaged-{int(time.time())}")
        actions.append("set aside an unreadable snapshot")
    if header is not None:
        try:
            recovery.verify_snapshot(snapshot_path)
        except ValueError as exc:
            log.error("%s; setting it aside", exc)
            os.replace(snapshot_path, snapshot_path + f".damaged-{int(time.time())}")
            header = None
            actions.append("set aside a damaged snapshot")
    snap_index = header["index"] if header else 0

    lmdb_applied = _lmdb_applied(lmdb_path)
    log_end = max(scan.last_index, snap_index)
    if lmdb_applied and lmdb_applied > log_end:
        _set_aside(lmdb_path, "ahead")
        actions.append(f"set aside LMDB at index {lmdb_applied}: ahead of the log (ends at {log_end})")
        lmdb_applied = 0
    elif lmdb_applied and durable and not was_clean:
        _set_aside(lmdb_path, "unclean")
        actions.append("set aside LMDB after an unclean stop in --durable mode")
        lmdb_applied = 0

    first = scan.first_index
    if header is not None and scan.entries:
        # pysyncobj keeps the journal only if it starts with the snapshot's last two entries.
        aligned = first == snap_index - 1
        if not aligned:
            if first <= 2 and lmdb_applied >= first - 1:
                # The journal still holds everything: LMDB + journal suffice; the
                # snapshot would only make pysyncobj clear the journal.
                os.replace(snapshot_path, snapshot_path + f".superseded-{int(time.time())}")
                actions.append(f"dropped snapshot {snap_index}: the journal still holds the whole log")
                header, snap_index = None, 0
            elif first < snap_index - 1 <= scan.last_index:
                _compact_journal(journal_path, snap_index - 1)
                actions.append(f"compacted the journal to start at the snapshot ({snap_index})")
                scan = recovery.scan_journal(journal_path)
                first = scan.first_index
    if scan.entries and first > 2 and header is None:
        # pysyncobj starts applying at index 2 and cannot skip to a compacted
        # journal's first entry without the snapshot that precedes it.
        raise CannotStart(
            f"the journal was compacted (it starts at index {first}) but there is no usable snapshot "
            f"(LMDB holds up to index {lmdb_applied}); put the snapshot back (or copy one from another node) "
            f"into {snapshot_path}, or move the data dir aside and start this node with --rejoin")
    for action in actions:
        log.warning("recovery: %s", action)
    return Prepared(scan, snap_index, lmdb_applied, actions)


def mark_clean(raft_dir: str):
    with open(os.path.join(raft_dir, CLEAN_MARKER), "w") as f:
        f.write(f"{time.time()}\n")


def _lmdb_applied(lmdb_path: str) -> int:
    if not os.path.exists(os.path.join(lmdb_path, "data.mdb")):
        return 0
    store = Store(lmdb_path)
    try:
        with store.begin() as txn:
            return applied_index(txn, store.dbs)
    finally:
        store.close()


def _set_aside(lmdb_path: str, why: str):
    # Keep only the latest set-aside copy of each kind: they are for a human to
    # look at, and a copy of the whole store each time would fill the disk.
    parent, base = os.path.split(lmdb_path)
    for name in os.listdir(parent or "."):
        if name.startswith(f"{base}.{why}-"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    target = f"{lmdb_path}.{why}-{int(time.time())}"
    log.warning("setting LMDB aside as %s (%s); the state is rebuilt from snapshot and journal", target, why)
    os.replace(lmdb_path, target)


def _compact_journal(journal_path: str, first_index: int):
    """Drop journal entries before `first_index`, crash-safely (work on a copy, then rename)."""
    from pysyncobj.journal import FileJournal

    work = journal_path + ".compacting"
    shutil.copyfile(journal_path, work)
    journal = FileJournal(work)
    diff = first_index - journal[0][1]
    journal.deleteEntriesTo(diff)
    journal.flush()
    journal._destroy()
    with open(work, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(work, journal_path)
