"""`jobbie token create|list|revoke`: API tokens for nodes started with --auth (mixed into cli.main.Cli)."""
from __future__ import annotations

from . import render
from .common import _run


def _created(r) -> str:
    return (f"token {r['name']} ({r['role']}): {r['token']}\n"
            "This is the only time it is shown; the server keeps a hash. Give it to the client as\n"
            f"  export JOBBIE_TOKEN={r['token']}")


def _listed(r) -> str:
    if not r["tokens"]:
        return "no tokens (make one with: jobbie token create NAME --role worker)"
    rows = [[t["id"], t["name"], t["role"], render._time(t["created_at"]), t.get("created_by") or "-",
             render._time(t["revoked_at"]) if t.get("revoked_at") else "-"] for t in r["tokens"]]
    return render.table(rows, ["id", "name", "role", "created", "by", "revoked"])


class TokenCli:
    """API tokens: each has a role (read, worker, producer, admin); needed by a node started with --auth."""

    def create(self, name: str, role: str = "worker", note: str = None, server: str = None, output: str = "text"):
        """Make a token named NAME with --role read|worker|producer|admin; prints its secret once.

        Args:
          name: Who or what uses the token (unique among live tokens).
          role: read (every read), worker (read + fetch, heartbeat, ack, fail), producer (read + enqueue),
            admin (everything). Default worker.
        """
        return _run(server, output, "create_token", {"name": str(name), "role": str(role), "note": note}, _created)

    def list(self, revoked: bool = False, server: str = None, output: str = "text"):  # noqa: A003
        """The tokens, by name (ids, roles, who made them; never the secrets).

        Args:
          revoked: Also list revoked tokens.
        """
        return _run(server, output, "list_tokens", {"revoked": bool(revoked)}, _listed)

    def revoke(self, token: str, note: str = None, server: str = None, output: str = "text"):
        """Revoke a token by id (tok_...) or name; every node refuses it within about a second.

        Args:
          token: The token's id or name.
        """
        return _run(server, output, "revoke_token", {"token": str(token), "note": note},
                    lambda r: f"revoked {r['name']} ({r['token_id']})")


class TokenCommands:
    token = TokenCli()
