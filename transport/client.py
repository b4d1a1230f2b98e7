"""The Python client: pipelined requests over one DEALER socket.

One background thread owns the socket; any number of caller threads submit
requests and wait on futures, so many requests are in flight at once and
replies may come back in any order (matched by request id).

`call` is the safe way in: writes get a `request_id` (unless given), and a
time-out, UNAVAILABLE or RESOURCE_EXHAUSTED answer is retried with that same
`request_id` until `retry_for` runs out, honouring `retry_after_ms`. The
server applies such a retry at most once.

A client that has never reached any of its endpoints fails its first call
after `connect_timeout` (2 s) with UNAVAILABLE / `unreachable` and a hint,
instead of retrying for `retry_for` against an address where nothing listens.
Once connected, a node that goes away is ridden through by the retries.
"""
from __future__ import annotations

import itertools
import os
import queue
import re
import threading
import time
import uuid
from concurrent.futures import Future, TimeoutError as FutureTimeout

import zmq

from . import codec
from .errors import RETRYABLE, InvalidArgument, Unavailable, from_wire
from .ops import OPS, Limits, validate

#: Requests larger than this are checked here against the server's own hard caps before they are
#: sent (smaller ones cannot break them, so the common case costs nothing).
LOCAL_CHECK_BYTES = Limits().payload_bytes_max


def _refuse_oversized(op: str, args: dict, frame_bytes: int):
    """Refuse, without sending it, a request that every server would refuse for its size: the same
    INVALID_ARGUMENT naming the field (`payload`, too_large) the server would answer."""
    spec = OPS.get(op)
    if spec is None or spec.path in ("read", "local"):
        return
    try:
        validate(op, args, Limits(), frame_bytes)
    except InvalidArgument as exc:
        if exc.reason == "too_large":
            raise InvalidArgument(f"{exc.message} (refused by the client, nothing was sent)", field=exc.field,
                                  reason=exc.reason) from None

DEFAULT_SERVER = "tcp://127.0.0.1:7700"
#: Writes that are not given a request_id automatically: retrying them with
#: one would store their (possibly large) results in the dedupe table.
_NO_AUTO_REQUEST_ID = frozenset({"fetch", "heartbeat"})


def _given(options: dict) -> dict:
    return {k: v for k, v in options.items() if v is not None}


ENDPOINT = re.compile(r"(tcp://[^\s,/]+:[0-9]{1,5}|ipc://\S+|inproc://\S+)\Z")


def server_endpoint(server: str | None = None) -> str:
    return server or os.environ.get("JOBBIE_SERVER") or DEFAULT_SERVER


def check_endpoints(server: str) -> list[str]:
    """The comma-separated endpoints of `server`, each a ZeroMQ address. Raises InvalidArgument."""
    endpoints = [e.strip() for e in server.split(",") if e.strip()]
    if not endpoints:
        raise InvalidArgument("no server address given; write tcp://HOST:PORT, e.g. tcp://127.0.0.1:7700",
                              field="server", reason="invalid_name")
    for e in endpoints:
        if not ENDPOINT.match(e):
            hint = f" (did you mean tcp://{e}?)" if re.fullmatch(r"[^\s:/]+:[0-9]{1,5}", e) else ""
            raise InvalidArgument(f"server address {e!r} is not a ZeroMQ endpoint{hint}; write tcp://HOST:PORT, "
                                  "e.g. tcp://127.0.0.1:7700", field="server", reason="invalid_name")
    return endpoints


