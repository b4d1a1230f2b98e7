"""The mirror's SQLite files: schema, batched upserts, time-boxed searches, rebuild files.

`DATA_DIR/mirror.sqlite` is derived data (rebuilt from LMDB at will): WAL,
`synchronous=OFF`, never read by the state machine, rebuilt from LMDB
whenever it is lost, damaged or asked for. It holds
- `jobs`: one row per job (rows.py), keyed by id (WITHOUT ROWID: one
  b-tree less to write per job), with indexes for the common searches
  (queue + state + created_at; state + created_at; created_at) and the
  equality filters (batch, worker, unique key);
- `tags`: one row per (job, tag key) for the all-tags-match filter;
- `meta`: `mirrored_index` (every change up to this raft index is in the
  file), the LMDB file it was built from, and the counters.

A rebuild writes `mirror.sqlite.rebuild` and renames it over the live file;
the live connection keeps answering until the rename.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time

from jobbie.transport.errors import InvalidArgument

from . import query, rows as R

log = logging.getLogger("jobbie.mirror")

#: 2: rows without the record blob and unsearched columns, WITHOUT ROWID. A file of another version is rebuilt at start.
SCHEMA_VERSION = 2
#: Encoded job records in one search answer at most (the page ends early; has_more says so).
RESULT_BYTES_MAX = 4 * 1024 * 1024
#: Time box of one search (count and page together) and of resolving a bulk filter.
SEARCH_TIME_MS_MAX = 2000
RESOLVE_TIME_MS_MAX = 10_000
#: Jobs a bulk filter may select.
RESOLVE_JOBS_MAX = 1_000_000

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, rev INTEGER NOT NULL, queue TEXT NOT NULL, state TEXT NOT NULL,
  priority_level INTEGER NOT NULL, attempt INTEGER NOT NULL, created_at INTEGER NOT NULL, scheduled_at INTEGER,
  started_at INTEGER, completed_at INTEGER, expire_at INTEGER, updated_at INTEGER, worker_id TEXT, batch_id TEXT,
  unique_key TEXT, errors TEXT, payload TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_queue_state_created ON jobs (queue, state, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_worker ON jobs (worker_id) WHERE worker_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_unique ON jobs (unique_key) WHERE unique_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS tags (job_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (job_id, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_key_value ON tags (key, value);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', {SCHEMA_VERSION}), ('mirrored_index', 0);
"""

_INSERT = f"INSERT OR REPLACE INTO jobs ({', '.join(R.COLUMNS)}) VALUES ({', '.join('?' * len(R.COLUMNS))})"


class Broken(Exception):
    """The SQLite file is damaged or gone: it must be rebuilt."""


