"""The gateway actor process: the client-facing ROUTER socket.

Sockets (all owned by the pump thread): `clients` ROUTER (tcp, the protocol
endpoint; a CURVE server with --curve, see actors/curve.py), `in` PULL (results from raft, refusals from admission, answers and
status from the mirror), `status` SUB (raft and supervisor reports),
`admission` PUSH, `mirror` PUSH (search and bulk requests). LMDB is opened
read-only for point reads, and reopened if the writer replaces it.

On SIGTERM it stops reading client requests, answers what is in flight (up
to a few seconds), then exits.
"""
from __future__ import annotations

import logging
import secrets
import time

import lmdb
import zmq

from jobbie.storage import reads, tokens
from jobbie.storage.env import Store, store_ready
from jobbie.transport import codec, ops as opsdef
from jobbie.transport.codec import FRAME_CUT_BYTES
from jobbie.transport.errors import Unavailable
from jobbie.transport.ids import IdGenerator
from jobbie.transport.pump import Inbox, PumpActor, serve_process, socket

from ..curve import serve_curve
from .auth import Auth
from .core import GatewayCore

log = logging.getLogger("jobbie.gateway")


class LmdbReader:
    """Read-only point reads; opens the store once the raft actor has created it, and afresh after an error."""

    def __init__(self, path: str):
        self.path = path
        self.store = None
        self.lmdb_id = None

    def watch(self, lmdb_id):
        """The raft actor reports which LMDB file is current; a new one (snapshot installed) is reopened."""
        if lmdb_id and lmdb_id != self.lmdb_id:
            if self.lmdb_id is not None and self.store is not None:
                self.store.close()
                self.store = None
            self.lmdb_id = lmdb_id

    def _txn(self):
        if self.store is None:
            if not store_ready(self.path):
                raise Unavailable("the store is not ready yet (node starting)", reason="starting")
            self.store = Store(self.path, readonly=True)
        return self.store.begin()

    def _read(self, fn, *args):
        try:
            with self._txn() as txn:
                return fn(txn, self.store.dbs, *args)
        except lmdb.Error as exc:
            if self.store is not None:
                self.store.close()
            self.store = None
            raise Unavailable(f"the store cannot be read right now ({exc}); retry", reason="store_unavailable")

    def read(self, op_name: str, args: dict):
        """The `ok` map of a read op (storage/reads.py READERS), or None when not found."""
        return self._read(reads.READERS[op_name], args)

    def token(self, token_id: str):
        """A token record (hash included) for the auth check, or None."""
        return self._read(tokens.find, token_id)


class GatewayActor(PumpActor):
    inputs = ("clients", "in", "status")
    tick_s = 0.01

    def __init__(self, ctx, config):
        super().__init__(ctx)
        self.config = config
        self.core = GatewayCore(
            config.node_id, time.time_ns() & 0x7FFFFFFFFFFF, IdGenerator(), LmdbReader(config.lmdb_path),
            opsdef.Limits(payload_bytes_max=config.payload_bytes_max, result_bytes_max=config.payload_bytes_max),
            config.write_timeout_ms / 1000.0, durable=config.durable, mirror=config.mirror,
            usage=config.usage, auth=None, bootstrap_token=config.bootstrap_token if config.auth else None,
            make_secret=lambda: secrets.token_urlsafe(32))
        if config.auth:
            self.core.auth = Auth(self.core.reader.token)
        #: With --curve-clients: the ZAP handler checking client keys (stopped with the actor).
        self.authenticator = None

    def open_sockets(self, ctx):
        cfg = self.config
        # Replies waiting for a client that does not read are capped per connection at what admission lets
        # one client have in flight (past that, ZeroMQ drops them and the client's requests time out),
        # so a pipeline nobody reads cannot grow the gateway's memory without bound.
        clients = socket(ctx, zmq.ROUTER, maxmsgsize=FRAME_CUT_BYTES, hwm=max(1000, cfg.inflight_per_client_max))
        clients.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if cfg.curve:
            # Before the bind: a connection takes the socket's security options when it is accepted.
            self.authenticator = serve_curve(ctx, clients, cfg)
        clients.bind(cfg.bind)
        log.info("gateway %s serving %s%s", cfg.node_id, cfg.bind,
                 "" if not cfg.curve else " with CURVE" + (f" (clients of {cfg.curve_clients} only)"
                                                          if cfg.curve_clients else ""))
        return {
            "clients": clients,
            "in": socket(ctx, zmq.PULL, bind=cfg.endpoint("gateway")),
            "status": socket(ctx, zmq.SUB, subscribe=True,
                             connect=[cfg.endpoint("raft-status"), cfg.endpoint("supervisor")]),
            "admission": socket(ctx, zmq.PUSH, connect=cfg.endpoint("admission")),
            "mirror": socket(ctx, zmq.PUSH, connect=cfg.endpoint("mirror")),
            "usage": socket(ctx, zmq.PUSH, connect=cfg.endpoint("usage")),
        }

    def handle(self, inbox: Inbox) -> list:
        core, now = self.core, inbox.now
        for name, frames in inbox.messages:
            if name == "clients":
                core.on_request(frames, now)
            elif name == "in":
                msg = codec.decode_trusted(frames[0])
                if msg.get("k") in ("admission_status", "mirror_status", "usage_status"):
                    core.on_status(msg, now)
                else:
                    core.on_applied(msg, now)
            elif name == "status":
                core.on_status(codec.decode_trusted(frames[0]), now)
        if inbox.tick:
            core.on_tick(now)
        return self.outputs()

    def outputs(self) -> list:
        replies, ops = self.core.take_outputs()
        out = [("clients", r) for r in replies]
        if ops:
            out.append(("admission", [codec.encode({"k": "ops", "items": ops})]))
        control = self.core.take_control()
        if control:
            out.append(("admission", [codec.encode({"k": "control", "items": control})]))
        for request in self.core.take_mirror():
            out.append(("mirror", [codec.encode(request)]))
        for request in self.core.take_usage():
            out.append(("usage", [codec.encode(request)]))
        return out

    def on_stop(self):
        super().on_stop()
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None

    def begin_stop(self) -> list:
        # Stop taking requests; answer parked long-polls now and writes as their results come.
        self.core.release_parked()
        self.drain(["in"], done=lambda: self.core.in_flight() == 0, timeout_s=3.0)
        return self.outputs()


def run(config) -> int:
    return serve_process(GatewayActor, zmq.Context(), config)
