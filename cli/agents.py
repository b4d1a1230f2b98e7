"""CLI commands for agent loops: iterations, replay, compare (mixed into cli.main.Cli)."""
from __future__ import annotations

import hashlib
import json

from jobbie.transport.errors import JobbieError

from . import render
from .common import _client, _fail, _fail_with, _print, _run


def _short(value, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def _tokens(rec) -> int:
    u = rec.get("usage") or {}
    return sum(u.get(k) or 0 for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"))


def _ms(rec):
    if rec.get("started_at") and rec.get("ended_at"):
        return f"{rec['ended_at'] - rec['started_at']} ms"
    return "-"


def iterations_table(r) -> str:
    if not r["iterations"]:
        return "no iterations recorded yet"
    rows = [[i["n"], i["status"], i["attempts"], _tokens(i), f"{i['cost_usd']:.6f}", _ms(i),
             i.get("worker_id") or "-", render._stamp(i["ended_at"]),
             _short(i.get("error") if i["status"] == "failed" else i.get("result"))] for i in r["iterations"]]
    total = sum(i["cost_usd"] for i in r["iterations"])
    out = render.table(rows, ["N", "STATUS", "ATTEMPTS", "TOKENS", "COST_USD", "TOOK", "WORKER", "ENDED", "RESULT"])
    out += f"\n{len(rows)} iteration(s), ${total:.6f} in total"
    if r["has_more"]:
        out += f" (more: --after {r['iterations'][-1]['n']})"
    return out


def _parse_sets(sets) -> dict:
    """`--set key=value` (repeatable, or comma-separated): payload overrides; values are JSON when they parse."""
    if sets is None:
        return {}
    items = list(sets) if isinstance(sets, (list, tuple)) else str(sets).split(",")
    out = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip():
            _fail(f"--set takes KEY=VALUE (a payload field and its new value); got {item!r}", 2)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def compare_rows(a: list, b: list) -> tuple[list, int | None]:
    """Side by side by iteration number, and the first number both runs have where they differ
    (status, checkpoint or result). A replay starts at its N: the iterations before are one-sided."""
    by_a, by_b = {i["n"]: i for i in a}, {i["n"]: i for i in b}
    rows, first = [], None
    for n in sorted(set(by_a) | set(by_b)):
        x, y = by_a.get(n), by_b.get(n)
        if x is None or y is None:
            mark = ""
        elif (x["status"], x["digest"]) == (y["status"], y["digest"]):
            mark = "="
        else:
            mark = "≠"
            first = n if first is None else first
        rows.append([n] + _side(x) + _side(y) + [mark])
    return rows, first


def _side(rec) -> list:
    if rec is None:
        return ["-", "-", "-", "-"]
    digest = hashlib.blake2b(json.dumps(rec.get("result"), sort_keys=True, default=str).encode(),
                             digest_size=4).hexdigest()
    return [rec["status"], _tokens(rec), f"{rec['cost_usd']:.6f}", f"{digest} {_short(rec.get('result'), 24)}"]


class AgentCommands:
    def iterations(self, job_id: str, after: int = 0, limit: int = 1000, full: bool = False, server: str = None,
                   output: str = "text"):
        """An agent job's iterations: status, attempts, tokens, cost, duration, worker, result.

        Args:
          job_id: The agent job.
          after: Start after this iteration number.
          limit: Iterations shown at most.
          full: Include each iteration's checkpoint and trace (with --output json).
        """
        return _run(server, output, "list_iterations", {"job_id": str(job_id), "after": int(after),
                                                         "limit": int(limit), "full": bool(full)}, iterations_table)

    def replay(self, job_id: str, from_iteration: int = 1, set: str = None, queue: str = None,  # noqa: A002
               budget_usd: float = None, max_iterations: int = None, max_cost_usd: float = None,
               server: str = None, output: str = "text"):
        """Run an agent job again from iteration N, from the checkpoint N started from: jobbie replay JOB --from 3 --set temperature=0

        Args:
          job_id: The agent job to replay.
          from_iteration: The iteration to start from (default 1: from the beginning); also --from N.
          set: Payload overrides KEY=VALUE (repeat --set, or separate with commas; values are JSON when they parse).
          queue: Run the replay on another queue.
          budget_usd: The replay's own spend cap.
          max_iterations: Override the agent's max_iterations.
          max_cost_usd: Override the agent's max_cost_usd.
        """
        overrides = {}
        payload = _parse_sets(set)
        if payload:
            overrides["payload"] = payload
        agent = {k: v for k, v in (("max_iterations", max_iterations), ("max_cost_usd", max_cost_usd))
                 if v is not None}
        if agent:
            overrides["agent"] = agent
        if queue is not None:
            overrides["queue"] = str(queue)
        if budget_usd is not None:
            overrides["budget_usd"] = float(budget_usd)
        args = {"job_id": str(job_id), "from_iteration": int(from_iteration), "overrides": overrides or None}
        return _run(server, output, "replay_job", args,
                    lambda r: f"replay {r['job_id']} of {job_id} starts at iteration {r['iteration']} "
                              f"(compare them with: jobbie compare {job_id} {r['job_id']})")

    def compare(self, job_a: str, job_b: str, server: str = None, output: str = "text"):
        """Two agent runs side by side, iteration by iteration (e.g. a job and its replay), with totals."""
        if output not in ("text", "json"):
            _fail(f"--output must be text or json, not {output!r}", 2)
        with _client(server, timeout=5.0, retry_for=10.0) as client:
            try:
                a = client.call("list_iterations", job_id=str(job_a), limit=10_000)["iterations"]
                b = client.call("list_iterations", job_id=str(job_b), limit=10_000)["iterations"]
            except JobbieError as exc:
                _fail_with(exc, server)
        rows, first = compare_rows(a, b)
        result = {"a": job_a, "b": job_b, "first_difference": first, "iterations": [
            {"n": r[0], "a": r[1:5], "b": r[5:9], "same": {"=": True, "≠": False}.get(r[9])} for r in rows],
            "totals": {"a": {"cost_usd": sum(i["cost_usd"] for i in a), "tokens": sum(map(_tokens, a))},
                       "b": {"cost_usd": sum(i["cost_usd"] for i in b), "tokens": sum(map(_tokens, b))}}}

        def text(res):
            table = render.table(rows, ["N", "A_STATUS", "A_TOKENS", "A_COST", "A_RESULT", "B_STATUS", "B_TOKENS",
                                        "B_COST", "B_RESULT", ""])
            t = res["totals"]
            table += (f"\nTOTAL  A {t['a']['tokens']} tokens ${t['a']['cost_usd']:.6f}   "
                      f"B {t['b']['tokens']} tokens ${t['b']['cost_usd']:.6f}")
            table += ("\nthe runs agree on every iteration both have" if first is None
                      else f"\nthey first differ at iteration {first}")
            return table
        _print(output, result, text)
