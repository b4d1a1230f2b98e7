"""The socket pump every actor process shares: one pykka actor that owns its sockets.

Each actor process hosts one pykka ThreadingActor. Its thread creates and
owns every ZeroMQ socket of the process (one owner per socket) and serves
them in *turns*: a turn waits on the inputs (at most until the next tick),
drains whatever is waiting on each (up to a bound), hands the subclass's
`handle` one `Inbox`, and sends what `handle` returns. At the end of a turn
the actor tells itself to take the next one, so control messages from other
threads (stop, drain) are served between turns. Blocking in a turn only
waits on the actor's own sockets.

Why the actor thread owns the sockets: handing every batch from a socket
thread to the actor thread and back cost about 80 us per hop in CPython
(two GIL hand-offs through pykka's `ask`), more than the work itself.

While `handle` works on one list the next one piles up in the sockets, so
every hop batches by itself under load and forwards one frame per batch.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time

import pykka
import zmq

log = logging.getLogger("jobbie.pump")

#: Messages taken from one socket per turn, so one busy input cannot starve the others.
DRAIN_MAX = 2000
#: Longest wait in one turn; also bounds how late a control message is served.
POLL_MAX_MS = 100

_TURN = object()


class Inbox:
    """What a turn hands `handle`: the drained messages, and whether a tick is due."""

    __slots__ = ("messages", "tick", "now")

    def __init__(self, messages, tick, now):
        self.messages = messages  # list of (socket name, [frames])
        self.tick = tick
        self.now = now  # wall-clock seconds


class PumpActor(pykka.ThreadingActor):
    """Base of the actor shells.

    Subclasses set `inputs` and `tick_s`, build their sockets in
    `open_sockets(ctx)` and implement `handle(inbox)`, which returns a list of
    (socket name, [frames]) to send.
    """

    inputs: tuple = ()
    tick_s: float = 0.1
    #: Read end of a pipe that serve_process writes to after a stop request, so a turn blocked in
    #: poll wakes at once instead of at its time-out (a node stops in half the time).
    wake_fd: int | None = None

    def __init__(self, ctx: zmq.Context):
        super().__init__()
        self.ctx = ctx
        self.sockets: dict = {}
        self.dropped = 0
        self._poller = None
        self._by_socket: dict = {}
        self._next_tick = 0.0
        self._drain_done = None
        self._drain_deadline = 0.0

    # ----------------------------------------------------------- subclass API
    def open_sockets(self, ctx: zmq.Context) -> dict:
        raise NotImplementedError

    def handle(self, inbox: Inbox) -> list:
        raise NotImplementedError

    def begin_stop(self) -> list:
        """Called once on a stop request; may return final outputs. Default: stop now."""
        self.stop()
        return []

    # --------------------------------------------------------------- plumbing
    def on_start(self):
        self.sockets = self.open_sockets(self.ctx)
        self.serve(self.inputs)
        self._next_tick = time.monotonic()
        self.actor_ref.tell(_TURN)

    def serve(self, inputs):
        """(Re)build the poller over `inputs`."""
        self._poller = zmq.Poller()
        self._by_socket = {}
        for name in inputs:
            self._poller.register(self.sockets[name], zmq.POLLIN)
            self._by_socket[self.sockets[name]] = name
        if self.wake_fd is not None:
            self._poller.register(self.wake_fd, zmq.POLLIN)

    def drain(self, inputs, done, timeout_s: float):
        """Keep serving only `inputs` until `done()` or the time-out, then stop."""
        self.serve(inputs)
        self._drain_done = done
        self._drain_deadline = time.monotonic() + timeout_s

    def on_receive(self, message):
        if message is _TURN:
            # Busy turns follow each other without a trip through the mailbox;
            # the mailbox is looked at between them (control messages wait at
            # most one turn).
            for _ in range(64):
                busy = self.turn()
                if self._drain_done is not None and (self._drain_done() or time.monotonic() > self._drain_deadline):
                    self.stop()
                    return None
                if not busy or not self.actor_inbox.empty():
                    break
            self.actor_ref.tell(_TURN)
            return None
        if message == "stop":
            self.send(self.begin_stop())
            return None
        return self.on_control(message)

    def on_control(self, message):
        return None

    def turn(self) -> bool:
        """Wait for input (at most until the next tick), handle it; True if there was any."""
        # Rounded up: pyzmq truncates a float time-out to whole milliseconds, and a wait of 0.4 ms
        # truncated to 0 would spin poll(0) until the tick (about 9 % of a core, idle, at 10 ms ticks).
        timeout_ms = max(0, min(math.ceil((self._next_tick - time.monotonic()) * 1000), POLL_MAX_MS))
        ready = self._poller.poll(timeout_ms)
        messages = []
        for sock, _ in ready:
            name = self._by_socket.get(sock)
            if name is None:  # the wake pipe: a control message waits in the mailbox
                os.read(self.wake_fd, 64)
                continue
            messages.extend((name, frames) for frames in receive_waiting(sock, DRAIN_MAX))
        mono = time.monotonic()
        tick = mono >= self._next_tick
        if tick:
            self._next_tick = mono + self.tick_s
        if messages or tick:
            self.send(self.handle(Inbox(messages, tick, time.time())))
        return bool(messages)

    def send(self, outputs):
        for name, frames in outputs or ():
            try:
                self.sockets[name].send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                # The peer is gone or far behind (high-water mark). The request it
                # carried times out at the gateway and the client retries.
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.warning("dropped %d frames to %s (peer away or full)", self.dropped, name)

    def on_stop(self):
        for s in self.sockets.values():
            s.close(linger=0)

    def on_failure(self, exception_type, exception_value, traceback):
        log.critical("actor failed; the process exits and the supervisor restarts it",
                     exc_info=(exception_type, exception_value, traceback))
        self.on_stop()


def receive_waiting(sock: zmq.Socket, limit: int) -> list:
    """The multipart messages waiting on `sock` (at most `limit`), without blocking."""
    out = []
    for _ in range(limit):
        try:
            out.append(sock.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            break
    return out


def serve_process(actor_cls, *args, stop_timeout_s: float = 10.0) -> int:
    """Run one actor until SIGTERM/SIGINT, then stop it gracefully. Returns the exit code."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    actor_cls.wake_fd = wake_r
    actor = actor_cls.start(*args)
    while not stop.wait(0.2):
        if not actor.is_alive():
            return 1  # it failed: crash-only, the supervisor restarts the process
    actor.tell("stop")
    os.write(wake_w, b"x")
    deadline = time.monotonic() + stop_timeout_s
    while actor.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if actor.is_alive():
        log.warning("actor did not stop within %.0fs", stop_timeout_s)
        return 1
    return 0


def socket(ctx: zmq.Context, kind: int, *, bind: str | None = None, connect: list | str | None = None,
           subscribe: bool = False, hwm: int = 100_000, maxmsgsize: int | None = None) -> zmq.Socket:
    """A socket with jobbie's defaults: no linger, large high-water marks, fast reconnect."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.RECONNECT_IVL, 50)
    s.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    if maxmsgsize is not None:
        s.setsockopt(zmq.MAXMSGSIZE, maxmsgsize)
    if subscribe:
        s.setsockopt(zmq.SUBSCRIBE, b"")
    if bind:
        s.bind(bind)
    for endpoint in ([connect] if isinstance(connect, str) else connect or []):
        s.connect(endpoint)
    return s
