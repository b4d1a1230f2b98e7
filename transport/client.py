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

With `curve_server_key` (or JOBBIE_CURVE_SERVER_KEY) the socket speaks CURVE to a node started
with --curve (see transport/curve.py). Where the endpoints answer but no handshake completes (a
plaintext client and a --curve node, or the reverse, a wrong server key, a client key the node
does not list), the first call fails after `connect_timeout` with UNAVAILABLE /
`handshake_failed`, and the message says which it looks like.
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

from zmq.utils.monitor import parse_monitor_message

from . import codec, curve
from .errors import RETRYABLE, InvalidArgument, Unavailable, from_wire
from .methods import SLEEP, Methods, _given  # noqa: F401 (_given: kept importable from here)
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

def retry_pause(reply: dict, spec, give_up: float, pause: float) -> float:
    """Seconds to wait before sending a refused request again, or raise its error: only
    UNAVAILABLE and RESOURCE_EXHAUSTED are retried (after `retry_after_ms` when the server gave
    one), until `give_up` (a time.monotonic() value), and never a control op."""
    err = reply.get("err") or {}
    if err.get("code") not in RETRYABLE or time.monotonic() >= give_up or (
            spec is not None and spec.path == "control"):
        # (a membership change is not idempotent: its outcome must be checked, not retried)
        raise from_wire(err)
    hint = err.get("retry_after_ms")
    return min(hint / 1000.0, 5.0) if hint else pause


def unreachable(endpoint: str, connect_timeout: float) -> Unavailable:
    return Unavailable(f"nothing answers at {endpoint} (no connection within {connect_timeout:g} s); start one "
                       "with: jobbie server, or point --server / JOBBIE_SERVER at a running node",
                       reason="unreachable")


#: Connection events a client watches: the end of each handshake, whichever way it went.
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
#: The handshake-failed value of a peer that speaks another security mechanism (CURVE against plaintext).
MECHANISM_MISMATCH = getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002)


def handshake_event(frames: list) -> tuple[int, int]:
    """(event, value) of one message of a socket's monitor."""
    event = parse_monitor_message(frames)
    return int(event["event"]), int(event["value"])


def handshake_failure(event: int, curve_on: bool) -> bool:
    """Whether a failed-handshake event says something about the peer. A connection the peer closes
    before any greeting (NO_DETAIL: a reset or a broken pipe), to a plaintext client, is no more than
    nothing listening there: a proxy whose target is gone, a port being closed. That stays
    `unreachable`."""
    return curve_on or event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def handshake_failed(endpoint: str, connect_timeout: float, event: int, value: int, curve_on: bool) -> Unavailable:
    """The error of a first call whose endpoints answered, but whose handshakes all failed."""
    within = f"no handshake with {endpoint} within {connect_timeout:g} s"
    show = "on the server, jobbie curve show --data-dir DIR prints it"
    if not curve_on and event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == MECHANISM_MISMATCH:
        why = (f"{within}: it refuses plaintext; is the server using --curve? set {curve.SERVER_KEY_ENV} to its "
               f"public key ({show})")
    elif not curve_on:
        why = (f"{within}: it refused the handshake; is that a jobbie node's --bind port? (is the server using "
               f"--curve? set {curve.SERVER_KEY_ENV})")
    elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        why = (f"{within}: it refused this client's CURVE key (the server takes only the keys in its "
               f"--curve-clients folder); set {curve.CLIENT_KEY_ENV} to the .key_secret file of a listed key "
               "(jobbie curve keygen makes a pair; its .key file goes in that folder)")
    elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == MECHANISM_MISMATCH:
        why = (f"{within}: it does not speak CURVE; is the server using --curve? if not, unset "
               f"{curve.SERVER_KEY_ENV} (or pass curve_server_key=\"\")")
    else:
        why = (f"{within}: it refused the CURVE handshake; is {curve.SERVER_KEY_ENV} the server's public key "
               f"({show}), and is the server using --curve?")
    return Unavailable(why, reason="handshake_failed")


def request_frame(req_id: int, op: str, args: dict | None, client_key: str | None, token: str | None) -> bytes:
    """One request as sent: the envelope (with the client key and token when set), encoded, and
    refused here if every server would refuse it for its size."""
    msg = {"id": req_id, "op": op, "args": args or {}}
    if client_key:
        msg["client"] = client_key
    if token:
        msg["token"] = token
    frame = codec.encode(msg)
    if len(frame) > LOCAL_CHECK_BYTES:
        _refuse_oversized(op, args or {}, len(frame))
    return frame


