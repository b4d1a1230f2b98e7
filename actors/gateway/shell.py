"""The gateway's side of the admission process: its core, its point reads, its client socket.

The gateway has no process of its own: its client-facing ROUTER socket lives in
the admission process (actors/admission/actor.py), so a request and its entry
cross no process boundary between the client and raft. This module builds what
that process needs for the gateway role:

- `make_core`: the GatewayCore (decoding, validation, ids, tags, replies,
  long-polls, time-outs) with the node's limits and, with --auth, the token check;
- `LmdbReader`: point reads on LMDB, opened read-only, and reopened when the
  raft actor replaces the file (snapshot installed);
- `open_client_socket`: the ROUTER on `--bind` (a CURVE server with --curve,
  see actors/curve.py) with its per-connection reply cap.
"""
from __future__ import annotations

import logging
import secrets
import time

import lmdb
import zmq

from jobbie.storage import reads, tokens
from jobbie.storage.env import Store, store_ready
from jobbie.transport import ops as opsdef
from jobbie.transport.codec import FRAME_CUT_BYTES
from jobbie.transport.errors import Unavailable
from jobbie.transport.ids import IdGenerator
from jobbie.transport.pump import socket

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


def make_core(config) -> GatewayCore:
    """The gateway's rules for this node: limits, write time-out, ids, reads and (with --auth) tokens."""
    core = GatewayCore(
        config.node_id, time.time_ns() & 0x7FFFFFFFFFFF, IdGenerator(), LmdbReader(config.lmdb_path),
        opsdef.Limits(payload_bytes_max=config.payload_bytes_max, result_bytes_max=config.payload_bytes_max),
        config.write_timeout_ms / 1000.0, durable=config.durable, mirror=config.mirror,
        usage=config.usage, auth=None, bootstrap_token=config.bootstrap_token if config.auth else None,
        make_secret=lambda: secrets.token_urlsafe(32))
    if config.auth:
        core.auth = Auth(core.reader.token)
    return core


def open_client_socket(ctx, config):
    """The client ROUTER on `--bind`, and the ZAP handler checking client keys (--curve-clients) or None."""
    # Replies waiting for a client that does not read are capped per connection at what admission lets
    # one client have in flight (past that, ZeroMQ drops them and the client's requests time out),
    # so a pipeline nobody reads cannot grow the process's memory without bound.
    clients = socket(ctx, zmq.ROUTER, maxmsgsize=FRAME_CUT_BYTES, hwm=max(1000, config.inflight_per_client_max))
    clients.setsockopt(zmq.ROUTER_HANDOVER, 1)
    authenticator = None
    if config.curve:
        # Before the bind: a connection takes the socket's security options when it is accepted.
        authenticator = serve_curve(ctx, clients, config)
    clients.bind(config.bind)
    log.info("gateway %s serving %s%s", config.node_id, config.bind,
             "" if not config.curve else " with CURVE" + (f" (clients of {config.curve_clients} only)"
                                                         if config.curve_clients else ""))
    return clients, authenticator
