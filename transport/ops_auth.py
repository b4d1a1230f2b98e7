"""Token ops and the role each op needs (their rows join OPS in transport/ops.py).

With `jobbie server --auth`, every request carries `token` in its envelope (`TOKEN_ID.SECRET`) and
the gateway lets it through only if the token's role covers the op (ROLE_NEEDED). Without
`--auth` none of this is checked, and these ops still work (tokens can be made ahead of time).
"""
from __future__ import annotations

from .ops import OPS, PRINTABLE_ID, REQUEST_ID, Arg, _op

ROLES = ("read", "worker", "producer", "admin")
TOKEN_NAME = Arg("name", "id", "A name for the token (1-128 printable ASCII), unique among live tokens: "
                 "who or what uses it.", required=True)

_op("create_token", "write", "Make an API token with a role; its secret is in this answer only (the server keeps "
    "a hash). Admin.", (
        TOKEN_NAME,
        Arg("role", "str", "read (every read), worker (read + fetch, heartbeat, ack, fail), producer (read + "
            "enqueue, enqueue_batch) or admin (everything).", required=True, choices=ROLES),
        Arg("note", "str", "Kept with the token and in the audit trail.", length_max=4096),
        REQUEST_ID,
    ), ok=("token_id", "name", "role", "token"), errors=("ALREADY_EXISTS/name_taken",))
_op("list_tokens", "read", "The API tokens (never their secrets or hashes), by name. Admin.", (
    Arg("revoked", "bool", "Include revoked tokens.", default=False),
), ok=("tokens",))
_op("revoke_token", "write", "Revoke a token by id or name: every node refuses it within about a second. Admin.", (
    Arg("token", "id", "The token's id (tok_...) or name.", required=True),
    Arg("note", "str", "Kept in the audit trail.", length_max=4096),
    REQUEST_ID,
), ok=("token_id", "name", "revoked_at"), errors=("NOT_FOUND",))
_op("health", "local", "Whether this node's process answers, and its raft role: the one op an auth-enabled node "
    "takes without a token.", (), ok=("node_id", "role", "leader_known"))

#: Ops anyone may send to an auth-enabled node.
OPEN_OPS = frozenset({"health"})
WORKER_OPS = frozenset({"fetch", "heartbeat", "ack", "fail", "ack_batch"})
PRODUCER_OPS = frozenset({"enqueue", "enqueue_batch"})
#: Reads an admin token is needed for all the same.
ADMIN_READS = frozenset({"list_tokens"})
#: Ops answered by the mirror or usage actor that only read.
VIEW_READS = frozenset({"search_jobs", "bulk_status", "usage_summary"})


def role_needed(op_name: str) -> str:
    """The least role that may send `op_name` (`open` for OPEN_OPS)."""
    if op_name in OPEN_OPS:
        return "open"
    if op_name in ADMIN_READS:
        return "admin"
    op = OPS.get(op_name)
    if op is not None and (op.path in ("read", "local") or op_name in VIEW_READS):
        return "read"
    if op_name in WORKER_OPS:
        return "worker"
    if op_name in PRODUCER_OPS:
        return "producer"
    return "admin"


#: What each role may do beyond itself.
GRANTS = {"read": {"open", "read"}, "worker": {"open", "read", "worker"}, "producer": {"open", "read", "producer"},
          "admin": {"open", "read", "worker", "producer", "admin"}}


def allowed(role: str, op_name: str) -> bool:
    return role_needed(op_name) in GRANTS.get(role, ())


def split_token(token) -> tuple[str, str] | None:
    """(token id, secret) of a well-formed token string, else None."""
    if type(token) is not str or len(token) > 256:
        return None
    token_id, dot, secret = token.partition(".")
    if not dot or not token_id.startswith("tok_") or not secret or not PRINTABLE_ID.match(token_id):
        return None
    return token_id, secret
