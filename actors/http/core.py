"""The http actor's rules: from HTTP requests to protocol ops, and from replies to HTTP answers.

It owns:
- reading a JSON body strictly, with the payload rules of the ZeroMQ path: no duplicate keys,
  no NaN or Infinity, bounded nesting, integers msgpack can carry; and the one encoding of
  binary values, which JSON lacks: ``{"$base64": "..."}`` both ways;
- reading query strings into op args by the op's own Arg rows (`limit=5` is an integer,
  `state=dead,retrying` a list, `tag=k=v` a tag map);
- the resource routes (`GET /v1/jobs/{id}` is `get_job`), as one table;
- mapping protocol error codes to HTTP statuses (with `Retry-After` where the error says when);
- the OpenAPI document, generated from the op registry like docs/protocol.md.

What it does not own: validation. Every op goes to the gateway as a client request, and the
gateway's validator answers it, so a bad field gets the same `field` and `reason` over HTTP as
over ZeroMQ. Pure: no sockets, no clock.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass

from jobbie.transport import ops as opsdef
from jobbie.transport.codec import FRAME_BYTES_MAX
from jobbie.transport.errors import REASONS, InvalidArgument

#: Largest request body read (the protocol's frame limit; JSON is larger than msgpack for the same value).
BODY_BYTES_MAX = FRAME_BYTES_MAX
#: Nesting allowed in a JSON body: the payload's 64 levels plus the args map around it.
JSON_DEPTH_MAX = opsdef.DEPTH_MAX + 2
BYTES_KEY = "$base64"
INT_MIN, INT_MAX = -2**63, 2**64 - 1

STATUS = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
}


# --------------------------------------------------------------------------- JSON in and out

def _refuse_constant(name):
    raise InvalidArgument(f"{name} is not a number jobbie accepts (JSON has no NaN or Infinity)",
                          reason="out_of_range")


def _pairs(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidArgument(f"a JSON object has the key {key[:64]!r} twice", reason="malformed")
            seen.add(key)
    if len(out) == 1 and BYTES_KEY in out:
        text = out[BYTES_KEY]
        if type(text) is not str:
            raise InvalidArgument(f"{{\"{BYTES_KEY}\": ...}} must hold a base64 string", reason="wrong_type")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{{\"{BYTES_KEY}\": ...}} is not valid base64", reason="wrong_type") from None
    return out


def _check_json(value):
    """Nesting and integer range, without recursion (the parser already bounded the depth)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > JSON_DEPTH_MAX:
            raise InvalidArgument(f"the JSON body nests deeper than {JSON_DEPTH_MAX} levels", reason="too_deep")
        if type(node) is int:
            if not INT_MIN <= node <= INT_MAX:
                raise InvalidArgument("an integer in the body is outside the 64-bit range the protocol carries",
                                      reason="out_of_range")
        elif isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def parse_body(data: bytes):
    """The JSON body as protocol values (an empty body is an empty map). Raises InvalidArgument."""
    if len(data) > BODY_BYTES_MAX:
        raise InvalidArgument(f"the body is {len(data)} bytes, over the {BODY_BYTES_MAX}-byte limit",
                              reason="too_large")
    if not data.strip():
        return {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("the body is not UTF-8 text", reason="malformed") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidArgument(f"the JSON body nests deeper than {JSON_DEPTH_MAX} levels", reason="too_deep") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                              reason="malformed") from None
    _check_json(value)
    return value


