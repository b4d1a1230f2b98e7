"""search_jobs filters to SQL, and the opaque page cursor.

Every value reaches SQLite as a named parameter; the SQL text is built only
from this module's own fragments. Pages are keyset pages on (sort value, job
id), so a page never repeats or skips a job that did not change in between,
however many jobs are added meanwhile.

Time filters are half-open: `X_after` is inclusive (>=), `X_before`
exclusive (<). A job without that time (never started, no TTL) matches
neither. Sorting by a time a job may lack puts those jobs last in `desc`
order (first in `asc`).
"""
from __future__ import annotations

import base64
import binascii
import hashlib

from jobbie.transport import codec
from jobbie.transport.errors import InvalidArgument
from jobbie.transport.ops_search import FILTER_ARGS

from . import jq
from .rows import PRIORITY_LEVEL

FILTER_NAMES = tuple(a.name for a in FILTER_ARGS)
TIME_COLUMNS = {"created": "created_at", "scheduled": "scheduled_at", "started": "started_at",
                "completed": "completed_at", "expire": "expire_at"}
#: Sort key -> SQL expression. Only created_at is never NULL (and has indexes to walk in order).
SORT_SQL = {
    "created_at": "created_at",
    "scheduled_at": "IFNULL(scheduled_at, -1)",
    "started_at": "IFNULL(started_at, -1)",
    "completed_at": "IFNULL(completed_at, -1)",
    "expire_at": "IFNULL(expire_at, -1)",
    "updated_at": "IFNULL(updated_at, -1)",
    "priority": "priority_level",
    "attempt": "attempt",
}
CURSOR_VERSION = 1


def like_escape(text: str) -> str:
    """`text` as a LIKE pattern matching itself anywhere (with ESCAPE '\\')."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def where(filters: dict, params: jq.Params, prefix: str = "") -> str:
    """The WHERE condition for a filter map (validated args). Raises InvalidArgument (payload_jq)."""
    parts = []

    def eq(column, value):
        parts.append(f"{column} = {params.add(value)}")

    if filters.get("queue") is not None:
        eq("queue", filters["queue"])
    states = filters.get("state")
    if states:
        parts.append(f"state IN ({', '.join(params.add(s) for s in states)})")
    if filters.get("priority") is not None:
        eq("priority_level", PRIORITY_LEVEL[filters["priority"]])
    for key, value in sorted((filters.get("tags") or {}).items()):
        parts.append(f"id IN (SELECT job_id FROM tags WHERE key = {params.add(key)} AND value = {params.add(value)})")
    if filters.get("payload_contains") is not None:
        parts.append(f"instr(payload, {params.add(filters['payload_contains'])}) > 0")
    expr = filters.get("payload_jq")
    if expr is not None:
        try:
            parts.append(jq.to_sql(expr, "payload", params))
        except jq.JqError as exc:
            raise InvalidArgument(f"{prefix}payload_jq: {exc.message} at position {exc.position}: "
                                  f"{_excerpt(expr, exc.position)}", field=prefix + "payload_jq",
                                  reason="query_syntax")
    for name, column in TIME_COLUMNS.items():
        if filters.get(f"{name}_after") is not None:
            parts.append(f"{column} >= {params.add(filters[name + '_after'])}")
        if filters.get(f"{name}_before") is not None:
            parts.append(f"{column} < {params.add(filters[name + '_before'])}")
    for name in ("worker_id", "batch_id", "unique_key"):
        if filters.get(name) is not None:
            eq(name, filters[name])
    if filters.get("has_errors") is not None:
        parts.append("errors IS NOT NULL" if filters["has_errors"] else "errors IS NULL")
    if filters.get("error_contains") is not None:
        parts.append(f"errors LIKE {params.add(like_escape(filters['error_contains']))} ESCAPE '\\'")
    if filters.get("attempt_min") is not None:
        parts.append(f"attempt >= {params.add(filters['attempt_min'])}")
    if filters.get("attempt_max") is not None:
        parts.append(f"attempt <= {params.add(filters['attempt_max'])}")
    prefix_id = filters.get("job_id_prefix")
    if prefix_id is not None:
        # ids are printable ASCII (0x21-0x7e): every id starting with the prefix sorts below prefix + DEL
        parts.append(f"id >= {params.add(prefix_id)} AND id < {params.add(prefix_id + chr(0x7f))}")
    return " AND ".join(parts) if parts else "1"


def _excerpt(text: str, pos: int) -> str:
    start = max(0, pos - 20)
    return ("…" if start else "") + text[start:pos] + "⟨here⟩" + text[pos:pos + 20] + ("…" if pos + 20 < len(text) else "")


def filters_of(args: dict) -> dict:
    return {k: args[k] for k in FILTER_NAMES if args.get(k) is not None}


def fingerprint(filters: dict) -> str:
    return hashlib.blake2b(codec.encode(sorted(filters.items())), digest_size=6).hexdigest()


# ------------------------------------------------------------------ cursor

def encode_cursor(sort: str, order: str, fp: str, key, job_id: str) -> str:
    raw = codec.encode([CURSOR_VERSION, sort, order, fp, key, job_id])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str, sort: str, order: str, fp: str):
    """(sort value, job id) of a cursor from the same search. Raises InvalidArgument."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        version, c_sort, c_order, c_fp, key, job_id = codec.decode(raw)
    except (binascii.Error, ValueError, TypeError, codec.DecodeError):
        raise InvalidArgument("cursor is not a cursor this server made", field="cursor", reason="invalid_cursor")
    if version != CURSOR_VERSION or type(job_id) is not str or not isinstance(key, int) or isinstance(key, bool):
        raise InvalidArgument("cursor is not a cursor this server made", field="cursor", reason="invalid_cursor")
    if (c_sort, c_order, c_fp) != (sort, order, fp):
        raise InvalidArgument("cursor belongs to another search (its filters, sort or order differ)",
                              field="cursor", reason="invalid_cursor")
    return key, job_id


