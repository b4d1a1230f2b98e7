"""The admission process: the client socket, the gateway's rules and admission's, in one loop.

A request and its entry cross no process boundary between the client and raft:
this process owns the client ROUTER (the gateway role: decode, validate, stamp,
reply; actors/gateway/) and admission (limits, fair order, group commit;
core.py), and hands one core's output to the other as Python objects. Each hop
between processes costs a send, a wake-up of the receiver and a decode (tens of
microseconds of CPU on a small machine), and at low concurrency that chain of
wake-ups, not the work, bounds throughput.

Sockets (all owned by the pump thread):
- `clients` ROUTER on `--bind`: the protocol;
- `in` PULL, bound at both `admission.sock` and `gateway.sock`: results from
  raft (with "entry done" in the same frame), ops from the lifecycle and the
  mirror, answers and status from the mirror and the usage actor, raft's hello;
- `status` SUB: raft's and the supervisor's reports;
- `raft` PUSH: entries (two frames: the entry, then its tags so raft can answer
  without decoding the entry if it cannot commit it) and membership changes;
- `lifecycle`, `mirror` PUSH: refusals of their ops; `mirror`, `usage` PUSH:
  search, bulk and usage requests.

The entry is assembled from the op bytes the gateway encoded: admission never
decodes or re-encodes an op. On SIGTERM it stops reading client requests,
answers what is in flight (up to a few seconds), then exits.
"""
from __future__ import annotations

import logging
import time

import zmq

from jobbie.transport import codec
from jobbie.transport.pump import Inbox, PumpActor, serve_process, socket

from ..gateway.shell import make_core, open_client_socket
from ..raft.core import origin_socket
from .core import AdmissionCore, AdmissionLimits

log = logging.getLogger("jobbie.admission")

#: How often admission's figures reach cluster_status and forgotten entries are expired (seconds).
STATUS_EVERY_S = 0.5


def assemble_entry(incarnation: int, n: int, ops: list[bytes]) -> bytes:
    """msgpack `{"v": 1, "id": [incarnation, n], "ops": [...]}` from already-encoded ops."""
    head = codec.encode({"v": 1, "id": [incarnation, n]})
    # Turn the 2-entry map header into a 3-entry one and append the ops array.
    assert head[0] == 0x82
    count = len(ops)
    if count < 16:
        array_header = bytes((0x90 | count,))
    elif count < 65536:
        array_header = b"\xdc" + count.to_bytes(2, "big")
    else:
        array_header = b"\xdd" + count.to_bytes(4, "big")
    return b"\x83" + head[1:] + codec.encode("ops") + array_header + b"".join(ops)


class AdmissionActor(PumpActor):
    inputs = ("clients", "in", "status")
    #: The gateway's tick: write time-outs and long-poll ends are answered within 10 ms.
    tick_s = 0.01

    def __init__(self, ctx, config, limits: AdmissionLimits):
        super().__init__(ctx)
        self.config = config
        self.core = AdmissionCore(limits)
        self.gateway = make_core(config)
        self.incarnation = time.time_ns() & 0x7FFFFFFFFFFF
        self.next_status = 0.0
        #: With --curve-clients: the ZAP handler checking client keys (stopped with the actor).
        self.authenticator = None

    def open_sockets(self, ctx):
        cfg = self.config
        clients, self.authenticator = open_client_socket(ctx, cfg)
        inbound = socket(ctx, zmq.PULL, bind=cfg.endpoint("admission"))
        inbound.bind(cfg.endpoint("gateway"))
        return {
            "clients": clients,
            "in": inbound,
            "status": socket(ctx, zmq.SUB, subscribe=True,
                             connect=[cfg.endpoint("raft-status"), cfg.endpoint("supervisor")]),
            "raft": socket(ctx, zmq.PUSH, connect=cfg.endpoint("raft")),
            "lifecycle": socket(ctx, zmq.PUSH, connect=cfg.endpoint("lifecycle")),
            # search, bulk and rebuild requests, and refusals of the mirror's bulk ops (tags "mr")
            "mirror": socket(ctx, zmq.PUSH, connect=cfg.endpoint("mirror")),
            "usage": socket(ctx, zmq.PUSH, connect=cfg.endpoint("usage")),
        }

    def handle(self, inbox: Inbox) -> list:
        gateway, now = self.gateway, inbox.now
        refusals: dict[str, list] = {}
        for name, frames in inbox.messages:
            if name == "clients":
                gateway.on_request(frames, now)
            elif name == "in":
                msg = codec.decode_trusted(frames[0])
                kind = msg.get("k")
                if kind == "applied":
                    entry_id = msg.get("entry")
                    if entry_id and entry_id[0] == self.incarnation:
                        self.core.on_applied(entry_id[1], now)
                    gateway.on_applied(msg, now)
                elif kind == "ops":  # the lifecycle's ticks, the mirror's bulk ops
                    self.offer(msg["items"], now, refusals)
                elif kind == "raft_hello":
                    self.core.on_raft_restarted()
                else:  # mirror_status, usage_status
                    gateway.on_status(msg, now)
            elif name == "status":
                gateway.on_status(codec.decode_trusted(frames[0]), now)
        if inbox.tick:
            gateway.on_tick(now)
            if now >= self.next_status:
                self.next_status = now + STATUS_EVERY_S
                self.core.expire(now)
                gateway.on_status({"k": "admission_status", **self.core.stats()}, now)
        return self.outputs(now, refusals)

    def offer(self, items, now: float, refusals: dict):
        for client, size, tag, op_bytes in items:
            refusal = self.core.offer(client, size, tag, op_bytes, now)
            if refusal is not None:
                refusals.setdefault(origin_socket(tag[0]), []).append([tag, refusal])

    def outputs(self, now: float, refusals: dict) -> list:
        gateway = self.gateway
        replies = []
        while True:
            answered, ops = gateway.take_outputs()
            replies += answered
            if ops:
                self.offer(ops, now, refusals)
            refused = refusals.pop("gateway", None)
            if not refused:
                break
            # The gateway's own ops, refused (overloaded): answered in this turn, no frame needed.
            gateway.on_applied({"k": "applied", "index": None, "items": refused, "woken": {}}, now)
        out = [("clients", r) for r in replies]
        for dest, items in refusals.items():
            out.append((dest, [codec.encode({"k": "applied", "index": None, "items": items, "woken": {}})]))
        control = gateway.take_control()
        if control:
            # Membership changes go to the raft actor as they are.
            out.append(("raft", [b"control", codec.encode({"k": "control", "items": control})]))
        for request in gateway.take_mirror():
            out.append(("mirror", [codec.encode(request)]))
        for request in gateway.take_usage():
            out.append(("usage", [codec.encode(request)]))
        while True:
            batch = self.core.cut_batch(now)
            if batch is None:
                break
            n, entry_ops, tags = batch
            entry = assemble_entry(self.incarnation, n, entry_ops)
            out.append(("raft", [entry, codec.encode([tags, [self.incarnation, n]])]))
        return out

    def on_stop(self):
        super().on_stop()
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None

    def begin_stop(self) -> list:
        # Stop taking requests; answer parked long-polls now and writes as their results come.
        self.gateway.release_parked()
        self.drain(["in"], done=lambda: self.gateway.in_flight() == 0, timeout_s=3.0)
        return self.outputs(time.time(), {})


def run(config) -> int:
    limits = AdmissionLimits(inflight_max=config.inflight_max,
                             inflight_per_client_max=min(config.inflight_per_client_max, config.inflight_max))
    return serve_process(AdmissionActor, zmq.Context(), config, limits)