def _json_default(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON")


def _finite(value):
    """JSON has no NaN or infinity: such floats (which jobbie never stores) are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def dump_json(value) -> bytes:
    """Protocol values as JSON (binary as {"$base64": ...})."""
    try:
        return json.dumps(value, default=_json_default, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")
    except (ValueError, TypeError):
        return json.dumps(_finite(value), default=_json_default, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")


# --------------------------------------------------------------------------- errors

def error_answer(err: dict) -> tuple[int, dict, dict]:
    """(status, body, headers) for a protocol `err` map."""
    code = err.get("code", "INTERNAL")
    status = STATUS.get(code, 500)
    body = {"error": {"code": code, "reason": err.get("reason"), "field": err.get("field"),
                      "message": err.get("message", "")}}
    headers = {}
    retry = err.get("retry_after_ms")
    if retry is not None:
        body["error"]["retry_after_ms"] = retry
    if status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil((retry or 1000) / 1000)))
    return status, body, headers


# --------------------------------------------------------------------------- query strings

def _query_value(arg: opsdef.Arg, values: list[str], field: str):
    kind = arg.kind
    if kind in ("list", "queues"):
        return [part for v in values for part in v.split(",") if part]
    if kind == "str_map":
        out = {}
        for v in values:
            for part in v.split(","):
                key, eq, val = part.partition("=")
                if not eq or not key:
                    raise InvalidArgument(f"{field} takes key=value pairs, got {part[:64]!r}", field=field,
                                          reason="wrong_type")
                out[key] = val
        return out
    if len(values) > 1:
        raise InvalidArgument(f"{field} is given {len(values)} times", field=field, reason="conflicting_fields")
    text = values[0]
    if kind in ("int", "float"):
        cast, what = (int, "an integer") if kind == "int" else (float, "a number")
        try:
            return cast(text)
        except ValueError:
            raise InvalidArgument(f"{field} must be {what}, got {text[:64]!r}", field=field,
                                  reason="wrong_type") from None
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise InvalidArgument(f"{field} must be true or false, got {text[:64]!r}", field=field, reason="wrong_type")
    if kind in ("map", "struct", "any"):
        return parse_body(text.encode("utf-8"))
    return text


#: Query parameter spellings that read better in a URL than the arg's own name.
QUERY_ALIASES = {"tag": "tags"}


def args_from_query(op_name: str, items: list[tuple[str, str]]) -> dict:
    """A GET route's query string as the op's args, typed by its Arg rows. Raises InvalidArgument.

    Unknown names are passed through as strings, so the gateway refuses them (unknown_field) in
    the words it uses for every client.
    """
    rows = {a.name: a for a in opsdef.OPS[op_name].args}
    grouped: dict[str, list[str]] = {}
    for name, value in items:
        grouped.setdefault(QUERY_ALIASES.get(name, name), []).append(value)
    out = {}
    for name, values in grouped.items():
        arg = rows.get(name)
        if arg is None:
            out[name] = values[0]
        else:
            out[name] = _query_value(arg, values, name)
    return out


# --------------------------------------------------------------------------- resource routes

@dataclass(frozen=True)
class Route:
    method: str
    path: str  # Starlette path syntax
    op: str
    doc: str
    #: Path parameters and the op arg each fills.
    params: tuple = ()
    #: Extra args the route fixes (e.g. `confirm`).
    fixed: tuple = ()
    #: GET: args come from the query string; otherwise from the JSON body.
    query: bool = False


ROUTES = (
    Route("GET", "/v1/queues", "list_queues", "Every queue with counts per state.", query=True),
    Route("POST", "/v1/queues/{queue}/jobs", "enqueue", "Enqueue one job on the queue (body: enqueue args).",
          params=(("queue", "queue"),)),
    Route("POST", "/v1/queues/{queue}/pause", "pause_queue", "Stop handing out the queue's jobs.",
          params=(("queue", "queue"),)),
    Route("POST", "/v1/queues/{queue}/resume", "resume_queue", "Hand out the queue's jobs again.",
          params=(("queue", "queue"),)),
    Route("PUT", "/v1/queues/{queue}/concurrency", "set_concurrency", "Limit the queue's active jobs (body: {max}).",
          params=(("queue", "queue"),)),
    Route("PUT", "/v1/queues/{queue}/throttle", "set_throttle", "Rate-limit the queue (body: {rate, period_ms}).",
          params=(("queue", "queue"),)),
    Route("DELETE", "/v1/queues/{queue}/throttle", "remove_throttle", "Remove the queue's throttle.",
          params=(("queue", "queue"),)),
    Route("GET", "/v1/jobs/{job_id}", "get_job", "One job record.", params=(("job_id", "job_id"),), query=True),
    Route("DELETE", "/v1/jobs/{job_id}", "delete_job", "Delete a job.", params=(("job_id", "job_id"),)),
    Route("POST", "/v1/jobs/{job_id}/retry", "retry_job", "Run a finished or waiting job again now.",
          params=(("job_id", "job_id"),)),
    Route("POST", "/v1/jobs/{job_id}/cancel", "cancel_job", "Cancel a job.", params=(("job_id", "job_id"),)),
    Route("POST", "/v1/jobs/{job_id}/approve", "approve_job", "Release a held job (body: note, extend, payload).",
          params=(("job_id", "job_id"),)),
    Route("POST", "/v1/jobs/{job_id}/reject", "reject_job", "Reject a held job (body: note, revise, payload).",
          params=(("job_id", "job_id"),)),
    Route("GET", "/v1/jobs/{job_id}/iterations", "list_iterations", "An agent job's iterations.",
          params=(("job_id", "job_id"),), query=True),
    Route("GET", "/v1/jobs/{job_id}/iterations/{n:int}", "get_iteration", "One iteration, checkpoint included.",
          params=(("job_id", "job_id"), ("n", "n")), query=True),
    Route("POST", "/v1/jobs/{job_id}/replay", "replay_job", "A new job from an iteration of an agent job "
          "(body: from_iteration, overrides).", params=(("job_id", "job_id"),)),
    Route("GET", "/v1/search", "search_jobs", "Search jobs: the filters of search_jobs as query parameters "
          "(state=dead,retrying; tag=key=value).", query=True),
    Route("POST", "/v1/bulk", "bulk", "One action on many jobs (body: bulk args)."),
    Route("GET", "/v1/bulk/{bulk_id}", "bulk_status", "Progress of a bulk run.", params=(("bulk_id", "bulk_id"),),
          query=True),
    Route("GET", "/v1/held", "list_held", "Held jobs, with why and since when.", query=True),
    Route("GET", "/v1/audit", "list_audit", "The audit trail, newest first.", query=True),
    Route("GET", "/v1/usage", "usage_summary", "Usage and cost over a window (group_by=model,queue).", query=True),
    Route("GET", "/v1/prices", "list_prices", "The price table.", query=True),
    Route("GET", "/v1/budgets", "list_budgets", "Every budget with its spend now.", query=True),
    Route("GET", "/v1/budgets/{budget_id}", "get_budget", "One budget with its spend now.",
          params=(("budget_id", "budget_id"),), query=True),
    Route("PUT", "/v1/budgets/{budget_id}", "set_budget", "Create or replace a budget (body: set_budget args).",
          params=(("budget_id", "budget_id"),)),
    Route("DELETE", "/v1/budgets/{budget_id}", "delete_budget", "Delete a budget.",
          params=(("budget_id", "budget_id"),)),
    Route("GET", "/v1/workers", "list_workers", "Workers seen recently, with the jobs they hold.", query=True),
    Route("GET", "/v1/dead", "list_dead", "Dead jobs with their last error.", query=True),
    Route("GET", "/v1/schedules", "list_schedules", "Cron schedules.", query=True),
    Route("GET", "/v1/cluster/status", "cluster_status", "This node's raft role, indexes and processes.", query=True),
    Route("POST", "/v1/admin/mirror/rebuild", "rebuild_mirror", "Rebuild the search mirror from LMDB."),
    Route("POST", "/v1/admin/usage/rebuild", "rebuild_usage", "Rebuild the usage rollups from LMDB."),
)


def route_args(route: Route, path_params: dict, given: dict) -> dict:
    """The op's args: what the body or query gave, plus the path parameters. Raises InvalidArgument."""
    if type(given) is not dict:
        raise InvalidArgument(f"the body must be a JSON object of {route.op} args", field="args", reason="wrong_type")
    args = dict(given)
    for param, arg_name in route.params:
        value = path_params[param]
        if arg_name in args and args[arg_name] != value:
            raise InvalidArgument(f"{arg_name} is given in the path and, differently, in the body",
                                  field=arg_name, reason="conflicting_fields")
        args[arg_name] = value
    for name, value in route.fixed:
        args.setdefault(name, value)
    return args


def client_ops() -> list[opsdef.Op]:
    """The ops a client may send, by name."""
    return [op for name, op in sorted(opsdef.OPS.items()) if op.path != "internal"]


# --------------------------------------------------------------------------- OpenAPI

QUEUE_PATTERN = "^" + opsdef.QUEUE_NAME.pattern.removesuffix("\\Z") + "$"
_JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "queue": "string",
               "id": "string", "raft_address": "string"}