class SearchPlan:
    """The SQL of one search page: `count_sql`, `page_sql`, their parameters and the cursor recipe."""

    def __init__(self, args: dict):
        self.filters = filters_of(args)
        self.sort = args.get("sort") or "created_at"
        self.order = args.get("order") or "desc"
        self.limit = args.get("limit") or 50
        self.fp = fingerprint(self.filters)
        params = jq.Params()
        cond = where(self.filters, params)
        self.count_sql = f"SELECT count(*) FROM jobs WHERE {cond}"
        self.count_params = dict(params.values)
        key_sql = SORT_SQL[self.sort]
        direction = "DESC" if self.order == "desc" else "ASC"
        page_cond = cond
        if args.get("cursor"):
            key, job_id = decode_cursor(args["cursor"], self.sort, self.order, self.fp)
            op = "<" if self.order == "desc" else ">"
            page_cond = f"({cond}) AND ({key_sql}, id) {op} ({params.add(key)}, {params.add(job_id)})"
        # Only (id, sort value) go through the sort; the page's records are read by id afterwards.
        self.page_sql = (f"SELECT id, {key_sql} FROM jobs WHERE {page_cond} "
                         f"ORDER BY {key_sql} {direction}, id {direction} LIMIT {params.add(self.limit + 1)}")
        self.page_params = params.values

    def cursor_after(self, key, job_id: str) -> str:
        return encode_cursor(self.sort, self.order, self.fp, key, job_id)


def resolve_sql(filters: dict, prefix: str = "filter.") -> tuple[str, dict]:
    """SQL listing (id, state) of every job matching a bulk filter, in id order."""
    params = jq.Params()
    cond = where(filters, params, prefix)
    return f"SELECT id, state FROM jobs WHERE {cond} ORDER BY id", params.values
