"""Search, bulk and mirror ops (their rows join OPS in transport/ops.py).

Their path is ``mirror``: the gateway hands them to the mirror actor, which
answers from SQLite (search) or drives the write pipeline (bulk).
"""
from __future__ import annotations

from .ops import Arg, _op  # noqa: F401
