"""Job states and the moves between them, as one table.

`apply_batch` checks every state change against `TRANSITIONS`; the docs
diagram and the unit tests are generated from it.
"""
from __future__ import annotations

SCHEDULED = "scheduled"
PENDING = "pending"
ACTIVE = "active"
COMPLETED = "completed"
RETRYING = "retrying"
DEAD = "dead"
CANCELLED = "cancelled"
HELD = "held"

STATES = (SCHEDULED, PENDING, ACTIVE, COMPLETED, RETRYING, DEAD, CANCELLED, HELD)
#: States a job does not leave by itself (retry_job or delete_job only).
TERMINAL = frozenset({COMPLETED, DEAD, CANCELLED})

#: (from, to) -> the events that make that move.
TRANSITIONS: dict[tuple[str, str], tuple[str, ...]] = {
    (None, PENDING): ("enqueue",),
    (None, SCHEDULED): ("enqueue with run_at/delay_ms",),
    (None, HELD): ("enqueue with hold", "enqueue while a hold budget is spent"),
    (SCHEDULED, PENDING): ("tick: run_at reached", "retry_job"),
    (RETRYING, PENDING): ("tick: backoff elapsed", "retry_job"),
    (PENDING, ACTIVE): ("fetch",),
    (ACTIVE, COMPLETED): ("ack",),
    (ACTIVE, RETRYING): ("fail with attempts left",),
    (ACTIVE, DEAD): ("fail with attempts spent or past its TTL", "tick: lease expired with attempts spent or past its TTL"),
    (ACTIVE, PENDING): ("tick: lease expired", "ack with agent_status continue"),
    (ACTIVE, CANCELLED): ("fail after cancel_job", "tick: lease expired after cancel_job"),
    (PENDING, CANCELLED): ("cancel_job",),
    (SCHEDULED, CANCELLED): ("cancel_job",),
    (RETRYING, CANCELLED): ("cancel_job",),
    (HELD, CANCELLED): ("cancel_job", "reject_job", "tick: hold timed out (reject)"),
    (HELD, PENDING): ("approve_job", "tick: hold timed out (approve)", "tick: budget window reset",
                      "reject_job with revise"),
    (PENDING, HELD): ("fetch: a budget is spent",),
    (ACTIVE, HELD): ("ack with agent_status hold", "ack with agent_status continue: guardrail",
                     "fail after budget_exceeded",
                     "tick: lease expired after budget_exceeded"),
    (PENDING, DEAD): ("tick: expired",),
    (SCHEDULED, DEAD): ("tick: expired",),
    (RETRYING, DEAD): ("tick: expired",),
    (HELD, DEAD): ("tick: expired",),
    (DEAD, PENDING): ("retry_job",),
    (CANCELLED, PENDING): ("retry_job",),
    (COMPLETED, PENDING): ("retry_job",),
}
# delete_job removes a job from any state; it is not a move between states.


def allowed(src: str | None, dst: str) -> bool:
    return (src, dst) in TRANSITIONS
