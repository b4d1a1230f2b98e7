"""Crash-atomic journal compaction for pysyncobj's FileJournal.

After a snapshot, pysyncobj drops the journal's entries before it with `deleteEntriesTo`, which
rewrites the journal file in place: it marks the file empty, then appends the kept entries one by
one. A kill in between leaves a journal that lost entries. `install()` replaces that method with
one that writes the kept entries to `journal.compacting` beside it, flushes it, and renames it over
the journal (then syncs the directory): before the rename the old journal is whole, after it the
new one is. A leftover `journal.compacting` from a kill is overwritten by the next compaction and
never read.

This relies on FileJournal's private layout (pysyncobj 0.3.17, pinned in setup.cfg); `install()`
checks the attributes it uses and leaves pysyncobj alone, with a warning, if they are not there.
"""
from __future__ import annotations

import logging
import os
import struct

from pysyncobj import journal as pj

log = logging.getLogger("jobbie.raft")
SUFFIX = ".compacting"


def _record(command, idx: int, term: int) -> bytes:
    data = struct.pack("<QQ", idx, term) + pj.to_bytes(command)
    size = struct.pack("<I", len(data))
    return size + data + size


def delete_entries_to(self, entry_to: int):
    """FileJournal.deleteEntriesTo, written aside and renamed into place."""
    kept = self._FileJournal__journal[entry_to:]
    old = self._FileJournal__journalFile
    path = old._ResizableFile__fileName
    aside = path + SUFFIX
    if os.path.exists(aside):
        os.unlink(aside)
    new = pj.ResizableFile(aside, defaultContent=self._FileJournal__getDefaultHeader())
    offset = pj.FIRST_RECORD_OFFSET
    for command, idx, term in kept:
        record = _record(command, idx, term)
        new.write(offset, record)
        offset += len(record)
    new.write(pj.LAST_RECORD_OFFSET_OFFSET, struct.pack("<I", offset))
    new.flush()
    os.replace(aside, path)
    new._ResizableFile__fileName = path  # (it grows the file by name later)
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    old._destroy()
    self._FileJournal__journalFile = new
    self._FileJournal__journal = list(kept)
    self._FileJournal__currentOffset = offset


def install() -> bool:
    """Use delete_entries_to for every FileJournal of this process; False if pysyncobj's layout differs."""
    needed = ("to_bytes", "ResizableFile", "FIRST_RECORD_OFFSET", "LAST_RECORD_OFFSET_OFFSET", "FileJournal")
    if not all(hasattr(pj, name) for name in needed) or not hasattr(pj.FileJournal, "_FileJournal__getDefaultHeader"):
        log.warning("pysyncobj's FileJournal is not the one jobbie knows: journal compaction stays in place "
                    "(not crash-atomic)")
        return False
    pj.FileJournal.deleteEntriesTo = delete_entries_to
    return True
