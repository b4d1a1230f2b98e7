"""The audit trail: who did what to held jobs, budgets and prices, and when.

One record per event, in the `audit` db under a sequence number that only
grows, and indexed by job (`audit_by_job`) and by budget (`audit_by_budget`).
Events (`kind`):

- ``held``: a job entered `held` (enqueue with hold, a budget, an agent, a pause);
- ``released``: a job left `held` (approve, reject, cancel, delete, its TTL,
  its hold time-out, its budget's window rolling over); `to_state` says where;
- ``approved`` / ``rejected``: the decision itself, with its `note`;
- ``budget_set`` / ``budget_deleted`` / ``budget_extended`` / ``budget_exceeded``;
- ``price_set`` / ``price_deleted``.

`who` is the op's `actor` argument when it has one, else the client key of
the request (the gateway puts it in the op), else `server` for what the
state machine does by itself. Records are replicated like everything else,
so every node lists the same trail.
"""
from __future__ import annotations

from jobbie.transport.codec import decode_trusted

from . import keys as K

KINDS = ("held", "released", "approved", "rejected", "budget_set", "budget_deleted", "budget_extended",
         "budget_exceeded", "price_set", "price_deleted")
#: meta key of the last sequence number used.
SEQ = b"audit_seq"


def record(a, kind: str, job_id: str | None = None, budget_id: str | None = None, who: str | None = None,
           **fields):
    """Append one event (fields that are None are left out)."""
    seq = a.meta_int(SEQ) + 1
    a.set_meta_int(SEQ, seq)
    rec = {"seq": seq, "at": a.now, "kind": kind, "op": a.op_name, "who": who or a.who,
           "job_id": job_id, "budget_id": budget_id}
    rec.update(fields)
    rec = {k: v for k, v in rec.items() if v is not None}
    a.put("audit", K.u64(seq), rec)
    if job_id is not None:
        a.txn.put(K.seq_index_key(job_id, seq), b"", db=a.db["audit_by_job"])
    if budget_id is not None:
        a.txn.put(K.seq_index_key(budget_id, seq), b"", db=a.db["audit_by_budget"])
    return rec


# ------------------------------------------------------------------ reads

def for_job(txn, dbs, job_id: str, limit: int = 100) -> list:
    """A job's own events, oldest first (the newest `limit`)."""
    return _by_index(txn, dbs, "audit_by_job", job_id, limit)


def _by_index(txn, dbs, db: str, ident: str, limit: int, before: int | None = None) -> list:
    prefix = K.seq_index_prefix(ident)
    cur = txn.cursor(db=dbs[db])
    seqs = []
    start = prefix + K.u64(before) if before is not None else prefix + b"\xff" * 8
    if cur.set_range(start):
        found = cur.prev()
    else:
        found = cur.last()
    while found and len(seqs) < limit:
        key = bytes(cur.key())
        if not key.startswith(prefix):
            break
        seqs.append(K.read_u64(key[len(prefix):]))
        found = cur.prev()
    out = []
    for seq in reversed(seqs):
        raw = txn.get(K.u64(seq), db=dbs["audit"])
        if raw is not None:
            out.append(decode_trusted(raw))
    return out


def read_list_audit(txn, dbs, args):
    """Newest first; `before` (a `seq`) pages back. Filters: job_id, budget_id, kind, since, until."""
    limit, before = args.get("limit", 100), args.get("before")
    kinds = set(args["kind"]) if args.get("kind") else None
    since, until = args.get("since"), args.get("until")
    if args.get("job_id") or args.get("budget_id"):
        db, ident = ("audit_by_job", args["job_id"]) if args.get("job_id") else ("audit_by_budget", args["budget_id"])
        # Index order is seq order; read enough to filter, newest first.
        candidates = list(reversed(_by_index(txn, dbs, db, ident, 10_000, before)))
    else:
        candidates = _scan_back(txn, dbs, before)
    events, more = [], False
    for rec in candidates:
        if kinds and rec["kind"] not in kinds:
            continue
        if args.get("budget_id") and args.get("job_id") and rec.get("budget_id") != args["budget_id"]:
            continue
        if until is not None and rec["at"] > until:
            continue
        if since is not None and rec["at"] < since:
            break
        if len(events) >= limit:
            more = True
            break
        events.append(rec)
    return {"events": events, "cursor": events[-1]["seq"] if more and events else None, "has_more": more}


def _scan_back(txn, dbs, before: int | None):
    """Every record with seq < `before` (all, when None), newest first."""
    cur = txn.cursor(db=dbs["audit"])
    if before is None:
        found = cur.last()
    else:
        found = cur.prev() if cur.set_range(K.u64(before)) else cur.last()
    while found:
        yield decode_trusted(cur.value())
        found = cur.prev()


READERS = {"list_audit": read_list_audit}
