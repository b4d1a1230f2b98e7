"""Log compaction for pysyncobj with jobbie's own snapshot of LMDB.

pysyncobj calls `serialize` on its tick thread when the journal is long
enough. Copying a large LMDB there would stall elections (everything of
pysyncobj runs on that one thread), so `serialize` only opens a read transaction — on the tick thread,
right after the last apply, so it sees LMDB at exactly the applied index —
and a thread copies from it into a private file. Until that thread is done,
`state` answers SERIALIZING; then the file is renamed over pysyncobj's
snapshot path and `state` answers SUCCESS once, and pysyncobj truncates its
journal. (pysyncobj's own rename of its `.tmp` file fails harmlessly: we
never create it.)

`deserialize` is called at start-up and when a leader installs a snapshot
on this node. If the snapshot is ahead of local LMDB, it replaces LMDB:
unpack beside it, close, swap directories by rename, reopen. Any failure
there exits the process (pysyncobj would swallow the error and acknowledge
the install); the supervisor restarts it.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time

from pysyncobj.config import SERIALIZER_STATE

from jobbie.storage.env import Store
from jobbie.storage.machine import applied_index

from . import recovery

log = logging.getLogger("jobbie.raft")

EXIT_SNAPSHOT_FAULT = 71


class Snapshotter:
    def __init__(self, raft_dir: str, lmdb_path: str, holder):
        """`holder` owns the Store: it has `.store` and `.applied` and `reopened(store)`."""
        self.path = os.path.join(raft_dir, "snapshot")
        self.private = os.path.join(raft_dir, "snapshot.jobbie-tmp")
        self.lmdb_path = lmdb_path
        self.holder = holder
        self._thread = None
        self._result = None  # None while running, then (ok, index, error)
        self._generation = 0  # bumped by every install; a copy from before one is dropped
        self.last = None  # {"index", "at", "bytes", "seconds"}
        header = recovery.read_snapshot_header(self.path)
        if header is not None:
            self.last = {"index": header["index"], "at": int(os.path.getmtime(self.path) * 1000),
                         "bytes": os.path.getsize(self.path), "seconds": None}

    # ------------------------------------------------------------- serialize
    def serialize(self, _pysyncobj_tmp_path: str, internal):
        if self._thread is not None:
            return
        index = internal[0][1]
        store = self.holder.store
        txn = store.env.begin()
        generation = self._generation
        self._result = None

        def copy():
            started = time.monotonic()
            try:
                recovery.write_snapshot(self.private, store.env, txn, index, internal)
                self._result = (True, index, None, generation, time.monotonic() - started)
            except Exception as exc:  # noqa: BLE001 - reported through state()
                log.exception("snapshot at index %d failed", index)
                self._result = (False, index, exc, generation, 0.0)
            finally:
                txn.abort()

        self._thread = threading.Thread(target=copy, name="jobbie-snapshot", daemon=True)
        self._thread.start()

    def state(self):
        if self._thread is None:
            return SERIALIZER_STATE.NOT_SERIALIZING
        if self._thread.is_alive():
            return SERIALIZER_STATE.SERIALIZING
        self._thread.join()
        self._thread = None
        ok, index, error, generation, seconds = self._result
        if not ok:
            return SERIALIZER_STATE.FAILED
        if generation != self._generation:
            os.unlink(self.private)  # a newer snapshot was installed meanwhile
            return SERIALIZER_STATE.FAILED
        os.replace(self.private, self.path)
        recovery.fsync_dir(os.path.dirname(self.path))
        self.last = {"index": index, "at": int(time.time() * 1000), "bytes": os.path.getsize(self.path),
                     "seconds": round(seconds, 3)}
        log.info("snapshot at index %d written (%d bytes, %.2fs)", index, self.last["bytes"], seconds)
        return SERIALIZER_STATE.SUCCESS

    # ----------------------------------------------------------- deserialize
    def deserialize(self, path: str):
        try:
            header = recovery.verify_snapshot(path)
            internal = recovery.snapshot_internal(header)
            index = header["index"]
            if index <= self.holder.applied:
                return internal  # LMDB already holds this state (or later)
            self._generation += 1
            self.install(path, header)
            self.last = {"index": index, "at": int(time.time() * 1000), "bytes": os.path.getsize(path),
                         "seconds": None}
            return internal
        except BaseException:
            log.critical("could not load snapshot %s; exiting so the supervisor restarts this node's raft "
                         "actor (pysyncobj would otherwise acknowledge a snapshot it did not install)", path,
                         exc_info=True)
            logging.shutdown()
            os._exit(EXIT_SNAPSHOT_FAULT)

    def install(self, path: str, header: dict):
        fresh = self.lmdb_path + ".installing"
        old = self.lmdb_path + ".replaced"
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        recovery.unpack_snapshot(path, header, fresh)
        self.holder.store.close()
        os.replace(self.lmdb_path, old)
        os.replace(fresh, self.lmdb_path)
        recovery.fsync_dir(os.path.dirname(self.lmdb_path))
        store = Store(self.lmdb_path)
        with store.begin() as txn:
            applied = applied_index(txn, store.dbs)
        self.holder.reopened(store, applied)
        shutil.rmtree(old, ignore_errors=True)
        log.warning("installed snapshot at raft index %d (LMDB applied index now %d)", header["index"], applied)
