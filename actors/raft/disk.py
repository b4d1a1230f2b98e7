"""Free space under the data dir, watched so a filling disk stops writes before LMDB or the journal fail.

LMDB (writemap off) answers a full disk with an error, and pysyncobj's journal is a memory map that
answers it with SIGBUS; either way the raft actor would crash and crash again. So the raft actor
measures the free space of the data dir's filesystem at each status tick (200 ms) and reports it;
while it is under the reserve (`--disk-free-min-mb`), the gateway refuses new writes with
RESOURCE_EXHAUSTED / disk_full (reads, deletes and the lifecycle's ticks go on), and once space is
freed past the reserve plus a margin, writes resume by themselves. In a cluster the raft actor also
takes nothing from the leader while its disk is low, and as leader refuses the writes other nodes
forward (JobbieRaft._under_disk_reserve).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("jobbie.raft")
MIB = 1024 * 1024
#: Free space must pass the reserve by this much before writes resume (no flapping at the edge).
RESUME_MARGIN_BYTES = 16 * MIB


class DiskWatch:
    def __init__(self, path: str, min_free_bytes: int, statvfs=os.statvfs):
        self.path = path
        self.min_free_bytes = min_free_bytes
        self.statvfs = statvfs
        self.low = False

    def check(self) -> dict:
        """{free_bytes, min_free_bytes, low}; logs when writes stop and when they resume."""
        try:
            st = self.statvfs(self.path)
            free = st.f_bavail * st.f_frsize
        except OSError:
            return {"free_bytes": None, "min_free_bytes": self.min_free_bytes, "low": self.low}
        if not self.low and free < self.min_free_bytes:
            self.low = True
            log.warning("the disk of %s has %d MiB free, under the %d MiB reserve: writes are refused "
                        "(disk_full) until space is freed", self.path, free // MIB, self.min_free_bytes // MIB)
        elif self.low and free >= self.min_free_bytes + RESUME_MARGIN_BYTES:
            self.low = False
            log.warning("the disk of %s has %d MiB free again: writes resume", self.path, free // MIB)
        return {"free_bytes": free, "min_free_bytes": self.min_free_bytes, "low": self.low}