def arg_schema(arg: opsdef.Arg) -> dict:
    kind = arg.kind
    if kind == "any":
        schema = {}
    elif kind == "queues":
        schema = {"type": "array", "items": {"type": "string", "pattern": QUEUE_PATTERN},
                  "minItems": 1, "maxItems": 64}
    elif kind == "str_map":
        schema = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 256}, "maxProperties": 32}
    elif kind == "map":
        schema = {"type": "object"}
    elif kind == "list":
        schema = {"type": "array"}
    elif kind == "struct":
        schema = object_schema(arg.fields)
    else:
        schema = {"type": _JSON_TYPES[kind]}
        if kind == "queue":
            schema["pattern"] = QUEUE_PATTERN
        if arg.low is not None:
            schema["minimum"] = arg.low
        if arg.high is not None:
            schema["maximum"] = arg.high
        if arg.choices:
            schema["enum"] = list(arg.choices)
        if arg.length_max is not None:
            schema["maxLength"] = arg.length_max
    if arg.doc:
        schema["description"] = arg.doc
    if arg.default is not None:
        schema["default"] = arg.default
    return schema


def object_schema(rows) -> dict:
    schema = {"type": "object", "properties": {a.name: arg_schema(a) for a in rows}, "additionalProperties": False}
    required = [a.name for a in rows if a.required]
    if required:
        schema["required"] = required
    return schema


ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string", "enum": sorted(STATUS)},
        "reason": {"type": ["string", "null"], "enum": sorted(REASONS) + [None]},
        "field": {"type": ["string", "null"]},
        "message": {"type": "string"},
        "retry_after_ms": {"type": "integer"},
    }}},
}


