"""The asyncio client: `AsyncClient`, the methods of `Client` as coroutines.

    from jobbie import AsyncClient

    async with AsyncClient() as client:
        job_id = await client.enqueue("emails", {"to": "ada@example.com"})
        job = await client.wait(job_id)

One DEALER socket (`zmq.asyncio`) carries every request of the client; replies are matched to
their requests by id, so any number of coroutines may have requests in flight at once. The rules
are those of `Client`: writes get a `request_id`, UNAVAILABLE and RESOURCE_EXHAUSTED answers (and
time-outs) are retried with it for up to `retry_for` seconds after `retry_after_ms`, and with
nothing listening at the address the first call fails within `connect_timeout` (2 s) with
UNAVAILABLE / `unreachable` and the "start one with: jobbie server" hint. CURVE (`curve_server_key`,
`curve_client_keys`, JOBBIE_CURVE_SERVER_KEY) is as for `Client`, and so is the UNAVAILABLE /
`handshake_failed` of endpoints that answer but complete no handshake.

A client belongs to the event loop it was first used in.
"""
from __future__ import annotations

import asyncio
import itertools
import os

import zmq
import zmq.asyncio

from . import curve
from .client import (HANDSHAKE_EVENTS, begin_call, check_endpoints, deliver_reply, handshake_event, handshake_failed,
                     handshake_failure, request_frame, retry_pause, server_endpoint, unreachable)
from .errors import Unavailable
from .methods import SLEEP, Methods


class AsyncClient(Methods):
    """A connection to a jobbie node (or several, comma-separated) for asyncio code.

    Every method of `Client` (enqueue, get_job, wait, fetch, ack, fail, heartbeat, cancel, ...)
    is here with the same arguments, and returns an awaitable.
    """

    def __init__(self, server: str | None = None, timeout: float = 10.0, retry_for: float = 30.0,
                 client_key: str | None = None, connect_timeout: float = 2.0, token: str | None = None,
                 curve_server_key: str | bytes | None = None, curve_client_keys=None):
        self.endpoint = server_endpoint(server)
        self._endpoints = check_endpoints(self.endpoint)
        # CURVE: the server key per endpoint and this client's key pair, or None (see Client).
        self._curve_keys, self._curve_pair = curve.client_settings(curve_server_key, curve_client_keys,
                                                                   len(self._endpoints))
        self._handshake_failure: tuple[int, int] | None = None
        self.timeout = timeout
        self.retry_for = retry_for
        self.client_key = client_key
        #: API token for a node started with --auth (default $JOBBIE_TOKEN); sent with every request.
        self.token = token if token is not None else (os.environ.get("JOBBIE_TOKEN") or None)
        self.connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future] = {}
        self._sock = None
        self._tasks: list[asyncio.Task] = []
        self._connected: asyncio.Event | None = None
        self._closed = False

    # ------------------------------------------------------------- the socket
    def _open(self):
        if self._sock is not None:
            return
        if self._closed:
            raise Unavailable("client is closed", reason="closed")
        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        if len(self._endpoints) > 1:
            sock.setsockopt(zmq.IMMEDIATE, 1)  # round-robin over the connected nodes only
        for i, endpoint in enumerate(self._endpoints):
            curve.secure(sock, self._curve_keys[i] if self._curve_keys else None, self._curve_pair)
            sock.connect(endpoint)
        self._sock, self._monitor = sock, monitor
        self._connected = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._watch())]

    async def _read(self):
        while True:
            frame = await self._sock.recv()
            self._connected.set()
            deliver_reply(self._futures, frame)

    async def _watch(self):
        while True:  # until the first completed handshake: that is all that is needed
            event, value = handshake_event(await self._monitor.recv_multipart())
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected.set()
                return
            if handshake_failure(event, self._curve_keys is not None):
                self._handshake_failure = (event, value)

    # --------------------------------------------------------------- requests
    async def submit(self, op: str, args: dict | None = None) -> asyncio.Future:
        """Send one request now; the future resolves to the raw reply map ({"id", "ok"|"err"})."""
        self._open()
        req_id = next(self._ids)
        frame = request_frame(req_id, op, args, self.client_key, self.token)
        fut = asyncio.get_running_loop().create_future()
        self._futures[req_id] = fut
        fut.req_id = req_id
        await self._sock.send(frame)
        return fut

    async def call(self, op: str, **args) -> dict:
        """Send one request and return its `ok` map, retrying what is safe to retry (as Client.call)."""
        self._open()
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), self.connect_timeout)
            except asyncio.TimeoutError:
                if self._handshake_failure is not None:
                    raise handshake_failed(self.endpoint, self.connect_timeout, *self._handshake_failure,
                                           curve_on=self._curve_keys is not None) from None
                raise unreachable(self.endpoint, self.connect_timeout) from None
        spec, give_up, wait = begin_call(op, args, self.timeout, self.retry_for)
        pause = 0.05
        while True:
            fut = await self.submit(op, args)
            try:
                reply = await asyncio.wait_for(fut, wait)
            except asyncio.TimeoutError:
                self._futures.pop(fut.req_id, None)
                reply = {"err": {"code": "UNAVAILABLE", "reason": "timeout",
                                 "message": f"no answer from {self.endpoint} within {wait:g}s"}}
            if "ok" in reply:
                return reply["ok"]
            await asyncio.sleep(retry_pause(reply, spec, give_up, pause))
            pause = min(pause * 2, 1.0)

    async def _drive(self, flow):
        step = next(flow)
        try:
            while True:
                op, args = step
                if op == SLEEP:
                    await asyncio.sleep(args)
                    step = flow.send(None)
                else:
                    step = flow.send(await self.call(op, **args))
        except StopIteration as done:
            return done.value

    # -------------------------------------------------------------- lifetime
    async def close(self):
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, zmq.ZMQError):
                pass
        if self._sock is not None:
            self._sock.disable_monitor()
            self._monitor.close()
            self._sock.close()
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(Unavailable("client closed", reason="closed"))
        self._futures.clear()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