def _connect(path: str, wal: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-65536")
    mode = conn.execute(f"PRAGMA journal_mode={'WAL' if wal else 'OFF'}").fetchone()[0]
    if wal and mode.lower() != "wal":
        raise sqlite3.DatabaseError(f"cannot switch {path} to WAL (journal mode {mode})")
    return conn


class MirrorDb:
    """One open mirror file (used by the mirror's pump thread only)."""

    def __init__(self, path: str, conn: sqlite3.Connection):
        self.path = path
        self.conn = conn
        self.inode = _inode(path)

    # ------------------------------------------------------------------ meta
    def meta(self, key: str, default=None):
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise Broken(str(exc))
        return default if row is None else row[0]

    def set_meta(self, values: dict):
        self.write([], values)

    # ---------------------------------------------------------------- writes
    def write(self, changes: list, meta: dict | None = None):
        """One transaction: upsert or delete each (job_id, raw record or None, error records); set meta.

        Raises Broken.
        """
        upserts, tags, ids = [], [], []
        for job_id, raw, errors in changes:
            ids.append((job_id,))
            if raw is None:
                continue
            try:
                row, job_tags = R.job_row(raw, errors)
            except Exception:  # a record we cannot read must not stop the mirror; it stays out of it
                log.exception("job %s: cannot mirror its record", job_id)
                continue
            upserts.append(row)
            tags.extend(job_tags)
        upserted = {row[0] for row in upserts}
        gone = [i for i in ids if i[0] not in upserted]
        c = self.conn
        try:
            c.execute("BEGIN")
            if gone:
                c.executemany("DELETE FROM jobs WHERE id = ?", gone)
                # A job's tags are set at enqueue and never change (storage/apply.py create_job):
                # a job that is still there keeps its tag rows, which the upsert below rewrites.
                c.executemany("DELETE FROM tags WHERE job_id = ?", gone)
            if upserts:
                c.executemany(_INSERT, upserts)
            if tags:
                c.executemany("INSERT OR REPLACE INTO tags (job_id, key, value) VALUES (?, ?, ?)", tags)
            for key, value in (meta or {}).items():
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
            c.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            try:
                c.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass
            raise Broken(f"{type(exc).__name__}: {exc}")

    # ----------------------------------------------------------- reconciling
    def revs_between(self, after: str | None, last: str) -> dict:
        """{job id: rev} of the rows with after < id <= last."""
        try:
            if after is None:
                cur = self.conn.execute("SELECT id, rev FROM jobs WHERE id <= ?", (last,))
            else:
                cur = self.conn.execute("SELECT id, rev FROM jobs WHERE id > ? AND id <= ?", (after, last))
            return dict(cur.fetchall())
        except sqlite3.DatabaseError as exc:
            raise Broken(str(exc))

    def ids_after(self, after: str | None, limit: int) -> list[str]:
        try:
            if after is None:
                cur = self.conn.execute("SELECT id FROM jobs ORDER BY id LIMIT ?", (limit,))
            else:
                cur = self.conn.execute("SELECT id FROM jobs WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
            return [r[0] for r in cur.fetchall()]
        except sqlite3.DatabaseError as exc:
            raise Broken(str(exc))

    def count(self) -> int:
        try:
            return self.conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise Broken(str(exc))

    # ---------------------------------------------------------------- reads
    def _timed(self, budget_ms: int, fn):
        deadline = time.monotonic() + budget_ms / 1000.0
        self.conn.set_progress_handler(lambda: time.monotonic() > deadline, 20_000)
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "interrupted" in text:
                raise InvalidArgument(f"the search ran longer than {budget_ms} ms and was stopped; narrow it "
                                      "(queue, state, a time range) or drop payload_jq/payload_contains",
                                      reason="query_too_slow")
            if "JSON" in text or "json" in text:
                raise InvalidArgument(f"the search failed in SQLite: {text}", field="payload_jq",
                                      reason="query_syntax")
            raise Broken(text)
        except sqlite3.DatabaseError as exc:
            raise Broken(str(exc))
        finally:
            self.conn.set_progress_handler(None, 0)

    def search(self, args: dict, records_of, budget_ms: int = SEARCH_TIME_MS_MAX) -> dict:
        """The `ok` map of search_jobs; `records_of(ids)` gives {id: LMDB record} of the page's jobs.

        Raises InvalidArgument or Broken (SourceUnavailable from `records_of` passes through).
        """
        started = time.perf_counter()
        plan = query.SearchPlan(args)

        def run():
            total = self.conn.execute(plan.count_sql, plan.count_params).fetchone()[0]
            return total, self.conn.execute(plan.page_sql, plan.page_params).fetchall()

        total, found = self._timed(budget_ms, run)
        records = records_of([job_id for job_id, _ in found[:plan.limit]])
        jobs, size, last, cut = [], 0, None, False
        for job_id, key in found[:plan.limit]:
            record = records.get(job_id)
            if record is not None:  # else deleted since the mirror last wrote its row
                if jobs and size + len(record) > RESULT_BYTES_MAX:
                    cut = True
                    break
                jobs.append(R.public_job(record))
                size += len(record)
            last = (key, job_id)
        has_more = cut or len(found) > plan.limit
        return {"jobs": jobs, "total": total, "has_more": has_more,
                "cursor": plan.cursor_after(*last) if has_more and last else None,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)}

    def resolve(self, filters: dict, budget_ms: int = RESOLVE_TIME_MS_MAX) -> list[tuple[str, str]]:
        """(id, state) of every job matching a bulk filter. Raises InvalidArgument or Broken."""
        sql, params = query.resolve_sql(filters)

        def run():
            rows = self.conn.execute(sql + f" LIMIT {RESOLVE_JOBS_MAX + 1}", params).fetchall()
            if len(rows) > RESOLVE_JOBS_MAX:
                raise InvalidArgument(f"the filter selects more than {RESOLVE_JOBS_MAX} jobs; narrow it",
                                      field="filter", reason="too_large")
            return rows

        return self._timed(budget_ms, run)

    def states(self, ids: list[str]) -> dict:
        """{job id: state} of the given ids that the mirror holds."""
        out = {}
        try:
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                marks = ", ".join("?" * len(part))
                out.update(self.conn.execute(f"SELECT id, state FROM jobs WHERE id IN ({marks})", part).fetchall())
        except sqlite3.DatabaseError as exc:
            raise Broken(str(exc))
        return out

    def close(self):
        try:
            self.conn.close()
        except sqlite3.Error:
            pass


def _inode(path: str):
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return None


def _remove(path: str):
    for p in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


class MirrorFiles:
    """Where the mirror's files live, and the moves between them."""

    def __init__(self, path: str):
        self.path = path
        self.temp_path = path + ".rebuild"

    def open_live(self) -> tuple[MirrorDb | None, str]:
        """The live file if it is sound: (db, "ok"); else (None, "missing" | "damaged: ..." | "of schema version N")
        with it removed."""
        _remove(self.temp_path)  # what a rebuild cut short by a crash left behind
        if not os.path.exists(self.path):
            _remove(self.path)  # a stray -wal of a deleted file must not be replayed into a new one
            return None, "missing"
        conn = None
        try:
            conn = _connect(self.path)
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is None or version[0] != SCHEMA_VERSION:
                conn.close()
                log.warning("mirror file %s has schema version %s, this jobbie writes %d; it will be rebuilt "
                            "from LMDB", self.path, version and version[0], SCHEMA_VERSION)
                _remove(self.path)
                return None, f"of schema version {version and version[0]}"
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            log.warning("mirror file %s is damaged (%s); it will be rebuilt from LMDB", self.path, exc)
            _remove(self.path)
            return None, f"damaged: {exc}"
        return MirrorDb(self.path, conn), "ok"

    def create_live(self) -> MirrorDb:
        """A new, empty live file (nothing to mirror yet)."""
        _remove(self.path)
        conn = _connect(self.path)
        conn.executescript(SCHEMA)
        return MirrorDb(self.path, conn)

    def create_temp(self) -> MirrorDb:
        _remove(self.temp_path)
        conn = _connect(self.temp_path, wal=False)
        conn.executescript(SCHEMA)
        return MirrorDb(self.temp_path, conn)

    def discard_temp(self, temp: MirrorDb | None):
        if temp is not None:
            temp.close()
        _remove(self.temp_path)

    def swap(self, temp: MirrorDb, live: MirrorDb | None) -> MirrorDb:
        """Put the rebuilt file in place of the live one; returns the new live db."""
        mode = temp.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise Broken(f"cannot switch the rebuilt file to WAL (journal mode {mode})")
        temp.close()
        if live is not None:
            live.close()
        for p in (self.path + "-wal", self.path + "-shm", self.path + "-journal"):
            try:
                os.remove(p)
            except FileNotFoundError:
                pass
        os.replace(self.temp_path, self.path)
        return MirrorDb(self.path, _connect(self.path))

    def drop_live(self, live: MirrorDb | None):
        """Close and remove a damaged live file."""
        if live is not None:
            live.close()
        _remove(self.path)

    def lost(self, live: MirrorDb) -> bool:
        """True when the live file was deleted or replaced behind our back."""
        return _inode(self.path) != live.inode
