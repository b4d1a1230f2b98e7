"""The http actor process: JSON API (/v1), web UI (/), Prometheus /metrics, on one port.

A Starlette app served by uvicorn in this process's event loop. It reaches the node the way a
client does, through the gateway's ZeroMQ port (link.py), so it adds no second write path and
needs no access to LMDB; every node of a cluster can run one. While no one calls it, it sends
the gateway one cluster_status every few seconds (the dashboard's rates) and nothing else.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import metadata

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobbie.actors.config import NodeConfig
from jobbie.actors.curve import node_client_curve

from . import metrics
from .api import Api, bearer
from .link import GatewayLink
from .ui import SAMPLE_EVERY_S, Ui

log = logging.getLogger("jobbie.http")
#: How far back /metrics sums usage (the usage actor's rollups refuse windows past 10 years).
USAGE_WINDOW_MS = 9 * 365 * 86_400_000


def version() -> str:
    try:
        return metadata.version("jobbie")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Timing:
    """ASGI middleware: counts and times every request by route template (bounded labels)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            metrics.HTTP_LATENCY.labels(label, method).observe(time.perf_counter() - start)
            metrics.HTTP_REQUESTS.labels(label, method, str(status[0])).inc()


def build_app(link: GatewayLink) -> Starlette:
    api = Api(link, version())
    ui = Ui(link, version())

    async def scrape(request: Request) -> Response:
        now_ms = int(time.time() * 1000)
        names = ("cluster_status", "list_queues", "usage_summary", "list_budgets")
        args = ({}, {}, {"since": now_ms - USAGE_WINDOW_MS, "group_by": ["queue", "model"], "limit": 10_000}, {})
        token = bearer(request)
        replies = await asyncio.gather(*(link.call(n, a, "metrics", token) for n, a in zip(names, args)))
        snap = {n: r.get("ok") for n, r in zip(names, replies)}
        return Response(metrics.exposition(snap), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def sampler():
        while True:
            with contextlib.suppress(Exception):
                await ui.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        link.start()
        task = asyncio.get_running_loop().create_task(sampler())
        try:
            yield
        finally:
            task.cancel()

    routes = [Route("/metrics", scrape, methods=["GET"])] + api.routes() + ui.routes()
    return Starlette(routes=routes, lifespan=lifespan, middleware=[])


def run(config: NodeConfig):
    host, _, port = config.http_bind.rpartition(":")
    link = GatewayLink(config.client_endpoint, config.write_timeout_ms / 1000.0, *node_client_curve(config))
    app = Timing(build_app(link))
    server = uvicorn.Server(uvicorn.Config(app, host=host.strip("[]"), port=int(port), log_level="warning",
                                           log_config=None, access_log=False, lifespan="on", server_header=False,
                                           timeout_graceful_shutdown=5))
    log.info("http: JSON API, web UI and /metrics at http://%s/ (gateway %s)", config.http_bind,
             config.client_endpoint)
    try:
        server.run()
    finally:
        link.close()
    return 0 if server.started else 1
