"""Shared fixtures for the unit tests: a real LMDB store in tmp_path and a driver for apply_batch.

`Harness` wraps one `Store`. It builds op dicts the way the gateway does (client ops go
through `transport.ops.validate`, so defaults are filled exactly as on the wire; the
internal `tick` takes its args as given), applies them at increasing raft indexes, and
reads the result back through `storage/reads.py` or raw cursors.
"""
from __future__ import annotations

import hashlib
import itertools

import pytest

from jobbie.storage import keys as K
from jobbie.storage import reads
from jobbie.storage.env import Store
from jobbie.storage.machine import apply_batch
from jobbie.storage.states import ACTIVE, PENDING, RETRYING, SCHEDULED, STATES, TERMINAL
from jobbie.transport.codec import decode_trusted
from jobbie.transport.ops import OPS, validate

#: A fixed, realistic start of the state clock (ms since the epoch).
T0 = 1_700_000_000_000


class Harness:
    """One LMDB store plus helpers to apply ops and read state back."""

    T0 = T0

    def __init__(self, path: str):
        self.store = Store(path)
        self.dbs = self.store.dbs
        self.index = 0  # last raft index handed to apply_batch
        self.last_changes = None
        self._job_numbers = itertools.count(1)
        self._other_numbers = itertools.count(1)

    def close(self):
        if self.store is not None:
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ building ops
    def args(self, name: str, args: dict | None = None) -> dict:
        """Args as the state machine receives them: validated for client ops, as given for internal ones."""
        args = dict(args or {})
        if OPS[name].path == "internal":
            return args
        return validate(name, args)[1]

    def new_job_id(self) -> str:
        return f"job_{next(self._job_numbers)}"

    def op(self, name: str, args: dict | None = None, now: int = T0, ids: list | None = None,
           raw: bool = False) -> dict:
        """One op dict; enqueue/enqueue_batch get fresh ids unless `ids` is given."""
        clean = dict(args or {}) if raw or name not in OPS else self.args(name, args)
        if ids is None:
            if name in ("enqueue", "replay_job"):
                ids = [self.new_job_id()]
            elif name == "enqueue_batch":
                ids = [self.new_job_id() for _ in clean["jobs"]]
                if clean.get("batch"):
                    ids += [f"batch_{next(self._other_numbers)}", self.new_job_id()]
            else:
                ids = []
        return {"op": name, "args": clean, "now": now, "ids": ids}

    # ------------------------------------------------------------------ applying
    def apply(self, ops: list, index: int | None = None) -> list | None:
        """Apply `ops` as one raft entry (next index unless given); returns apply_batch's results."""
        idx = self.index + 1 if index is None else index
        with self.store.begin(write=True) as txn:
            results, changes = apply_batch(self.store, txn, idx, ops)
        self.index = max(self.index, idx)
        self.last_changes = changes
        return results

    def run(self, name: str, args: dict | None = None, now: int = T0, ids: list | None = None,
            raw: bool = False) -> dict:
        """One op in its own entry; returns its result map."""
        (result,) = self.apply([self.op(name, args, now=now, ids=ids, raw=raw)])
        return result

    def ok(self, name: str, args: dict | None = None, now: int = T0, ids: list | None = None) -> dict:
        """Like run, but the op must succeed; returns the `ok` map."""
        result = self.run(name, args, now=now, ids=ids)
        assert "ok" in result, f"{name} {args} was refused: {result}"
        return result["ok"]

    # shorthands for the common lifecycle steps
    def enqueue(self, now: int = T0, job_id: str | None = None, **args) -> str:
        args.setdefault("queue", "q")
        args.setdefault("payload", {"n": 1})
        ids = [job_id] if job_id else None
        return self.ok("enqueue", args, now=now, ids=ids)["job_id"]

    def fetch(self, now: int = T0, queues=("q",), worker_id: str = "w1", **args) -> list:
        return self.ok("fetch", dict(queues=list(queues), worker_id=worker_id, **args), now=now)["jobs"]

    def fetch_one(self, now: int = T0, **kw) -> dict:
        jobs = self.fetch(now=now, **kw)
        assert len(jobs) == 1, jobs
        return jobs[0]

    def tick(self, now: int, limit: int = 1000) -> dict:
        return self.ok("tick", {"limit": limit}, now=now)

    # ------------------------------------------------------------------ reading
    def job(self, job_id: str) -> dict | None:
        """The job as get_job shows it (with `errors`), or None."""
        with self.store.begin() as txn:
            return reads.get_job(txn, self.dbs, job_id)

    def raw_job(self, job_id: str) -> dict | None:
        """The stored record, private fields included."""
        with self.store.begin() as txn:
            raw = txn.get(job_id.encode(), db=self.dbs["jobs"])
        return None if raw is None else decode_trusted(raw)

    def state(self, job_id: str) -> str | None:
        job = self.raw_job(job_id)
        return None if job is None else job["state"]

    def queues(self) -> dict:
        """list_queues as {name: row}."""
        with self.store.begin() as txn:
            return {row["name"]: row for row in reads.list_queues(txn, self.dbs)}

    def counts(self, queue: str = "q") -> dict:
        """Per-state counts of one queue (all zero for a queue list_queues does not know)."""
        row = self.queues().get(queue)
        return {s: (row[s] if row else 0) for s in STATES}

    def items(self, db: str) -> list[tuple[bytes, bytes]]:
        with self.store.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self.dbs[db])]

    def keys(self, db: str) -> list[bytes]:
        return [k for k, _ in self.items(db)]

    def time_index(self, db: str) -> list[tuple[int, str]]:
        """(time, id) pairs of a due/leases/expiry/dedupe_at index, in key order."""
        return [K.parse_time_key(k) for k in self.keys(db)]

    def pending_ids(self, queue: str | None = None) -> list[str]:
        """Job ids in the pending index, in key (= fetch) order."""
        out = []
        for k, v in self.items("pending"):
            if queue is None or k.startswith(K.pending_prefix(queue)):
                out.append(v.decode())
        return out

    def job_ids(self) -> list[str]:
        return [k.decode() for k in self.keys("jobs")]

    def digest(self) -> str:
        """sha256 over every key and value of every named database."""
        h = hashlib.sha256()
        with self.store.begin() as txn:
            for name in K.DB_NAMES:
                h.update(b"\x00db\x00" + name)
                for k, v in txn.cursor(db=self.dbs[name.decode()]):
                    h.update(len(k).to_bytes(4, "big") + bytes(k) + len(v).to_bytes(4, "big") + bytes(v))
        return h.hexdigest()

    def meta_int(self, name: bytes) -> int | None:
        with self.store.begin() as txn:
            raw = txn.get(name, db=self.dbs["meta"])
        return None if raw is None else K.read_u64(raw)

    # ------------------------------------------------------------------ invariants
    def assert_consistent(self):
        """Every job is in exactly the index its state needs, and the per-queue counts add up."""
        jobs = {}
        with self.store.begin() as txn:
            for k, v in txn.cursor(db=self.dbs["jobs"]):
                jobs[bytes(k).decode()] = decode_trusted(v)
        pending = self.items("pending")
        due = self.time_index("due")
        leases = self.time_index("leases")
        expiry = self.time_index("expiry")

        want_pending, want_due, want_leases = [], [], []
        counts: dict[str, dict[str, int]] = {}
        for jid, job in jobs.items():
            assert job["id"] == jid
            assert job["state"] in STATES, job
            counts.setdefault(job["queue"], {s: 0 for s in STATES})[job["state"]] += 1
            if job["state"] == PENDING:
                want_pending.append((K.pending_key(job["queue"], job["priority"], job["seq"]), jid.encode()))
            elif job["state"] in (SCHEDULED, RETRYING):
                want_due.append((job["run_at"], jid))
            elif job["state"] == ACTIVE:
                want_leases.append((job["lease_expires_at"], jid))
            if job["state"] in TERMINAL:
                assert (job.get("expire_at"), jid) not in expiry, f"terminal {jid} still in the expiry index"
            elif job["state"] != ACTIVE and job.get("expire_at") is not None:
                assert (job["expire_at"], jid) in expiry, f"{jid} ({job['state']}) lost its expiry key"
        assert sorted(pending) == sorted(want_pending), "pending index does not match pending jobs"
        assert sorted(due) == sorted(want_due), "due index does not match scheduled/retrying jobs"
        assert sorted(leases) == sorted(want_leases), "leases index does not match active jobs"
        lease_ids = [jid for _, jid in leases]
        assert len(lease_ids) == len(set(lease_ids)), "a job holds two leases"
        for at, jid in expiry:
            assert jid in jobs, f"expiry key for missing job {jid}"
            assert jobs[jid]["expire_at"] == at and jobs[jid]["state"] not in TERMINAL
        for name, row in self.queues().items():
            want = counts.get(name, {s: 0 for s in STATES})
            assert {s: row[s] for s in STATES} == want, f"counts of queue {name}"
        for name in counts:
            assert name in self.queues(), f"queue {name} has jobs but no queue record"
        for k, v in self.items("unique"):
            holder, until = decode_trusted(v)
            if until is None:
                assert holder in jobs and jobs[holder]["state"] not in TERMINAL, \
                    f"unique lock {k!r} held by finished or missing job {holder}"


@pytest.fixture
def store(tmp_path):
    """A real LMDB store in tmp_path."""
    s = Store(str(tmp_path / "lmdb"))
    yield s
    s.close()


@pytest.fixture
def h(tmp_path):
    """A Harness on a fresh store."""
    harness = Harness(str(tmp_path / "lmdb"))
    yield harness
    harness.close()


@pytest.fixture
def make_harness(tmp_path):
    """Factory for extra harnesses (two stores side by side, or one per Hypothesis example)."""
    made = []
    numbers = itertools.count(1)

    def make() -> Harness:
        harness = Harness(str(tmp_path / f"lmdb{next(numbers)}"))
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()
