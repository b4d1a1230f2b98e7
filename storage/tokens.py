"""API tokens in the replicated state: create, list, revoke; what the gateway checks requests against.

A token is `TOKEN_ID.SECRET`. Only the SHA-256 of the secret is stored (db `tokens`, keyed by the
token id), with its name, role and who made it; the secret itself is made by the gateway, shown to
the caller once, and never written anywhere. Every node holds the same records (they are raft
ops), so a token works on any node and a revocation reaches all of them.

Roles, each including the ones before it where that reads naturally:
- `read`: every read (get_job, list_*, search_jobs, usage_summary, cluster_status, ...);
- `worker`: read, and fetch, heartbeat, ack, fail;
- `producer`: read, and enqueue, enqueue_batch;
- `admin`: everything (management, bulk, budgets, approvals, tokens, cluster changes).

The first admin token of a node started with `--auth` is made by a `create_token` with
`bootstrap`, which the state machine takes only while no token exists at all (so of several
nodes bootstrapping at once, one wins and the others learn it from the refusal).
Pure: the gateway stamps the id and the hash; nothing here reads a clock or makes randomness.
"""
from __future__ import annotations

from jobbie.transport.codec import decode_trusted
from jobbie.transport.errors import error_result

from . import audit

ROLES = ("read", "worker", "producer", "admin")


def _ok(**fields):
    return {"ok": fields}


def public(rec: dict) -> dict:
    """A token record without its hash."""
    return {k: v for k, v in rec.items() if k != "hash"}


def _live_by_name(a, name: str):
    with a.txn.cursor(db=a.db["tokens"]) as cur:
        for _, raw in cur:
            rec = decode_trusted(raw)
            if rec["name"] == name and rec.get("revoked_at") is None:
                return rec
    return None


def _any(a) -> bool:
    with a.txn.cursor(db=a.db["tokens"]) as cur:
        return cur.first()


def handle_create_token(a, args: dict, ids: list) -> dict:
    if len(ids) != 2:
        return error_result("INVALID_ARGUMENT", "create_token needs the gateway's token id and hash", "op",
                            "malformed")
    token_id, digest = ids
    if args.get("bootstrap") and _any(a):
        return error_result("FAILED_PRECONDITION", "this cluster already has tokens; the first admin token is "
                            "made only once", "bootstrap", "tokens_exist")
    if _live_by_name(a, args["name"]) is not None:
        return error_result("ALREADY_EXISTS", f"a token named {args['name']!r} exists; revoke it first or pick "
                            "another name", "name", "name_taken")
    rec = {"id": token_id, "name": args["name"], "role": args["role"], "hash": digest, "created_at": a.now,
           "created_by": a.who, "note": args.get("note"), "revoked_at": None}
    a.put("tokens", token_id.encode(), rec)
    audit.record(a, "token_created", reason=f"{rec['name']} ({rec['role']})", note=args.get("note"),
                 details={"token_id": token_id, "role": rec["role"], "bootstrap": bool(args.get("bootstrap"))})
    return _ok(token_id=token_id, name=rec["name"], role=rec["role"])


def handle_revoke_token(a, args: dict, ids: list) -> dict:
    which = args["token"]
    rec = a.get("tokens", which.encode()) or _live_by_name(a, which)
    if rec is None:
        return error_result("NOT_FOUND", f"no token {which!r} (give its id or its name)", "token")
    if rec.get("revoked_at") is None:
        rec["revoked_at"] = a.now
        rec["revoked_by"] = a.who
        a.put("tokens", rec["id"].encode(), rec)
        audit.record(a, "token_revoked", reason=rec["name"], note=args.get("note"),
                     details={"token_id": rec["id"], "role": rec["role"]})
    return _ok(token_id=rec["id"], name=rec["name"], revoked_at=rec["revoked_at"])


HANDLERS = {"create_token": handle_create_token, "revoke_token": handle_revoke_token}


# --------------------------------------------------------------------------- reads

def read_list_tokens(txn, dbs, args: dict):
    out = []
    with txn.cursor(db=dbs["tokens"]) as cur:
        for _, raw in cur:
            rec = decode_trusted(raw)
            if args.get("revoked") or rec.get("revoked_at") is None:
                out.append(public(rec))
    out.sort(key=lambda t: (t["name"], t["created_at"]))
    return {"tokens": out}


READERS = {"list_tokens": read_list_tokens}


def find(txn, dbs, token_id: str) -> dict | None:
    """The gateway's check: the token record of `token_id` (hash included), or None."""
    raw = txn.get(token_id.encode(), db=dbs["tokens"])
    return None if raw is None else decode_trusted(raw)
