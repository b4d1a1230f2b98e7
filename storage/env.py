"""Opening the LMDB store.

One environment per node, written only by the raft actor's state machine and
opened read-only by the other actors for point reads. Flags follow
what py-lmdb documents and we measured: no fsync (the raft journal is what survives), `writemap`
off so a full disk is an error rather than SIGBUS, the 0.9 on-disk engine
named explicitly, and a large sparse map so `MapFullError` is not a surprise.
"""
from __future__ import annotations

import os

import lmdb

from .keys import DB_NAMES

#: Sparse on 64-bit Linux: only what is written takes disk space.
MAP_SIZE = 64 * 1024**3
MAX_READERS = 512


class Store:
    """An LMDB environment with jobbie's named databases."""

    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        if not readonly:
            os.makedirs(path, exist_ok=True)
        kwargs = dict(map_size=MAP_SIZE, max_dbs=len(DB_NAMES) + 4, max_readers=MAX_READERS,
                      subdir=True, sync=False, metasync=False, writemap=False, readahead=False,
                      lock=True)
        try:
            self.env = lmdb.open(path, readonly=readonly, create=not readonly, lib_version=0, **kwargs)
        except TypeError:  # py-lmdb before 3.0 has a single engine
            self.env = lmdb.open(path, readonly=readonly, create=not readonly, **kwargs)
        if not readonly:
            self.env.reader_check()
        self.dbs = {}
        #: The state machine's decoded budget records (storage/budgets.py Book), valid while this is open.
        self.budget_book = None
        if readonly:
            # open_db without a transaction: py-lmdb then keeps the handle valid
            # for later read transactions (one opened in our own read txn is not).
            for name in DB_NAMES:
                self.dbs[name.decode()] = self.env.open_db(name, create=False)
        else:
            for name in DB_NAMES:
                self.dbs[name.decode()] = self.env.open_db(name, create=True)

    def begin(self, write: bool = False):
        return self.env.begin(write=write)

    def close(self):
        self.env.close()


def store_ready(path: str) -> bool:
    """True once the writer has created the environment and its databases."""
    return os.path.exists(os.path.join(path, "data.mdb"))
