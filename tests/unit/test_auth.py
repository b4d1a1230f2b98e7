"""The gateway's token check and the role table, without a node."""
from __future__ import annotations

import pytest

from jobbie.actors.gateway.auth import Auth, secret_hash
from jobbie.transport.errors import PermissionDenied, Unauthenticated
from jobbie.transport.ops import OPS
from jobbie.transport.ops_auth import allowed, role_needed, split_token

TOKENS = {
    "tok_w": {"id": "tok_w", "name": "workers", "role": "worker", "hash": secret_hash("s1"), "revoked_at": None},
    "tok_p": {"id": "tok_p", "name": "api", "role": "producer", "hash": secret_hash("s2"), "revoked_at": None},
    "tok_a": {"id": "tok_a", "name": "ops", "role": "admin", "hash": secret_hash("s3"), "revoked_at": None},
    "tok_r": {"id": "tok_r", "name": "dash", "role": "read", "hash": secret_hash("s4"), "revoked_at": None},
}


def auth():
    calls = []

    def lookup(token_id):
        calls.append(token_id)
        return TOKENS.get(token_id)
    a = Auth(lookup)
    a.calls = calls
    return a


def test_every_client_op_has_a_role_and_the_roles_nest():
    for name, op in OPS.items():
        if op.path == "internal":
            continue
        need = role_needed(name)
        assert need in ("open", "read", "worker", "producer", "admin"), name
        assert allowed("admin", name), name
    assert role_needed("health") == "open"
    assert {role_needed(n) for n in ("get_job", "list_queues", "search_jobs", "cluster_status", "usage_summary")} == {"read"}
    assert {role_needed(n) for n in ("fetch", "heartbeat", "ack", "fail")} == {"worker"}
    assert {role_needed(n) for n in ("enqueue", "enqueue_batch")} == {"producer"}
    for name in ("delete_job", "bulk", "set_budget", "approve_job", "cluster_add", "create_token", "list_tokens",
                 "pause_queue", "retry_job", "cancel_job"):
        assert role_needed(name) == "admin", name


@pytest.mark.parametrize("role,op,ok", [
    ("worker", "fetch", True), ("worker", "get_job", True), ("worker", "enqueue", False), ("worker", "delete_job", False),
    ("producer", "enqueue", True), ("producer", "ack", False), ("producer", "list_queues", True),
    ("read", "search_jobs", True), ("read", "enqueue", False), ("read", "fetch", False), ("read", "list_tokens", False),
    ("admin", "delete_job", True), ("admin", "cluster_remove", True),
])
def test_role_grants(role, op, ok):
    assert allowed(role, op) is ok


def test_no_token_is_refused_except_for_health():
    a = auth()
    assert a.check(None, "health", 0.0) is None
    with pytest.raises(Unauthenticated) as info:
        a.check(None, "get_job", 0.0)
    assert (info.value.field, info.value.reason) == ("token", "token_required")


@pytest.mark.parametrize("token", ["nonsense", "tok_w", "tok_w.", "tok_w.wrong", "tok_nobody.s1", "abc.s1",
                                   "tok_w.s1x", 5, "x" * 300])
def test_malformed_unknown_or_wrong_tokens(token):
    with pytest.raises(Unauthenticated) as info:
        auth().check(token, "get_job", 0.0)
    assert info.value.reason == "token_invalid"


def test_a_good_token_passes_and_its_role_is_enforced():
    a = auth()
    assert a.check("tok_w.s1", "fetch", 0.0) == "workers"
    with pytest.raises(PermissionDenied) as info:
        a.check("tok_w.s1", "enqueue", 0.1)
    assert (info.value.field, info.value.reason) == ("token", "role_forbids")
    assert "needs producer" in info.value.message


