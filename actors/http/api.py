"""The JSON API under /v1, /healthz and /readyz: Starlette endpoints over the gateway link.

Every route ends in one protocol op sent to the gateway (see core.py for the tables and rules).
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobbie.transport.errors import InvalidArgument, JobbieError

from . import core

JSON = "application/json"


def json_response(value, status: int = 200, headers: dict | None = None) -> Response:
    return Response(core.dump_json(value), status_code=status, media_type=JSON, headers=headers)


def error_response(err: dict) -> Response:
    status, body, headers = core.error_answer(err)
    return json_response(body, status, headers)


def refusal(exc: JobbieError, status: int | None = None) -> Response:
    answer_status, body, headers = core.error_answer(exc.to_wire())
    return json_response(body, status or answer_status, headers)


async def read_body(request: Request) -> bytes:
    """The body, refused past BODY_BYTES_MAX without reading it all. Raises InvalidArgument (too_large)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > core.BODY_BYTES_MAX:
        raise InvalidArgument(f"the body is {declared} bytes, over the {core.BODY_BYTES_MAX}-byte limit",
                              reason="too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > core.BODY_BYTES_MAX:
            raise InvalidArgument(f"the body is over the {core.BODY_BYTES_MAX}-byte limit", reason="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_args(request: Request):
    """The JSON body as protocol values. A body must say it is JSON: a cross-site form cannot."""
    data = await read_body(request)
    if data.strip():
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != JSON:
            raise InvalidArgument(f"send the body as {JSON} (content-type was {kind or 'not set'!r})",
                                  field="content-type", reason="malformed")
    return core.parse_body(data)


def bearer(request: Request) -> str | None:
    """The token of `Authorization: Bearer TOKEN` (for a node started with --auth), else None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def client_key(request: Request) -> str:
    """The `client` key for admission's per-client limits and the audit trail."""
    given = request.headers.get("x-jobbie-client", "")
    if given and 1 <= len(given) <= 120 and all(0x21 <= ord(c) <= 0x7e for c in given):
        return "http:" + given
    return "http"


class Api:
    def __init__(self, link, version: str):
        self.link = link
        self.version = version
        self.spec = core.openapi(version)

    async def answer(self, request: Request, op: str, args) -> Response:
        try:
            reply = await self.link.call(op, args, client_key(request), bearer(request))
        except (OverflowError, ValueError, TypeError) as exc:  # a value msgpack cannot encode
            return refusal(InvalidArgument(f"the request holds a value the protocol cannot carry: {exc}",
                                           reason="out_of_range"))
        if "ok" in reply:
            return json_response(reply["ok"])
        return error_response(reply.get("err") or {"code": "INTERNAL", "message": "malformed reply"})

    async def op(self, request: Request) -> Response:
        name = request.path_params["op"]
        try:
            args = await json_args(request)
        except InvalidArgument as exc:
            return refusal(exc, 413 if exc.reason == "too_large" else None)
        return await self.answer(request, name, args)

    def resource(self, route: core.Route):
        async def endpoint(request: Request) -> Response:
            try:
                if route.query:
                    given = core.args_from_query(route.op, list(request.query_params.multi_items()))
                else:
                    given = await json_args(request)
                args = core.route_args(route, request.path_params, given)
            except InvalidArgument as exc:
                return refusal(exc, 413 if exc.reason == "too_large" else None)
            return await self.answer(request, route.op, args)
        endpoint.__name__ = route.op
        return endpoint

    async def openapi(self, request: Request) -> Response:
        return json_response(self.spec)

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "up"})

    async def readyz(self, request: Request) -> Response:
        """Ready: the gateway answers, raft knows a leader, and the store answers a read."""
        reply = await self.link.call("health", {})
        status = reply.get("ok")
        if status is None:
            return json_response({"ready": False, "why": (reply.get("err") or {}).get("message")}, 503)
        if not status.get("leader_known"):
            return json_response({"ready": False, "why": f"no raft leader known (role {status.get('role')})"}, 503)
        store = await self.link.call("list_queues", {}, token=bearer(request))
        code = (store.get("err") or {}).get("code")
        if "ok" not in store and code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return json_response({"ready": False, "why": (store.get("err") or {}).get("message")}, 503)
        return json_response({"ready": True, "role": status["role"]})

    async def not_found(self, request: Request) -> Response:
        return json_response({"error": {"code": "NOT_FOUND", "reason": None, "field": None,
                                        "message": f"no route {request.method} {request.url.path}; "
                                                   "see /v1/openapi.json"}}, 404)

    def routes(self) -> list:
        out = [Route("/v1/openapi.json", self.openapi, methods=["GET"]),
               Route("/v1/ops/{op}", self.op, methods=["POST"]),
               Route("/healthz", self.healthz, methods=["GET"]),
               Route("/readyz", self.readyz, methods=["GET"])]
        by_path: dict[str, list] = {}
        for route in core.ROUTES:
            by_path.setdefault(route.path, []).append(route)
        for path, group in by_path.items():
            for route in group:
                out.append(Route(path, self.resource(route), methods=[route.method]))
        out.append(Route("/v1/{rest:path}", self.not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]))
        return out
