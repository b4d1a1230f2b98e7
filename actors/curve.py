"""A node's CURVE key pair and the client keys it takes (`jobbie server --curve [--curve-clients DIR]`).

The key pair lives in DATA_DIR/curve (`server.key`, `server.key_secret`, 0600 in a 0700 folder):
the supervisor makes it on the first start with --curve and every later start reuses it, so
clients keep the one public key. The gateway reads it to serve its ROUTER socket as a CURVE
server; the node's own clients of that socket (the http actor, the supervisor's first-token
check) connect with the node's public key as their server key and the node's key pair as their
own, which the list of allowed clients always includes: whoever holds that secret is the node.

Without --curve-clients any client that knows the public key may connect (tokens, with --auth,
say what it may do). With it, a ZAP handler (zmq.auth's ThreadAuthenticator, in the gateway's
process) takes only the public keys of the folder's `*.key` files; it reads the folder again
when a file there is added, removed or changed, so a client is let in or shut out without a
restart (a connection already made stays until it drops).
"""
from __future__ import annotations

import logging
import os
import time

import zmq

from jobbie.transport.curve import read_key_file, write_key_pair
from jobbie.transport.errors import InvalidArgument

log = logging.getLogger("jobbie.curve")

#: The name of the node's key files in DATA_DIR/curve.
NODE_KEY_NAME = "server"


class CurveKeyError(Exception):
    """The node's key pair or its list of clients cannot be used; the message says why, in one line."""


def key_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "curve")


def secret_path(data_dir: str) -> str:
    return os.path.join(key_dir(data_dir), NODE_KEY_NAME + ".key_secret")


def load_node_keys(data_dir: str) -> tuple[bytes, bytes]:
    """(public, secret) of the node's key pair.

    Raises:
        CurveKeyError: there is none, or its file is not a key pair.
    """
    path = secret_path(data_dir)
    if not os.path.exists(path):
        raise CurveKeyError(f"no CURVE key pair in {key_dir(data_dir)} (a node makes one on its first start "
                            "with --curve)")
    try:
        public, secret = read_key_file(path, "curve")
    except InvalidArgument as exc:
        raise CurveKeyError(exc.message.removeprefix("curve: ")) from None
    if secret is None:
        raise CurveKeyError(f"{path} holds no secret key; move the curve folder away to make a new key pair")
    return public, secret


def ensure_node_keys(data_dir: str) -> tuple[bytes, bool]:
    """(the node's public key, whether it was made now): the key pair of DATA_DIR/curve, made when
    missing. Its secret file is set back to 0600 if its mode was widened.

    Raises:
        CurveKeyError.
    """
    created = False
    if not os.path.exists(secret_path(data_dir)):
        try:
            write_key_pair(key_dir(data_dir), NODE_KEY_NAME)
        except OSError as exc:
            raise CurveKeyError(f"cannot write a CURVE key pair in {key_dir(data_dir)} "
                                f"({exc.strerror or exc})") from None
        created = True
    public, _ = load_node_keys(data_dir)
    path = secret_path(data_dir)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s could be read by others; its mode is 0600 again", path)
    return public, created


def node_client_curve(config) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    """(server key, key pair) with which a process of this node connects to its own gateway,
    or (None, None) when the node runs without --curve."""
    if not config.curve:
        return None, None
    public, secret = load_node_keys(config.data_dir)
    return public, (public, secret)


def key_files(folder: str) -> tuple:
    """What the allowed keys depend on: (name, modification time, size) of each `*.key` file."""
    out = []
    for entry in os.scandir(folder):
        if entry.name.endswith(".key") and entry.is_file():
            st = entry.stat()
            out.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(sorted(out))


def read_client_keys(folder: str) -> tuple[frozenset, list[str]]:
    """(the public keys of the folder's `*.key` files, one line per file that holds none)."""
    keys, bad = set(), []
    for name, _, _ in key_files(folder):
        try:
            keys.add(read_key_file(os.path.join(folder, name), "--curve-clients")[0])
        except InvalidArgument as exc:
            bad.append(exc.message.removeprefix("--curve-clients: "))
    return frozenset(keys), bad


def check_client_folder(folder: str) -> int:
    """How many client keys --curve-clients FOLDER lists.

    Raises:
        CurveKeyError: not a readable folder, or a `*.key` file in it that holds no key.
    """
    if not os.path.isdir(folder):
        raise CurveKeyError(f"--curve-clients {folder}: no such folder (put the clients' NAME.key files, "
                            "made by jobbie curve keygen, in one)")
    try:
        keys, bad = read_client_keys(folder)
    except OSError as exc:
        raise CurveKeyError(f"--curve-clients {folder}: cannot read it ({exc.strerror})") from None
    if bad:
        raise CurveKeyError(f"--curve-clients: {bad[0]}")
    return len(keys)


class ClientKeys:
    """The ZAP callback of a node with --curve-clients: may the client with this public key connect?"""

    def __init__(self, folder: str, own: bytes):
        self.folder = folder
        self.own = own
        self.seen = None
        self.keys: frozenset = frozenset()
        #: When a refusal of each key was last logged (a refused client reconnects twice a second).
        self.logged: dict = {}

    def refresh(self):
        try:
            listing = key_files(self.folder)
        except OSError as exc:
            if self.seen != "gone":
                log.warning("--curve-clients %s cannot be read (%s): only the node's own processes may "
                            "connect until it can", self.folder, exc.strerror)
            self.seen, self.keys = "gone", frozenset()
            return
        if listing == self.seen:
            return
        self.keys, bad = read_client_keys(self.folder)
        for line in bad:
            log.warning("--curve-clients: %s (skipped)", line)
        self.seen = listing
        log.info("--curve-clients %s: %d client keys", self.folder, len(self.keys))

    def allowed(self, key: bytes) -> bool:
        self.refresh()
        return key == self.own or key in self.keys

    def callback(self, domain, key) -> bool:
        """zmq.auth's credentials-provider hook: `key` is the client's public key in Z85."""
        key = key if isinstance(key, bytes) else str(key).encode()
        allowed = self.allowed(key)
        now = time.monotonic()
        if not allowed and now - self.logged.get(key, -60.0) >= 60.0:
            if len(self.logged) > 1000:
                self.logged.clear()
            self.logged[key] = now
            log.info("refused a CURVE client whose key %s is not in --curve-clients %s (once a minute per key)",
                     key.decode(), self.folder)
        return allowed


def serve_curve(ctx: zmq.Context, sock: zmq.Socket, config):
    """Make `sock` (before its bind) a CURVE server with the node's key pair; with --curve-clients,
    also start the ZAP handler that checks client keys. Returns that handler (stop it at the end),
    or None."""
    public, secret = load_node_keys(config.data_dir)
    authenticator = None
    if config.curve_clients:
        from zmq.auth.thread import ThreadAuthenticator
        authenticator = ThreadAuthenticator(ctx, log=logging.getLogger("jobbie.curve.zap"))
        authenticator.start()
        authenticator.configure_curve_callback("*", ClientKeys(config.curve_clients, public))
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    return authenticator
