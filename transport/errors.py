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


CODES = {cls.code: cls for cls in (InvalidArgument, NotFound, FailedPrecondition, AlreadyExists,
                                   ResourceExhausted, Unavailable, Internal)}

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