def _responses(op: opsdef.Op) -> dict:
    ok = {"type": "object", "properties": {name: {} for name in op.ok}}
    out = {"200": {"description": "The op's `ok` map.", "content": {"application/json": {"schema": ok}}}}
    for status, what in ((400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED (with --auth)"),
                         (403, "PERMISSION_DENIED (with --auth)"), (404, "NOT_FOUND"), (409, "FAILED_PRECONDITION or ALREADY_EXISTS"),
                         (429, "RESOURCE_EXHAUSTED (Retry-After set)"), (503, "UNAVAILABLE (Retry-After set)"),
                         (500, "INTERNAL")):
        out[str(status)] = {"description": what,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return out


def openapi(version: str) -> dict:
    """The OpenAPI 3.1 document: every client op at POST /v1/ops/{op}, and the resource routes."""
    paths: dict = {}
    for op in client_ops():
        paths[f"/v1/ops/{op.name}"] = {"post": {
            "operationId": op.name, "summary": op.doc, "tags": [op.path],
            "requestBody": {"required": False, "content": {"application/json": {"schema": object_schema(op.args)}}},
            "responses": _responses(op)}}
    for route in ROUTES:
        op = opsdef.OPS[route.op]
        filled = {arg for _, arg in route.params} | {name for name, _ in route.fixed}
        rows = [a for a in op.args if a.name not in filled]
        entry = {"operationId": f"{route.method.lower()}_{route.path.strip('/').replace('/', '_')}"
                                .replace("{", "").replace("}", "").replace(":int", ""),
                 "summary": route.doc, "description": f"The `{route.op}` op.", "tags": ["resources"],
                 "parameters": [{"name": p.split(":")[0], "in": "path", "required": True,
                                 "schema": {"type": "integer" if p == "n" else "string"}}
                                for p, _ in route.params],
                 "responses": _responses(op)}
        if route.query:
            entry["parameters"] += [{"name": "tag" if a.name == "tags" else a.name, "in": "query",
                                     "required": a.required, "schema": arg_schema(a)} for a in rows]
        elif rows:
            entry["requestBody"] = {"required": False,
                                    "content": {"application/json": {"schema": object_schema(rows)}}}
        paths.setdefault(route.path.replace(":int", ""), {})[route.method.lower()] = entry
    paths["/healthz"] = {"get": {"summary": "The http process is up.", "responses": {"200": {"description": "up"}}}}
    paths["/readyz"] = {"get": {"summary": "The node knows a leader and its store answers.",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "jobbie", "version": version,
                 "description": "JSON over HTTP for every op of the jobbie protocol. Binary values are "
                                f"written {{\"{BYTES_KEY}\": \"...\"}} both ways."},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
    }