def test_passes_are_cached_for_a_second_then_read_again_so_revocation_takes_effect():
    a = auth()
    a.check("tok_a.s3", "delete_job", 0.0)
    a.check("tok_a.s3", "delete_job", 0.5)
    assert a.calls == ["tok_a"]  # one read within the second
    TOKENS["tok_a"] = dict(TOKENS["tok_a"], revoked_at=123)
    try:
        a.check("tok_a.s3", "delete_job", 0.9)  # still cached
        with pytest.raises(Unauthenticated) as info:
            a.check("tok_a.s3", "delete_job", 1.1)
        assert info.value.reason == "token_revoked"
    finally:
        TOKENS["tok_a"] = dict(TOKENS["tok_a"], revoked_at=None)


def test_split_token():
    assert split_token("tok_ab.secret") == ("tok_ab", "secret")
    assert split_token("tok_ab.sec.ret") == ("tok_ab", "sec.ret")
    for bad in (None, 1, "", "tok_ab", "ab.secret", "tok_a b.secret", "tok_ab."):
        assert split_token(bad) is None


# ------------------------------------------------------------------ the state machine's token ops

def tokens_of(h, revoked=False):
    from jobbie.storage import tokens
    with h.store.begin() as txn:
        return tokens.read_list_tokens(txn, h.dbs, {"revoked": revoked})["tokens"]


def test_create_keeps_only_the_hash_and_names_are_unique(h):
    ok = h.ok("create_token", {"name": "ci", "role": "worker"}, ids=["tok_1", secret_hash("s")])
    assert ok == {"token_id": "tok_1", "name": "ci", "role": "worker"}
    [listed] = tokens_of(h)
    assert listed["id"] == "tok_1" and "hash" not in listed and listed["revoked_at"] is None
    from jobbie.storage import tokens
    with h.store.begin() as txn:
        assert tokens.find(txn, h.dbs, "tok_1")["hash"] == secret_hash("s")
    assert err(h.run("create_token", {"name": "ci", "role": "read"}, ids=["tok_2", "x"])) == \
        ("ALREADY_EXISTS", "name", "name_taken")
    assert err(h.run("create_token", {"name": "x", "role": "read"}, ids=[])) == ("INVALID_ARGUMENT", "op", "malformed")


def test_revoke_by_id_or_name_is_idempotent_and_frees_the_name(h):
    h.ok("create_token", {"name": "ci", "role": "worker"}, ids=["tok_1", "h1"])
    from .conftest import T0
    first = h.ok("revoke_token", {"token": "ci"}, now=T0 + 5000)
    again = h.ok("revoke_token", {"token": "tok_1"}, now=T0 + 9000)
    assert first == again == {"token_id": "tok_1", "name": "ci", "revoked_at": T0 + 5000}
    assert tokens_of(h) == [] and len(tokens_of(h, revoked=True)) == 1
    assert err(h.run("revoke_token", {"token": "nope"})) == ("NOT_FOUND", "token", None)
    h.ok("create_token", {"name": "ci", "role": "read"}, ids=["tok_2", "h2"])  # the name is free again


def test_the_bootstrap_token_is_made_only_while_there_is_none(h):
    args = {"name": "admin", "role": "admin", "bootstrap": True}
    assert "ok" in h.run("create_token", args, ids=["tok_a", "h"], raw=True)
    assert err(h.run("create_token", dict(args, name="admin2"), ids=["tok_b", "h"], raw=True)) == \
        ("FAILED_PRECONDITION", "bootstrap", "tokens_exist")


def test_token_ops_are_in_the_audit_trail(h):
    from jobbie.storage import audit
    h.run("create_token", {"name": "ci", "role": "worker"}, ids=["tok_1", "h1"])
    h.run("revoke_token", {"token": "ci"})
    with h.store.begin() as txn:
        kinds = [e["kind"] for e in audit.read_list_audit(txn, h.dbs, {"limit": 10})["events"]]
    assert kinds[:2] == ["token_revoked", "token_created"]


def err(result):
    assert "err" in result, result
    e = result["err"]
    return e["code"], e.get("field"), e.get("reason")
