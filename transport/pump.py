"""The socket pump every actor process shares.

One thread (the process's main thread) owns every ZeroMQ socket of the
process. It waits on its inputs, drains whatever is waiting on each (up to a
bound), hands the actor one list, and sends what the actor returns. The actor
(a pykka ThreadingActor) never touches a socket and never blocks its mailbox
on I/O; the pump never holds actor state.

While the actor works on one list the next one piles up in the sockets, so
every hop batches by itself under load and forwards one frame per batch.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

import pykka
import zmq

log = logging.getLogger("jobbie.pump")

#: Messages taken from one socket per turn, so one busy input cannot starve the others.
DRAIN_MAX = 2000


class Inbox:
    """What the pump hands an actor: the drained messages, and whether a tick is due."""

    __slots__ = ("messages", "tick", "now")

    def __init__(self, messages, tick, now):
        self.messages = messages  # list of (socket name, [frames])
        self.tick = tick
        self.now = now  # wall-clock seconds


class ShellActor(pykka.ThreadingActor):
    """Base of the actor shells: `handle(inbox)` returns a list of (socket name, [frames])."""

    def on_receive(self, message):
        return self.handle(message)

    def handle(self, inbox: Inbox) -> list:
        raise NotImplementedError


class Pump:
    def __init__(self, actor_ref, sockets: dict, inputs: list[str], tick_s: float):
        self.actor = actor_ref
        self.sockets = sockets
        self.inputs = inputs
        self.tick_s = tick_s
        self.stopping = threading.Event()
        self.dropped = 0

    def stop(self, *_):
        self.stopping.set()

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self):
        """Serve until SIGTERM/SIGINT (or `stop()`)."""
        self._loop(self.inputs, self.stopping.is_set)

    def drain(self, inputs: list[str], done, timeout_s: float):
        """After a stop: keep serving `inputs` only, until `done()` or the time-out."""
        deadline = time.monotonic() + timeout_s
        self._loop(inputs, lambda: done() or time.monotonic() > deadline)

    def _loop(self, inputs, should_stop):
        poller = zmq.Poller()
        by_socket = {}
        for name in inputs:
            poller.register(self.sockets[name], zmq.POLLIN)
            by_socket[self.sockets[name]] = name
        next_tick = time.monotonic()
        while not should_stop():
            timeout_ms = max(0.0, (next_tick - time.monotonic()) * 1000)
            ready = poller.poll(min(timeout_ms, 100))
            messages = []
            for sock, _ in ready:
                name = by_socket[sock]
                for _ in range(DRAIN_MAX):
                    try:
                        messages.append((name, sock.recv_multipart(zmq.NOBLOCK, copy=True)))
                    except zmq.Again:
                        break
            mono = time.monotonic()
            tick = mono >= next_tick
            if tick:
                next_tick = mono + self.tick_s
            if not messages and not tick:
                continue
            outputs = self.actor.ask(Inbox(messages, tick, time.time()))
            self.send(outputs)

    def send(self, outputs):
        for name, frames in outputs or ():
            try:
                self.sockets[name].send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                # The peer is gone or far behind (high-water mark). The request it
                # carried times out at the gateway and the client retries.
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.warning("dropped %d frames to %s (peer away or full)", self.dropped, name)


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
