"""CURVE keys for the client port (`jobbie server --curve`): key files, and a client socket's set-up.

A node started with --curve encrypts and authenticates its client port with ZeroMQ's CURVE. A
client must know the server's public key (40 characters of Z85, as `jobbie curve show` prints
it); when the node takes only listed clients (--curve-clients), the client must also present a
key pair whose public half is in that list. Any other client's handshake fails, and no request of
it reaches the gateway.

Keys are kept in ZeroMQ's certificate files, as zmq.auth reads and writes them, so other ZeroMQ
tools can use them too: `NAME.key` holds the public key, `NAME.key_secret` both halves. A file is
written inside a fresh private folder (0700) and renamed into place, so a secret file is never
seen half written or with a mode wider than 0600.

A client without a key pair of its own gets a fresh one per connection: the server's key is
what makes the channel private, and a server that lists its clients refuses such a key anyway.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import zmq
import zmq.auth
from zmq.utils import z85

from .errors import InvalidArgument

#: Where the CLI, the worker and `Client` look for the server's public key, and for the client's own
#: key pair (the path of a NAME.key_secret file) when the server lists its clients.
SERVER_KEY_ENV = "JOBBIE_CURVE_SERVER_KEY"
CLIENT_KEY_ENV = "JOBBIE_CURVE_CLIENT_KEY"
#: A CURVE key in Z85: 32 bytes as 40 characters.
KEY_CHARS = 40


def is_key(text) -> bool:
    """Whether `text` (str or bytes) is a CURVE key in Z85."""
    raw = text.encode() if isinstance(text, str) else text
    if not isinstance(raw, bytes) or len(raw) != KEY_CHARS:
        return False
    try:
        return len(z85.decode(raw)) == 32
    except (KeyError, ValueError, TypeError):
        return False


def _bad(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field, reason="invalid_key")


def read_key_file(path: str, field: str) -> tuple[bytes, bytes | None]:
    """(public key, secret key or None) of a ZeroMQ certificate file. Raises InvalidArgument."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise _bad(field, f"cannot read the key file {path} ({exc.strerror or exc})") from None
    except ValueError:
        raise _bad(field, f"{path} is not a CURVE key file (no public-key line)") from None
    if not is_key(public) or (secret is not None and not is_key(secret)):
        raise _bad(field, f"{path} holds a key that is not 40 Z85 characters")
    if secret is not None and zmq.curve_public(secret) != public:
        raise _bad(field, f"{path}: its public key is not the one of its secret key")
    return public, secret


def public_key(value, field: str = "curve_server_key") -> bytes:
    """A public key given as its 40 Z85 characters, or as the path of a key file that holds it.

    Raises:
        InvalidArgument: neither.
    """
    text = (value.decode(errors="replace") if isinstance(value, bytes) else str(value)).strip()
    if is_key(text):
        return text.encode()
    if text and os.path.isfile(text):
        return read_key_file(text, field)[0]
    shown = text if len(text) <= 60 else text[:57] + "..."
    raise _bad(field, f"{shown!r} is neither a CURVE public key (40 Z85 characters, as jobbie curve show "
                      "prints it) nor a key file")


def server_keys(value, endpoints: int, field: str = "curve_server_key") -> list[bytes]:
    """The server key of each of `endpoints` endpoints: one key for all, or one per endpoint
    (comma-separated, in the order of the endpoints; Z85 has no comma). Raises InvalidArgument."""
    if isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        parts = [p for p in (s.strip() for s in text.split(",")) if p]
    keys = [public_key(p, field) for p in parts]
    if len(keys) == 1:
        return keys * endpoints
    if len(keys) != endpoints:
        raise _bad(field, f"{len(keys)} server keys for {endpoints} endpoints; give one key for every "
                          "endpoint, or one per endpoint in the same order")
    return keys


def client_key_pair(value, field: str = "curve_client_keys") -> tuple[bytes, bytes]:
    """A client's key pair: (public, secret) in Z85, or the path of a NAME.key_secret file.

    Raises:
        InvalidArgument: not a key pair, or a file without a secret key.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise _bad(field, "give (public key, secret key) or the path of a .key_secret file")
        public, secret = (v.encode() if isinstance(v, str) else v for v in value)
        if not (is_key(public) and is_key(secret)):
            raise _bad(field, "a key of the pair is not 40 Z85 characters")
        if zmq.curve_public(secret) != public:
            raise _bad(field, "the public key is not the one of the secret key")
        return public, secret
    path = os.fspath(value)
    public, secret = read_key_file(path, field)
    if secret is None:
        raise _bad(field, f"{path} holds only a public key; give the NAME.key_secret file that jobbie curve "
                          "keygen wrote")
    return public, secret


def client_settings(server_key=None, client_keys=None, endpoints: int = 1):
    """(a server key per endpoint, the client's key pair or None) for a client, or (None, None) for
    plaintext. Arguments left at None come from JOBBIE_CURVE_SERVER_KEY and JOBBIE_CURVE_CLIENT_KEY;
    a server key of "" turns CURVE off whatever the environment says (the node's own processes do
    this when the node runs without --curve).

    Raises:
        InvalidArgument: a malformed key or key file, or a client key without a server key.
    """
    field = "curve_server_key"
    if server_key is None:
        server_key, field = os.environ.get(SERVER_KEY_ENV) or None, SERVER_KEY_ENV
    if server_key == "" or server_key == b"":
        return None, None
    pair_field = "curve_client_keys"
    if client_keys is None and server_key is not None:
        client_keys, pair_field = os.environ.get(CLIENT_KEY_ENV) or None, CLIENT_KEY_ENV
    if server_key is None:
        if client_keys is not None:
            raise _bad("curve_client_keys", f"a client key pair needs the server's public key too (set "
                                            f"{SERVER_KEY_ENV}, or pass curve_server_key)")
        return None, None
    keys = server_keys(server_key, endpoints, field)
    return keys, (client_key_pair(client_keys, pair_field) if client_keys is not None else None)


def secure(sock: zmq.Socket, server_key: bytes | None, pair: tuple[bytes, bytes] | None = None):
    """Make the next connect() of a client socket speak CURVE to the server whose public key is
    `server_key`, as `pair` or a fresh key pair (no change when `server_key` is None). ZeroMQ takes
    the options at connect time, so each endpoint of one socket may have its own server key."""
    if not server_key:
        return
    public, secret = pair or zmq.curve_keypair()
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


def write_key_pair(folder: str, name: str) -> tuple[str, str, bytes]:
    """Make a key pair: FOLDER/NAME.key (the public key, 0644) and FOLDER/NAME.key_secret (both keys,
    0600). Returns (public file, secret file, public key).

    Raises:
        FileExistsError: NAME.key_secret is there already (a key pair is never overwritten; its
        public file, derived from it, may be).
    """
    os.makedirs(folder, mode=0o700, exist_ok=True)
    public_path = os.path.join(folder, f"{name}.key")
    secret_path = os.path.join(folder, f"{name}.key_secret")
    if os.path.exists(secret_path):
        raise FileExistsError(secret_path)
    scratch = tempfile.mkdtemp(prefix=".keygen-", dir=folder)
    try:
        made_public, made_secret = zmq.auth.create_certificates(scratch, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        public, _ = zmq.auth.load_certificate(made_public)
        # The public file first: a key pair exists once its secret file does.
        os.replace(made_public, public_path)
        os.rename(made_secret, secret_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return public_path, secret_path, public