class Client:
    """A connection to a jobbie node, or to several (`server="tcp://a:7700,tcp://b:7700"`).

    With several endpoints the requests are spread over the nodes that are up,
    and a retry after a node dies goes to another one.
    """

    def __init__(self, server: str | None = None, timeout: float = 10.0, retry_for: float = 30.0,
                 client_key: str | None = None, connect_timeout: float = 2.0):
        self.endpoint = server_endpoint(server)
        self._endpoints = check_endpoints(self.endpoint)
        self.connect_timeout = connect_timeout
        #: Set once a connection to any endpoint has completed its handshake (or a reply came).
        self._connected = threading.Event()
        self.timeout = timeout
        self.retry_for = retry_for
        self.client_key = client_key
        self._ids = itertools.count(1)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._futures: dict[int, Future] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._closed = False
        self._ctx = zmq.Context.instance()
        self._thread = threading.Thread(target=self._io, name="jobbie-client-io", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------- I/O thread
    def _io(self):
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        endpoints = self._endpoints
        # Connection events only (a handful per connection), to tell "nothing listens there" apart
        # from "slow to answer" on the first call.
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        if len(endpoints) > 1:
            # Several nodes: requests go round-robin to the connected ones only,
            # so a dead node's share is not queued for it (retries reach the others).
            sock.setsockopt(zmq.IMMEDIATE, 1)
        for endpoint in endpoints:
            sock.connect(endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while not self._closed:
                for fd_or_sock, _ in poller.poll(200):
                    if fd_or_sock is monitor:
                        while True:
                            try:
                                monitor.recv_multipart(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            self._connected.set()
                    elif fd_or_sock is sock:
                        while True:
                            try:
                                frame = sock.recv(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            self._deliver(frame)
                    else:
                        try:
                            os.read(self._wake_r, 65536)
                        except BlockingIOError:
                            pass
                while True:
                    try:
                        data = self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    sock.send(data)
        finally:
            sock.disable_monitor()
            monitor.close()
            sock.close()
            for fut in list(self._futures.values()):
                if not fut.done():
                    fut.set_exception(Unavailable("client closed", reason="closed"))

    def _deliver(self, frame: bytes):
        self._connected.set()
        try:
            msg = codec.decode(frame)
            fut = self._futures.pop(msg.get("id"), None)
        except (codec.DecodeError, AttributeError):
            return
        if fut is not None and not fut.done():
            fut.set_result(msg)

    # --------------------------------------------------------------- requests
    def submit(self, op: str, args: dict | None = None) -> Future:
        """Send one request now; the future resolves to the raw reply map ({"id", "ok"|"err"})."""
        if self._closed:
            raise Unavailable("client is closed", reason="closed")
        req_id = next(self._ids)
        msg = {"id": req_id, "op": op, "args": args or {}}
        if self.client_key:
            msg["client"] = self.client_key
        frame = codec.encode(msg)
        if len(frame) > LOCAL_CHECK_BYTES:
            _refuse_oversized(op, args or {}, len(frame))
        fut: Future = Future()
        self._futures[req_id] = fut
        fut.req_id = req_id
        self._outbox.put(frame)
        os.write(self._wake_w, b"x")
        return fut

    def forget(self, fut: Future):
        self._futures.pop(getattr(fut, "req_id", None), None)

    def call(self, op: str, **args) -> dict:
        """Send one request and return its `ok` map, retrying what is safe to retry.

        Raises:
            JobbieError: the server's answer (typed by code), or Unavailable after `retry_for`.
        """
        if not self._connected.is_set() and not self._connected.wait(self.connect_timeout):
            raise Unavailable(f"nothing answers at {self.endpoint} (no connection within "
                              f"{self.connect_timeout:g} s); start one with: jobbie server, or point "
                              "--server / JOBBIE_SERVER at a running node", reason="unreachable")
        spec = OPS.get(op)
        if spec is not None and spec.path == "write" and op not in _NO_AUTO_REQUEST_ID:
            args.setdefault("request_id", uuid.uuid4().hex)
        give_up = time.monotonic() + self.retry_for
        wait = self.timeout + args.get("wait_ms", 0) / 1000.0
        pause = 0.05
        while True:
            fut = self.submit(op, args)
            try:
                reply = fut.result(timeout=wait)
            except FutureTimeout:
                self.forget(fut)
                reply = {"err": {"code": "UNAVAILABLE", "reason": "timeout",
                                 "message": f"no answer from {self.endpoint} within {wait:g}s"}}
            if "ok" in reply:
                return reply["ok"]
            err = reply.get("err") or {}
            if err.get("code") not in RETRYABLE or time.monotonic() >= give_up or (
                    spec is not None and spec.path == "control"):
                # (a membership change is not idempotent: its outcome must be checked, not retried)
                raise from_wire(err)
            hint = err.get("retry_after_ms")
            time.sleep(min(hint / 1000.0, 5.0) if hint else pause)
            pause = min(pause * 2, 1.0)

    # ---------------------------------------------------------- conveniences
    # `call` sends what it is given (a nil payload is a payload); these drop
    # the options left unset, so the server applies its defaults.
    def enqueue(self, queue: str, payload, **options) -> str:
        return self.call("enqueue", queue=queue, payload=payload, **_given(options))["job_id"]

    def enqueue_batch(self, jobs: list, batch: dict | None = None, **options) -> dict:
        return self.call("enqueue_batch", jobs=jobs, **_given(dict(options, batch=batch)))

    def fetch(self, queues, worker_id: str, count: int = 1, wait_ms: int = 0, lease_ms: int = 30_000,
              hostname: str | None = None) -> list:
        queues = [queues] if isinstance(queues, str) else list(queues)
        return self.call("fetch", queues=queues, worker_id=worker_id, count=count, wait_ms=wait_ms,
                         lease_ms=lease_ms, **_given({"hostname": hostname}))["jobs"]

    def ack(self, job_id: str, attempt: int | None = None, result=None, **options) -> dict:
        return self.call("ack", job_id=job_id, result=result, **_given(dict(options, attempt=attempt)))

    def fail(self, job_id: str, error: str, attempt: int | None = None, **options) -> dict:
        return self.call("fail", job_id=job_id, error=error, **_given(dict(options, attempt=attempt)))

    def heartbeat(self, worker_id: str, jobs: dict) -> dict:
        return self.call("heartbeat", worker_id=worker_id, jobs=jobs)["jobs"]

    def get_job(self, job_id: str) -> dict:
        return self.call("get_job", job_id=job_id)

    def cancel(self, job_id: str) -> dict:
        return self.call("cancel_job", job_id=job_id)

    def retry(self, job_id: str) -> dict:
        return self.call("retry_job", job_id=job_id)

    def delete(self, job_id: str) -> dict:
        return self.call("delete_job", job_id=job_id)

    def pause(self, queue: str) -> dict:
        return self.call("pause_queue", queue=queue)

    def resume(self, queue: str) -> dict:
        return self.call("resume_queue", queue=queue)

    def queues(self) -> list:
        return self.call("list_queues")["queues"]

    def status(self) -> dict:
        return self.call("cluster_status")

    # ------------------------------------------------- usage and prices (docs/ai.md)
    def set_price(self, model: str, input_usd_per_mtok: float, output_usd_per_mtok: float,
                  provider: str | None = None, **options) -> dict:
        return self.call("set_price", model=model, input_usd_per_mtok=input_usd_per_mtok,
                         output_usd_per_mtok=output_usd_per_mtok, **_given(dict(options, provider=provider)))

    def list_prices(self) -> list:
        return self.call("list_prices")["prices"]

    def delete_price(self, model: str, provider: str | None = None) -> dict:
        return self.call("delete_price", model=model, **_given({"provider": provider}))

    def usage_summary(self, since: int | None = None, until: int | None = None, group_by=None,
                      **filters) -> dict:
        group_by = [group_by] if isinstance(group_by, str) else group_by
        return self.call("usage_summary", **_given(dict(filters, since=since, until=until, group_by=group_by)))

    def rebuild_usage(self) -> dict:
        return self.call("rebuild_usage")

    # ------------------------------------------- budgets, held jobs, audit (docs/ai.md)
    def set_budget(self, budget_id: str, scope: str = "global", target: str | None = None,
                   limit_usd: float | None = None, limit_tokens: int | None = None, window: str = "day",
                   **options) -> dict:
        """Create or replace a budget; answers it as get_budget shows it (plus `replaced`).

        Options: hours (window "hours"), on_exceed ("hold", "reject", "alert"), alert_queue,
        hold_timeout_ms, timeout_action, note, actor."""
        return self.call("set_budget", budget_id=budget_id, scope=scope, window=window,
                         **_given(dict(options, target=target, limit_usd=limit_usd, limit_tokens=limit_tokens)))

    def get_budget(self, budget_id: str) -> dict:
        """One budget with its spend now: limit, spent, reserved, remaining, reset_at."""
        return self.call("get_budget", budget_id=budget_id)["budget"]

    def list_budgets(self, scope: str | None = None) -> list:
        return self.call("list_budgets", **_given({"scope": scope}))["budgets"]

    def delete_budget(self, budget_id: str, note: str | None = None) -> dict:
        return self.call("delete_budget", budget_id=budget_id, **_given({"note": note}))

    def approve(self, job_ids, note: str | None = None, extend: dict | None = None,
                actor: str | None = None) -> dict:
        """Release held job(s) to pending: one id (answers with `state`) or a list (`affected`, `errors`).
        `extend={"usd": 5}` raises the budget that held them instead of letting them run past it once."""
        target = {"job_id": job_ids} if isinstance(job_ids, str) else {"job_ids": list(job_ids)}
        return self.call("approve_job", **target, **_given({"note": note, "extend": extend, "actor": actor}))

    def reject(self, job_ids, note: str | None = None, actor: str | None = None) -> dict:
        """Cancel held job(s); `last_error` becomes "rejected: NOTE"."""
        target = {"job_id": job_ids} if isinstance(job_ids, str) else {"job_ids": list(job_ids)}
        return self.call("reject_job", **target, **_given({"note": note, "actor": actor}))

    def held(self, queue: str | None = None, budget_id: str | None = None, limit: int = 100) -> list:
        """Held jobs: job_id, queue, hold_reason, held_at, hold_until, cost_usd, ..."""
        return self.call("list_held", limit=limit, **_given({"queue": queue, "budget_id": budget_id}))["jobs"]

    def audit(self, job_id: str | None = None, budget_id: str | None = None, kind=None, since: int | None = None,
              limit: int = 100) -> list:
        """Audit events, newest first (see list_audit for the paging cursor)."""
        kind = [kind] if isinstance(kind, str) else kind
        return self.call("list_audit", limit=limit, **_given({"job_id": job_id, "budget_id": budget_id,
                                                               "kind": kind, "since": since}))["events"]

    # ------------------------------------------------------ agent loops (docs/ai.md)
    def iterations(self, job_id: str, full: bool = False) -> list:
        """An agent job's iteration records, in order (checkpoints and traces with `full`)."""
        out, after = [], 0
        while True:
            page = self.call("list_iterations", job_id=job_id, after=after, limit=10_000, full=full)
            out += page["iterations"]
            if not page["has_more"]:
                return out
            after = out[-1]["n"]

    def replay(self, job_id: str, from_iteration: int = 1, **overrides) -> str:
        """Replay an agent job from an iteration (overrides: payload, agent, tags, queue, budget_usd);
        returns the new job's id."""
        return self.call("replay_job", job_id=job_id, from_iteration=from_iteration,
                         **_given({"overrides": overrides or None}))["job_id"]

    # -------------------------------------------------------------- lifetime
    def close(self):
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2.0)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
