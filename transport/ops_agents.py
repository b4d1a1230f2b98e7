"""Agent iteration and replay ops (their rows join OPS in transport/ops.py).

`replay_job` is a write (storage/agents.py); `list_iterations` and
`get_iteration` are point reads of LMDB.
"""
from __future__ import annotations

from .ops import AGENT, JOB_ID, REQUEST_ID, Arg, _op

ITERATION_MAX = 100_000

_op("replay_job", "write", "Make a new job that starts at iteration `from_iteration` of an agent job, from the "
    "checkpoint that iteration started from, with optional overrides; the two are linked (`replay_of` on the new "
    "job, `replays` on the old).", (
        JOB_ID,
        Arg("from_iteration", "int", "The iteration to start from (1: from the beginning).", required=True, low=1,
            high=ITERATION_MAX),
        Arg("overrides", "struct", "What the new job changes.", fields=(
            Arg("payload", "map", "Fields merged into the payload (a payload that is not a map is replaced)."),
            Arg("agent", "struct", "Agent fields merged into the agent config.", fields=AGENT.fields),
            Arg("tags", "str_map", "Tags merged into the tags."),
            Arg("queue", "queue", "Another queue."),
            Arg("budget_usd", "float", "Its own spend cap.", low=0, high=1e9),
        )),
        REQUEST_ID,
    ), ok=("job_id", "state", "iteration"), errors=("NOT_FOUND", "FAILED_PRECONDITION/not_agent_job"))
_op("list_iterations", "read", "An agent job's iteration records, in order (without checkpoints and traces unless "
    "`full`).", (
        JOB_ID,
        Arg("after", "int", "Cursor: iterations after this number.", low=0, high=ITERATION_MAX, default=0),
        Arg("limit", "int", "Iterations at most.", default=1000, low=1, high=10_000),
        Arg("full", "bool", "Include each iteration's checkpoint and trace.", default=False),
    ), ok=("iterations", "has_more"), errors=("NOT_FOUND",))
_op("get_iteration", "read", "One iteration record, checkpoint and trace included.", (
    JOB_ID, Arg("n", "int", "The iteration number.", required=True, low=1, high=ITERATION_MAX),
), ok=("iteration",), errors=("NOT_FOUND",))
