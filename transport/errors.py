"""Errors that cross the wire, named after the protocol codes.

A `JobbieError` raised anywhere in a shell becomes one `err` map at the edge
(`to_wire`). Inside the state machine a refusal is *returned* as that same map,
never raised: one bad op must not sink its batch (see storage/machine.py).
"""
from __future__ import annotations


class JobbieError(Exception):
    """An error with a protocol code, a one-line message and optional hints."""

    code = "INTERNAL"

    def __init__(self, message: str, field: str | None = None, reason: str | None = None,
                 retry_after_ms: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason
        self.retry_after_ms = retry_after_ms

    def to_wire(self) -> dict:
        err = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        if self.reason is not None:
            err["reason"] = self.reason
        if self.retry_after_ms is not None:
            err["retry_after_ms"] = int(self.retry_after_ms)
        return err

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(JobbieError):
    code = "INVALID_ARGUMENT"


class NotFound(JobbieError):
    code = "NOT_FOUND"


class FailedPrecondition(JobbieError):
    code = "FAILED_PRECONDITION"


class AlreadyExists(JobbieError):
    code = "ALREADY_EXISTS"


class ResourceExhausted(JobbieError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(JobbieError):
    code = "UNAVAILABLE"


class Internal(JobbieError):
    code = "INTERNAL"


class Unauthenticated(JobbieError):
    """No token, or one the cluster does not know or has revoked (a node started with --auth)."""
    code = "UNAUTHENTICATED"


class PermissionDenied(JobbieError):
    """The token's role does not cover the op."""
    code = "PERMISSION_DENIED"


CODES = {cls.code: cls for cls in (InvalidArgument, NotFound, FailedPrecondition, AlreadyExists,
                                   ResourceExhausted, Unavailable, Internal, Unauthenticated, PermissionDenied)}

#: Every `reason` the server (or the Python client) sends: reason -> (code, when). docs/protocol.md's
#: reason table is generated from it, and a unit test checks that every reason the code spells is
#: here, so a new reason cannot reach the wire undocumented.
REASONS: dict[str, tuple[str, str]] = {
    # --- the frame and the envelope
    "malformed": ("INVALID_ARGUMENT", "The frame is not msgpack, has bytes after the value, has invalid UTF-8 in a "
                  "`str`, has an extension type, nests deeper than msgpack's own limit, is not a map, or the message "
                  "has the wrong number of frames. The reply carries the request's `id` whenever it could be read."),
    "missing_field": ("INVALID_ARGUMENT", "A required key is missing or nil (`id`, `op`, or a required arg)."),
    "wrong_type": ("INVALID_ARGUMENT", "A value has the wrong msgpack type (also: `id` not an integer, `args` or "
                   "`client` of the wrong type, a map key that is not a `str` anywhere in the request)."),
    "unknown_field": ("INVALID_ARGUMENT", "An envelope or argument key that the op does not take."),
    "unknown_op": ("INVALID_ARGUMENT", "No such op (internal ops such as `tick` count as unknown)."),
    # --- arguments
    "invalid_name": ("INVALID_ARGUMENT", "A queue name, id, `client` key, raft address or heartbeat job key breaks "
                     "its pattern."),
    "invalid_key": ("INVALID_ARGUMENT", "Made by the Python client: a CURVE key (`curve_server_key`, "
                    "`curve_client_keys`, `JOBBIE_CURVE_SERVER_KEY`, `JOBBIE_CURVE_CLIENT_KEY`) that is neither 40 Z85 "
                    "characters nor a readable key file. Never sent by the server."),
    "invalid_choice": ("INVALID_ARGUMENT", "A string outside its list of choices (e.g. `priority`)."),
    "out_of_range": ("INVALID_ARGUMENT", "A number outside its bounds, NaN or infinity, `run_at` more than 10 years "
                     "ahead, `backoff.max_ms` < `backoff.base_ms`, an empty or too long `queues` list."),
    "too_large": ("INVALID_ARGUMENT", "A string, map or list over its size limit, a `payload` / `result` over the "
                  "payload cap, or a frame over 8 MiB."),
    "too_deep": ("INVALID_ARGUMENT", "A free value (payload, result, checkpoint, ...) nested deeper than 64 levels."),
    "conflicting_fields": ("INVALID_ARGUMENT", "Two arguments that exclude each other (`run_at` and `delay_ms`; "
                           "`job_ids` and `filter`), or one given without the one it goes with (`hold_reason` on "
                           "`ack` without `agent_status: hold`, `hours` without `window: hours`)."),
    "confirm_required": ("INVALID_ARGUMENT", "`delete_queue` without `confirm: true`."),
    "empty_filter": ("INVALID_ARGUMENT", "A `bulk` `filter` with no criterion (a bulk action on every job is not "
                     "offered)."),
    "invalid_cron": ("INVALID_ARGUMENT", "A `cron` expression that does not parse, or never fires."),
    "invalid_timezone": ("INVALID_ARGUMENT", "A `timezone` that is not an IANA zone name known to the server."),
    "invalid_cursor": ("INVALID_ARGUMENT", "A search `cursor` this server did not make, or one from a search with "
                       "other filters, sort or order."),
    "query_syntax": ("INVALID_ARGUMENT", "A `payload_jq` expression outside the supported subset, or a search the "
                     "mirror cannot run as given."),
    "query_too_slow": ("INVALID_ARGUMENT", "A search ran past its time budget and was stopped; narrow it."),
    # --- state
    "lease_lost": ("FAILED_PRECONDITION", "`ack`/`fail` for a job that is not active, or with an `attempt` that is "
                   "not the current one (`field` `attempt`)."),
    "already_finished": ("FAILED_PRECONDITION", "`cancel_job` of a `completed` or `dead` job."),
    "wrong_state": ("FAILED_PRECONDITION", "`retry_job` of a `pending`, `active` or `held` job; `approve_job` / "
                    "`reject_job` of a job that is not `held`."),
    "not_agent_job": ("FAILED_PRECONDITION", "`ack` with `agent_status: continue`, `reject_job` with `revise`, or "
                      "`replay_job` of a job enqueued without `agent`."),
    "no_budget_hold": ("FAILED_PRECONDITION", "`approve_job` with `extend` for a job that no budget holds."),
    "budget_gone": ("NOT_FOUND", "`approve_job` with `extend` for a job whose budget was deleted (`field` "
                    "`extend`)."),
    "unique_conflict": ("FAILED_PRECONDITION", "`retry_job` (or a move) of a job whose unique key another live job "
                        "holds now."),
    "job_active": ("FAILED_PRECONDITION", "`move_job` of an active job: move it when its attempt has ended."),
    "jobs_active": ("FAILED_PRECONDITION", "`delete_queue` of a queue with active jobs."),
    "request_id_reused": ("FAILED_PRECONDITION", "The `request_id` was used before for a different op or different "
                          "args."),
    "membership_change_refused": ("FAILED_PRECONDITION", "pysyncobj refused a `cluster_add` / `cluster_remove` "
                                  "(another change is in progress, or the address is not a member)."),
    "peer_unreachable": ("FAILED_PRECONDITION", "`cluster_add` of an address whose raft port does not answer: "
                         "start the new node first (with `--peers` and `--rejoin`), then add it; nothing changed."),
    # --- load and availability
    "budget_exceeded": ("RESOURCE_EXHAUSTED", "`enqueue` into the scope of a spent budget whose `on_exceed` is "
                        "`reject`; `retry_after_ms` is the time until its window resets (absent for `total`)."),
    "disk_full": ("RESOURCE_EXHAUSTED", "The node's data dir has less free space than its reserve "
                  "(`--disk-free-min-mb`): writes wait until space is freed (reads, deletes and cancels go on); "
                  "`retry_after_ms` is set."),
    "overloaded": ("RESOURCE_EXHAUSTED", "Admission's in-flight limit (node-wide or for this client) is reached; "
                   "`retry_after_ms` is set."),
    "timeout": ("UNAVAILABLE", "No outcome within the write time-out (5 s at the gateway; the Python client makes "
                "it too when no reply comes in time); `retry_after_ms` is 100."),
    "closed": ("UNAVAILABLE", "Made by the Python client after `close()`; never sent by the server."),
    "unreachable": ("UNAVAILABLE", "Made by the Python client when it has never reached any of its endpoints "
                    "within its connect time-out (2 s): nothing listens there. Never sent by the server."),
    "handshake_failed": ("UNAVAILABLE", "Made by the Python client when its endpoints answer but no ZeroMQ handshake "
                         "completes within its connect time-out (2 s): a plaintext client and a node started with "
                         "`--curve` (or the reverse), a wrong server key, or a client key the node does not list. "
                         "Never sent by the server."),
    "starting": ("UNAVAILABLE", "A read (`get_job`, `list_queues`) before the node has created its store."),
    "store_unavailable": ("UNAVAILABLE", "A read hit an LMDB error; the store is reopened on the next read."),
    "mirror_disabled": ("UNAVAILABLE", "A search or bulk op on a node started with `--mirror=false`."),
    "mirror_unavailable": ("UNAVAILABLE", "The mirror actor has not reported for a few seconds (restarting); "
                           "`retry_after_ms` is set."),
    "mirror_rebuilding": ("UNAVAILABLE", "The mirror is being rebuilt from LMDB; retry shortly."),
    "usage_disabled": ("UNAVAILABLE", "`usage_summary` / `rebuild_usage` on a node started with `--usage=false`."),
    "usage_unavailable": ("UNAVAILABLE", "The usage actor has not reported for a few seconds (restarting); "
                          "`retry_after_ms` is set."),
    "usage_catching_up": ("UNAVAILABLE", "The usage actor is still reading usage records it has not rolled up "
                          "(after a restart or a rebuild); retry shortly."),
    "missing_leader": ("UNAVAILABLE", "The raft layer (pysyncobj) knows no leader; the entry was not taken."),
    "not_leader": ("UNAVAILABLE", "The raft layer did not take the entry: this node is not the leader."),
    "leader_changed": ("UNAVAILABLE", "The leader changed before the entry was confirmed: the outcome is unknown, "
                       "retry with the same `request_id`."),
    "discarded": ("UNAVAILABLE", "The raft layer dropped the entry before it was committed."),
    "queue_full": ("UNAVAILABLE", "The raft layer's command queue is full."),
    "request_denied": ("UNAVAILABLE", "The raft layer refused the entry."),
    "unknown_outcome": ("UNAVAILABLE", "The raft layer could not say whether the entry committed: retry with the "
                        "same `request_id`."),
    # --- tokens (a node started with --auth)
    "token_required": ("UNAUTHENTICATED", "The request has no `token` and the op is not `health`."),
    "token_invalid": ("UNAUTHENTICATED", "The `token` is malformed, or not one this cluster made."),
    "token_revoked": ("UNAUTHENTICATED", "The `token` was revoked (revoke_token)."),
    "role_forbids": ("PERMISSION_DENIED", "The token's role does not cover the op (the message names the role "
                     "needed)."),
    "name_taken": ("ALREADY_EXISTS", "`create_token` with the name of a live token."),
    "tokens_exist": ("FAILED_PRECONDITION", "The first admin token is made only while the cluster has no token."),
    # --- bugs
    "gateway_error": ("INTERNAL", "An unexpected error in the gateway while handling the request."),
    "apply_failed": ("INTERNAL", "An unexpected error inside the state machine; that op left no trace, the rest of "
                     "its batch was applied."),
}

#: Codes a client may retry (with the same request_id for writes).
RETRYABLE = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})


def from_wire(err: dict) -> JobbieError:
    """Rebuild the typed error from an `err` map (client side)."""
    cls = CODES.get(err.get("code"), Internal)
    return cls(err.get("message", ""), field=err.get("field"), reason=err.get("reason"),
               retry_after_ms=err.get("retry_after_ms"))


def error_result(code: str, message: str, field: str | None = None, reason: str | None = None,
                 retry_after_ms: int | None = None) -> dict:
    """A refusal as the state machine returns it: `{"err": {...}}`."""
    return {"err": CODES[code](message, field, reason, retry_after_ms).to_wire()}


class InvariantViolation(Exception):
    """A broken internal rule: a bug. Not a JobbieError; the process dies."""


def check(condition: bool, message: str) -> None:
    """Always-on invariant check (`assert` vanishes under `python -O`)."""
    if not condition:
        raise InvariantViolation(message)
