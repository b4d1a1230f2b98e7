"""Every flag of every command gets a line in `--help`.

fire shows a flag's description only when the command's docstring lists it under `Args:`. The
flags many commands share (`--server`, `--output`, ...) are described once here and added to each
docstring that does not describe them itself, when the CLI is built.
"""
from __future__ import annotations

import inspect
import re

COMMON = {
    "server": "ZeroMQ endpoint of the node, tcp://HOST:PORT (default $JOBBIE_SERVER or tcp://127.0.0.1:7700); "
              "several, comma-separated, for a cluster.",
    "output": "text (default: tables and short lines) or json (one JSON document, for scripts).",
    "limit": "At most this many rows.",
    "queue": "The queue's name.",
    "job_id": "The job's id (job_...).",
    "note": "Kept in the audit trail with the decision.",
    "yes": "Do it without asking first.",
    "tries": "Ask this many times before giving up.",
    "job_a": "The first job (e.g. the original run).",
    "job_b": "The second job (e.g. its replay).",
    "budget_id": "The budget's name.",
    "address": "The voter's raft address, host:port.",
    "max": "Active jobs at most; none (or 0) for no limit.",
    "rate": "Jobs handed out per window.",
    "period_ms": "The window's length in milliseconds.",
    "after": "Cursor: list from after this id (the previous page's `next` line or `cursor`).",
    "confirm": "Required: deleting a queue and its jobs cannot be undone.",
    "priority": "critical, high, normal or low.",
    "name": "The schedule's name.",
    "config": "A TOML file of settings: a key per flag (data-dir = \"...\"); flags and JOBBIE_* variables win "
              "over it. Default $JOBBIE_CONFIG.",
}


def _described(doc: str) -> set[str]:
    args = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    return set(re.findall(r"^\s{2,}([a-z_][a-z0-9_]*)\s*:", args, re.M))


def document(func) -> list[str]:
    """Add the missing flag lines to `func`'s docstring; returns the flags still undescribed."""
    doc = inspect.cleandoc(func.__doc__ or "")
    params = [n for n, p in inspect.signature(func).parameters.items()
              if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    have = _described(doc)
    missing = [n for n in params if n not in have]
    lines = [f"  {n}: {COMMON[n]}" for n in missing if n in COMMON]
    if lines:
        doc += ("\n" if "Args:" in doc else "\n\nArgs:\n") + "\n".join(lines)
        func.__doc__ = doc
    return [n for n in missing if n not in COMMON]


def commands(root) -> list:
    """Every command function of the CLI class `root` and of its groups (attributes that are objects)."""
    out, seen = [], set()
    stack = [root]
    while stack:
        cls = stack.pop()
        for name in dir(cls):
            if name.startswith("_"):
                continue
            attr = getattr(cls, name)
            if inspect.isfunction(attr):
                if attr not in seen:
                    seen.add(attr)
                    out.append(attr)
            elif not inspect.isclass(attr) and type(attr).__module__.startswith("jobbie.cli"):
                stack.append(type(attr))
    return out


def document_all(root) -> dict:
    """Document every command; {command name: flags still without a line}."""
    return {f.__qualname__: left for f in commands(root) if (left := document(f))}
