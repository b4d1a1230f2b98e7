"""The http actor's way into the node: one ZeroMQ DEALER to the gateway, as any client.

Requests from every HTTP connection share the socket; replies are matched to their
request by id. There is no retry here: an UNAVAILABLE or RESOURCE_EXHAUSTED answer goes
back to the HTTP caller as 503 / 429 with Retry-After, and the caller decides (a write
retried with the same `request_id` is applied at most once, as over ZeroMQ). On a node with
--curve the socket speaks CURVE with the node's own keys (actors/curve.py).
"""
from __future__ import annotations

import asyncio
import itertools

import zmq
import zmq.asyncio

from jobbie.actors.gateway.core import MIRROR_TIMEOUT_S
from jobbie.transport import codec, curve
from jobbie.transport.client import deliver_reply
from jobbie.transport.ops import OPS

#: Slack over the gateway's own time-out: the gateway answers first when it is alive.
SLACK_S = 5.0


class GatewayLink:
    def __init__(self, endpoint: str, write_timeout_s: float = 5.0, curve_server_key: bytes | None = None,
                 curve_pair: tuple[bytes, bytes] | None = None):
        self.endpoint = endpoint
        self.write_timeout_s = write_timeout_s
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        curve.secure(self.sock, curve_server_key, curve_pair)
        self.sock.connect(endpoint)
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future] = {}
        self.reader: asyncio.Task | None = None

    def start(self):
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self):
        while True:
            deliver_reply(self.waiting, await self.sock.recv())

    def timeout_for(self, op: str, args: dict) -> float:
        base = MIRROR_TIMEOUT_S.get(op, self.write_timeout_s)
        wait = args.get("wait_ms") if isinstance(args, dict) else None
        return base + (wait / 1000.0 if isinstance(wait, int) and wait > 0 else 0.0) + SLACK_S

    async def call(self, op: str, args: dict, client: str = "http", token: str | None = None) -> dict:
        """The raw reply map: {"ok": ...} or {"err": {...}}."""
        req_id = next(self.ids)
        msg = {"id": req_id, "op": op, "args": args, "client": client}
        if token:
            msg["token"] = token
        frame = codec.encode(msg)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[req_id] = fut
        await self.sock.send(frame)
        try:
            return await asyncio.wait_for(fut, self.timeout_for(op, args))
        except asyncio.TimeoutError:
            return {"err": {"code": "UNAVAILABLE", "reason": "timeout", "retry_after_ms": 1000,
                            "message": f"the gateway at {self.endpoint} did not answer {op} in time "
                                       "(the node may be starting or restarting)"}}
        finally:
            self.waiting.pop(req_id, None)

    async def ok(self, op: str, args: dict | None = None, client: str = "http", token: str | None = None):
        """The `ok` map, or None when the op was refused (for pages that show what they can)."""
        reply = await self.call(op, args or {}, client, token)
        return reply.get("ok")

    def close(self):
        if self.reader is not None:
            self.reader.cancel()
        self.sock.close()
        self.ctx.term()


def is_op(name: str) -> bool:
    op = OPS.get(name)
    return op is not None and op.path != "internal"