def begin_call(op: str, args: dict, timeout: float, retry_for: float):
    """(the op's registry row, when to give up retrying, how long to wait for each answer) for one call;
    a write gets a `request_id` (unless it has one, or is fetch or heartbeat), so its retries apply once."""
    spec = OPS.get(op)
    if spec is not None and spec.path == "write" and op not in _NO_AUTO_REQUEST_ID:
        args.setdefault("request_id", uuid.uuid4().hex)
    return spec, time.monotonic() + retry_for, timeout + args.get("wait_ms", 0) / 1000.0


def deliver_reply(futures: dict, frame: bytes):
    """Resolve the future waiting for this reply frame (matched by its id); drop what matches none."""
    try:
        msg = codec.decode(frame)
        fut = futures.pop(msg.get("id"), None)
    except (codec.DecodeError, AttributeError, TypeError):
        return
    if fut is not None and not fut.done():
        fut.set_result(msg)


DEFAULT_SERVER = "tcp://127.0.0.1:7700"
#: Writes that are not given a request_id automatically: retrying them with
#: one would store their (possibly large) results in the dedupe table.
_NO_AUTO_REQUEST_ID = frozenset({"fetch", "heartbeat"})


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


class Client(Methods):
    """A connection to a jobbie node, or to several (`server="tcp://a:7700,tcp://b:7700"`).

    With several endpoints the requests are spread over the nodes that are up,
    and a retry after a node dies goes to another one.
    """

    def __init__(self, server: str | None = None, timeout: float = 10.0, retry_for: float = 30.0,
                 client_key: str | None = None, connect_timeout: float = 2.0, token: str | None = None,
                 curve_server_key: str | bytes | None = None, curve_client_keys=None):
        self.endpoint = server_endpoint(server)
        self._endpoints = check_endpoints(self.endpoint)
        #: CURVE (a node started with --curve): the server's public key (default $JOBBIE_CURVE_SERVER_KEY;
        #: one for every endpoint or one per endpoint, comma-separated; "" for plaintext whatever the
        #: environment says), and this client's key pair for a node that lists its clients: (public,
        #: secret) or the path of a .key_secret file (default $JOBBIE_CURVE_CLIENT_KEY).
        self._curve_keys, self._curve_pair = curve.client_settings(curve_server_key, curve_client_keys,
                                                                   len(self._endpoints))
        self.connect_timeout = connect_timeout
        #: Set once a connection to any endpoint has completed its handshake (or a reply came).
        self._connected = threading.Event()
        #: (event, value) of the last failed handshake, while none has succeeded.
        self._handshake_failure: tuple[int, int] | None = None
        self.timeout = timeout
        self.retry_for = retry_for
        self.client_key = client_key
        #: API token for a node started with --auth (default $JOBBIE_TOKEN); sent with every request.
        self.token = token if token is not None else (os.environ.get("JOBBIE_TOKEN") or None)
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
        monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        if len(endpoints) > 1:
            # Several nodes: requests go round-robin to the connected ones only,
            # so a dead node's share is not queued for it (retries reach the others).
            sock.setsockopt(zmq.IMMEDIATE, 1)
        for i, endpoint in enumerate(endpoints):
            curve.secure(sock, self._curve_keys[i] if self._curve_keys else None, self._curve_pair)
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
                                event, value = handshake_event(monitor.recv_multipart(zmq.NOBLOCK))
                            except zmq.Again:
                                break
                            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                                self._connected.set()
                            elif handshake_failure(event, self._curve_keys is not None):
                                self._handshake_failure = (event, value)
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
        deliver_reply(self._futures, frame)

    # --------------------------------------------------------------- requests
    def submit(self, op: str, args: dict | None = None) -> Future:
        """Send one request now; the future resolves to the raw reply map ({"id", "ok"|"err"})."""
        if self._closed:
            raise Unavailable("client is closed", reason="closed")
        req_id = next(self._ids)
        frame = request_frame(req_id, op, args, self.client_key, self.token)
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
            if self._handshake_failure is not None:
                raise handshake_failed(self.endpoint, self.connect_timeout, *self._handshake_failure,
                                       curve_on=self._curve_keys is not None)
            raise unreachable(self.endpoint, self.connect_timeout)
        spec, give_up, wait = begin_call(op, args, self.timeout, self.retry_for)
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
            time.sleep(retry_pause(reply, spec, give_up, pause))
            pause = min(pause * 2, 1.0)

    # ---------------------------------------------------------- conveniences
    # The methods (enqueue, get_job, wait, fetch, ack, ...) are in transport/methods.py, shared with
    # AsyncClient; here they run as blocking calls.
    def _drive(self, flow):
        step = next(flow)
        try:
            while True:
                op, args = step
                if op == SLEEP:
                    time.sleep(args)
                    step = flow.send(None)
                else:
                    step = flow.send(self.call(op, **args))
        except StopIteration as done:
            return done.value

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
