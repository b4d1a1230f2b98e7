"""The mirror's read-only view of LMDB: the truth it copies from.

Every call opens one short read transaction, so a long rebuild never pins an
old LMDB snapshot. The store is opened once the raft actor has created it,
and reopened after an error or when raft reports a new LMDB file (a snapshot
was installed).
"""
from __future__ import annotations

import logging

import lmdb

from jobbie.storage import keys as K
from jobbie.storage.env import Store, store_ready
from jobbie.storage.machine import applied_index
from jobbie.transport.codec import decode_trusted

log = logging.getLogger("jobbie.mirror")


class SourceUnavailable(Exception):
    """LMDB cannot be read right now (not created yet, or being replaced)."""


class JobSource:
    def __init__(self, path: str):
        self.path = path
        self.store: Store | None = None
        self.lmdb_id = None

    def watch(self, lmdb_id) -> bool:
        """The raft actor reports the current LMDB file; True when it changed (reopen and reconcile)."""
        if not lmdb_id or lmdb_id == self.lmdb_id:
            return False
        changed = self.lmdb_id is not None
        if changed and self.store is not None:
            self.store.close()
            self.store = None
        self.lmdb_id = lmdb_id
        return changed

    def ready(self) -> bool:
        return self.store is not None or store_ready(self.path)

    def _txn(self):
        if self.store is None:
            if not store_ready(self.path):
                raise SourceUnavailable("LMDB is not created yet")
            try:
                self.store = Store(self.path, readonly=True)
            except lmdb.Error as exc:
                raise SourceUnavailable(str(exc))
        return self.store.begin()

    def _run(self, fn):
        try:
            with self._txn() as txn:
                return fn(txn, self.store.dbs)
        except lmdb.Error as exc:
            log.warning("cannot read LMDB (%s); reopening it", exc)
            if self.store is not None:
                self.store.close()
            self.store = None
            raise SourceUnavailable(str(exc))

    def applied_index(self) -> int:
        return self._run(applied_index)

    def read(self, ids) -> list[tuple[str, bytes | None, list]]:
        """(id, raw record or None when gone, error records) for each id."""
        def fn(txn, dbs):
            out = []
            errors = txn.cursor(db=dbs["errors"])
            for job_id in ids:
                raw = txn.get(job_id.encode(), db=dbs["jobs"])
                out.append((job_id, None if raw is None else bytes(raw),
                            [] if raw is None else _errors(errors, job_id)))
            return out
        return self._run(fn)

    def records(self, ids) -> dict:
        """{id: raw record} of the given ids that LMDB holds (what a search page shows)."""
        def fn(txn, dbs):
            out = {}
            for job_id in ids:
                raw = txn.get(job_id.encode(), db=dbs["jobs"])
                if raw is not None:
                    out[job_id] = bytes(raw)
            return out
        return self._run(fn)

    def scan(self, after: str | None, limit: int, errors: bool = False) -> list[tuple]:
        """Up to `limit` (id, raw record) in id order, after `after` (exclusive); with `errors`,
        (id, raw record, error records)."""
        def fn(txn, dbs):
            cur = txn.cursor(db=dbs["jobs"])
            errors_cur = txn.cursor(db=dbs["errors"]) if errors else None
            out = []
            start = None if after is None else after.encode()
            if not (cur.first() if start is None else cur.set_range(start)):
                return out
            for key, value in cur:
                if start is not None and key == start:
                    continue
                job_id = bytes(key).decode()
                out.append((job_id, bytes(value), _errors(errors_cur, job_id)) if errors else (job_id, bytes(value)))
                if len(out) >= limit:
                    break
            return out
        return self._run(fn)

    def close(self):
        if self.store is not None:
            self.store.close()
            self.store = None


def _errors(cur, job_id: str) -> list:
    """The error records of one job, read with `cur`, a cursor on the errors table (one per transaction)."""
    prefix = K.error_prefix(job_id)
    out = []
    if cur.set_range(prefix):
        for key, value in cur:
            if not key.startswith(prefix):
                break
            out.append(decode_trusted(value))
    return out
