"""Every error `reason` the code spells is in transport/errors.py REASONS (and so in docs/protocol.md).

The code is read as Python syntax trees, not run: a reason passed to `error_result`, to a
`JobbieError` subclass, to the validators' `_bad`, or written as a `"reason": ...` map entry.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

from jobbie.transport import errors

ROOT = pathlib.Path(__file__).resolve().parents[2]
ERROR_CLASSES = {"JobbieError", "InvalidArgument", "NotFound", "FailedPrecondition", "AlreadyExists",
                 "ResourceExhausted", "Unavailable", "Internal", "Unauthenticated", "PermissionDenied"}
#: Where the reason sits among the positional arguments of each maker of errors.
POSITION = {"error_result": 3, "_bad": 2, **{name: 2 for name in ERROR_CLASSES}}


def reasons_in_code() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}

    def note(value, path):
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found.setdefault(value.value, set()).add(str(path.relative_to(ROOT)))

    for folder in ("actors", "storage", "transport", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                    if name in POSITION:
                        for kw in node.keywords:
                            if kw.arg == "reason":
                                note(kw.value, path)
                        if len(node.args) > POSITION[name]:
                            note(node.args[POSITION[name]], path)
                elif isinstance(node, ast.Dict):
                    for key, value in zip(node.keys, node.values):
                        if isinstance(key, ast.Constant) and key.value == "reason":
                            note(value, path)
    return found


def raft_reasons() -> set[str]:
    """pysyncobj's failure names, which the raft actor passes on as reasons (not literals in our code)."""
    from pysyncobj import FAIL_REASON
    return {k.lower() for k in vars(FAIL_REASON) if k.isupper() and k != "SUCCESS"}


def test_the_scan_finds_reasons_at_all():
    found = reasons_in_code()
    assert {"malformed", "lease_lost", "overloaded", "invalid_cursor"} <= set(found)


def test_every_reason_in_the_code_is_registered():
    missing = {r: sorted(p) for r, p in reasons_in_code().items() if r not in errors.REASONS}
    assert not missing, f"add these to transport/errors.py REASONS (then run docs/generate.py): {missing}"


def test_every_raft_failure_name_is_registered():
    assert raft_reasons() - set(errors.REASONS) == set()


def test_no_registered_reason_is_stale():
    used = set(reasons_in_code()) | raft_reasons()
    assert set(errors.REASONS) - used == set()


@pytest.mark.parametrize("reason", sorted(errors.REASONS))
def test_each_reason_names_a_protocol_code(reason):
    code, when = errors.REASONS[reason]
    assert code in errors.CODES and when.strip()
