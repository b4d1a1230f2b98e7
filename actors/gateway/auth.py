"""The gateway's token check (with `--auth`): who sent a request, and may their role send this op.

Tokens live in the replicated state (storage/tokens.py); the gateway reads them through its
read-only LMDB view. A token that passed is remembered for `ttl_s` (1 s), so the common case is one
dict lookup per request; after that it is read again, so a revocation made on any node is
honoured everywhere within about a second. Refusals are UNAUTHENTICATED (no token, a malformed or
unknown one, a revoked one) or PERMISSION_DENIED (the role does not cover the op); neither is
retryable. Pure: `lookup` is injected and `now` is passed in.
"""
from __future__ import annotations

import hashlib
import hmac

from jobbie.transport.errors import PermissionDenied, Unauthenticated
from jobbie.transport.ops_auth import allowed, role_needed, split_token

#: Entries kept at most in the cache of tokens that passed (a flood of distinct tokens cannot grow it).
CACHE_MAX = 10_000


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Auth:
    def __init__(self, lookup, ttl_s: float = 1.0):
        self.lookup = lookup  # token_id -> token record (with `hash`) or None
        self.ttl_s = ttl_s
        self.cache: dict[str, tuple[float, str, str]] = {}  # token -> (valid until, role, name)

    def check(self, token, op_name: str, now: float) -> str | None:
        """The token's name when it may send `op_name` (None for an open op without a token).

        Raises:
            Unauthenticated, PermissionDenied.
        """
        if token is None:
            if role_needed(op_name) == "open":
                return None
            raise Unauthenticated(f"{op_name} needs a token: this node runs with --auth (set JOBBIE_TOKEN, or "
                                  "send `token` in the request envelope; HTTP: Authorization: Bearer TOKEN)",
                                  field="token", reason="token_required")
        hit = self.cache.get(token)
        if hit is not None and hit[0] > now:
            _, role, name = hit
        else:
            role, name = self._verify(token)
            if len(self.cache) >= CACHE_MAX:
                self.cache.clear()
            self.cache[token] = (now + self.ttl_s, role, name)
        if not allowed(role, op_name):
            raise PermissionDenied(f"the token {name!r} has role {role}, which may not send {op_name} (it needs "
                                   f"{role_needed(op_name)})", field="token", reason="role_forbids")
        return name

    def _verify(self, token) -> tuple[str, str]:
        parts = split_token(token)
        rec = self.lookup(parts[0]) if parts else None
        if rec is None or not hmac.compare_digest(rec["hash"], secret_hash(parts[1])):
            raise Unauthenticated("the token is not one this cluster made (check JOBBIE_TOKEN)", field="token",
                                  reason="token_invalid")
        if rec.get("revoked_at") is not None:
            raise Unauthenticated(f"the token {rec['name']!r} was revoked", field="token", reason="token_revoked")
        return rec["role"], rec["name"]
