"""Journal compaction is crash-atomic: a kill before the rename leaves the whole old journal, and a
finished compaction leaves exactly the kept entries, which later appends extend."""
from __future__ import annotations

import os

import pytest
from pysyncobj.journal import FileJournal

from jobbie.actors.raft import journal


@pytest.fixture(autouse=True)
def atomic():
    original = FileJournal.deleteEntriesTo
    assert journal.install()
    yield
    FileJournal.deleteEntriesTo = original


def filled(path, n=100):
    j = FileJournal(str(path))
    for i in range(1, n + 1):
        j.add(b"entry-%d" % i * 20, i, 1 + i // 50)
    j.flush()
    return j


def entries(path):
    j = FileJournal(str(path))
    try:
        return [(bytes(c), i, t) for c, i, t in (j[k] for k in range(len(j)))]
    finally:
        j._destroy()


def test_a_compaction_keeps_exactly_the_entries_after_the_cut(tmp_path):
    path = tmp_path / "journal"
    j = filled(path)
    j.deleteEntriesTo(60)
    j.add(b"after", 101, 3)
    j.flush()
    j._destroy()
    got = entries(path)
    assert [i for _, i, _ in got] == list(range(61, 102))
    assert got[0] == (b"entry-61" * 20, 61, 2) and got[-1] == (b"after", 101, 3)
    assert not os.path.exists(str(path) + journal.SUFFIX)


@pytest.mark.parametrize("crash_after_writes", [0, 1, 17, 40])
def test_a_kill_during_the_compaction_leaves_the_old_journal_whole(tmp_path, monkeypatch, crash_after_writes):
    path = tmp_path / "journal"
    j = filled(path)
    before = entries(path)
    writes = [0]
    real_write = journal.pj.ResizableFile.write

    def dying_write(self, offset, values):
        if self._ResizableFile__fileName.endswith(journal.SUFFIX):
            writes[0] += 1
            if writes[0] > crash_after_writes:
                raise SystemExit("killed")  # the process dies here
        return real_write(self, offset, values)
    monkeypatch.setattr(journal.pj.ResizableFile, "write", dying_write)
    with pytest.raises(SystemExit):
        j.deleteEntriesTo(60)
    monkeypatch.undo()
    assert entries(path) == before  # a restart reads the whole old journal
    # and the next compaction works over the leftover file
    j2 = FileJournal(str(path))
    j2.deleteEntriesTo(90)
    j2._destroy()
    assert [i for _, i, _ in entries(path)] == list(range(91, 101))


def test_a_kill_just_before_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "journal"
    j = filled(path)
    before = entries(path)

    def no_rename(src, dst):
        raise SystemExit("killed before the rename")
    monkeypatch.setattr(journal.os, "replace", no_rename)
    with pytest.raises(SystemExit):
        j.deleteEntriesTo(30)
    monkeypatch.undo()
    assert entries(path) == before
