"""The admission actor process: a thin shell around AdmissionCore.

Inbound (one PULL socket): `ops` frames from the gateway and the lifecycle
actor, `applied` frames from raft. Outbound: raft entries (two frames: the
entry, then its tags so raft can answer without decoding the entry if it
cannot commit it) and refusals back to whoever sent the op.

The entry is assembled from the op bytes the gateway encoded: admission never
decodes or re-encodes an op.
"""
from __future__ import annotations

import logging
import time

import zmq

from jobbie.transport import codec
from jobbie.transport.pump import Inbox, PumpActor, serve_process, socket

from ..raft.core import origin_socket
from .core import AdmissionCore, AdmissionLimits

log = logging.getLogger("jobbie.admission")


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
    inputs = ("in",)
    tick_s = 0.5

    def __init__(self, ctx, config, limits: AdmissionLimits):
        super().__init__(ctx)
        self.config = config
        self.core = AdmissionCore(limits)
        self.incarnation = time.time_ns() & 0x7FFFFFFFFFFF

    def open_sockets(self, ctx):
        cfg = self.config
        return {
            "in": socket(ctx, zmq.PULL, bind=cfg.endpoint("admission")),
            "raft": socket(ctx, zmq.PUSH, connect=cfg.endpoint("raft")),
            "gateway": socket(ctx, zmq.PUSH, connect=cfg.endpoint("gateway")),
            "lifecycle": socket(ctx, zmq.PUSH, connect=cfg.endpoint("lifecycle")),
            # refusals of the mirror's bulk ops (tags "mr"; see raft.core.origin_socket)
            "mirror": socket(ctx, zmq.PUSH, connect=cfg.endpoint("mirror")),
        }

    def handle(self, inbox: Inbox) -> list:
        out = []
        refusals: dict[str, list] = {}
        for _, frames in inbox.messages:
            msg = codec.decode_trusted(frames[0])
            kind = msg.get("k")
            if kind == "ops":
                for client, size, tag, op_bytes in msg["items"]:
                    refusal = self.core.offer(client, size, tag, op_bytes, inbox.now)
                    if refusal is not None:
                        refusals.setdefault(origin_socket(tag[0]), []).append([tag, refusal])
            elif kind == "control":
                # Membership changes and the like go to the raft actor as they are.
                out.append(("raft", [b"control", frames[0]]))
            elif kind == "raft_hello":
                self.core.on_raft_restarted()
            elif kind == "applied":
                entry_id = msg.get("entry")
                if entry_id and entry_id[0] == self.incarnation:
                    self.core.on_applied(entry_id[1], inbox.now)
        for dest, items in refusals.items():
            out.append((dest, [codec.encode({"k": "applied", "index": None, "items": items, "woken": {}})]))
        if inbox.tick:
            self.core.expire(inbox.now)
            out.append(("gateway", [codec.encode({"k": "admission_status", **self.core.stats()})]))
        while True:
            batch = self.core.cut_batch(inbox.now)
            if batch is None:
                break
            n, ops, tags = batch
            entry = assemble_entry(self.incarnation, n, ops)
            out.append(("raft", [entry, codec.encode([tags, [self.incarnation, n]])]))
        return out


def run(config) -> int:
    limits = AdmissionLimits(inflight_max=config.inflight_max,
                             inflight_per_client_max=min(config.inflight_per_client_max, config.inflight_max))
    return serve_process(AdmissionActor, zmq.Context(), config, limits)
