"""Two changes to how pysyncobj moves entries between nodes, measured under large values.

1. Compression. pysyncobj zlib-compresses every message at level 3 on the tick thread, the
   thread that also sends heartbeats. For an incompressible 1 MiB value (an image, encrypted
   bytes, a model checkpoint) that is ~16 ms per follower per send, for nothing: the output is
   as big as the input. `send` stores such messages (zlib level 0: a valid zlib stream, ~0.6 ms
   per MiB, that every pysyncobj node decompresses as before), and compresses the rest at
   level 1, which on msgpack'd JSON-like data is ~1.4x faster than level 3 for a ratio within
   a few per cent. Small messages (heartbeats, acknowledgements) are stored too: compressing a
   few hundred bytes saves nothing on the wire and costs more than the copy.

2. Acknowledgements that rewind. A leader sends entries ahead of the acknowledgements (it
   moves a follower's next index on as it sends). pysyncobj then sets the next index to what
   each success acknowledgement says, so an acknowledgement of an older message moves it back,
   and the next heartbeat sends again every entry after it: under 1 MiB entries each one
   crossed the wire two or three times, the follower truncated and re-appended entries it had
   already applied (pysyncobj's "state machine may have diverged" message), and heartbeats were
   late behind the resends. `on_next_index` keeps the furthest next index a success
   acknowledges or the leader already sent to; a failed one (a follower whose log does not
   match) still resets it, as the raft paper has it.

3. Buffers. pysyncobj keeps each connection's unsent and unparsed bytes in a `bytes` object:
   every message appended (`buffer += data`) and every partial send or parsed message
   (`buffer = buffer[n:]`) copies all of it. Under large entries a leader's buffer to a slow
   follower holds several MiB, so each 1 MiB entry it queued copied the lot again, and the
   follower copied its growing read buffer for every 4 MiB it received: half of the leader's
   tick thread went to that copying (py-spy, three nodes under the largest documented
   requests). `send`, `process_send`, `process_read` and `process_parse_message` keep the
   same buffers as `bytearray`s, which append in place and drop consumed bytes from the
   front without moving the rest.

4. Commands. pysyncobj pickles each replicated call, `(method, (entry bytes,), {})`, with its
   own module at protocol 2 before it enters the log, so the entry bytes crossed the wire and
   sat in the journal as latin-1 text in UTF-8: 1.5x the size, a UTF-8 decode in every
   follower's apply, and (half its bytes being 0xC2 or 0xC3) a sample that looks compressible,
   so random 1 MiB payloads were deflated at level 1 for nothing (~20 ms per MiB per
   follower, the larger part of a leader's tick thread under large entries). `install()` has
   that module pickle with `PICKLE_PROTOCOL`; every pickle, old or new, loads as before, so a
   journal written by an earlier version still replays.

5. Encryption. With a raft password pysyncobj seals every message with Fernet (AES-CBC, an
   HMAC, then base64): ~8 ms per MiB to seal and ~6 to open, on the tick thread, for each
   follower. `Sealer` seals with AES-256-GCM instead (~0.5 ms per MiB), under a key of its own
   for each process: HKDF over the password's PBKDF2 key (pysyncobj's derivation) with a random
   16-byte salt drawn at start, and a counter as the nonce, so no (key, nonce) pair is ever used
   twice. A message is `b"J1" | salt | counter (8) | time (8) | ciphertext and tag`, and the
   header is authenticated with it. pysyncobj's own checks stay: each connection's random
   session keys inside the sealed message, and times that never go back. A node of this kind
   does not talk to one that seals with Fernet: every node of a cluster runs the same jobbie.

All of this relies on pysyncobj's private layout (0.3.17, pinned in setup.cfg); `install()` checks the
attributes it uses and leaves pysyncobj as it is, with a warning, if they are not there.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import pickle
import socket
import struct
import zlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pysyncobj import encryptor as pe
from pysyncobj import pickle as pp
from pysyncobj import syncobj as ps
from pysyncobj import tcp_connection as tc
from pysyncobj.monotonic import monotonic as monotonic_time

log = logging.getLogger("jobbie.raft")

#: pysyncobj pickles with protocol 2 (for Python 2), which spells bytes as latin-1 text: 1.5x the
#: size and ~6 ms per MiB. Protocol 5 copies them (~0.4 ms per MiB). Every Python 3.8+ reads it.
PICKLE_PROTOCOL = 5
#: Messages below this many bytes are stored, not compressed.
COMPRESS_MIN_BYTES = 2048
#: Bytes from the middle of a larger message that decide whether it compresses.
SAMPLE_BYTES = 4096
#: A sample that compresses to more than this share of its size is not worth compressing.
INCOMPRESSIBLE = 0.9


def level_for(data: bytes) -> int:
    """zlib level for a message: 0 (stored) when small or incompressible, else 1."""
    if len(data) < COMPRESS_MIN_BYTES:
        return 0
    if len(data) <= SAMPLE_BYTES:
        return 1
    middle = len(data) // 2
    sample = data[middle - SAMPLE_BYTES // 2:middle + SAMPLE_BYTES // 2]
    return 0 if len(zlib.compress(sample, 1)) > INCOMPRESSIBLE * len(sample) else 1


def send(self, message):
    """TcpConnection.send with `level_for` instead of a fixed level 3."""
    if self.sendRandKey:
        message = (self.sendRandKey, message)
    raw = pickle.dumps(message, PICKLE_PROTOCOL)
    data = zlib.compress(raw, level_for(raw))
    if self.encryptor:
        data = self.encryptor.encrypt_at_time(data, int(monotonic_time()))
    buffer = _buffer(self, "_TcpConnection__writeBuffer")
    buffer += LENGTH.pack(len(data))
    buffer += data
    self._TcpConnection__trySendBuffer()


#: The length prefix of a message on pysyncobj's wire (native int, as pysyncobj packs it).
LENGTH = struct.Struct("i")
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


def _buffer(conn, name: str) -> bytearray:
    """The connection's buffer `name` as a bytearray (pysyncobj resets it to b"" on connect and disconnect)."""
    buffer = getattr(conn, name)
    if type(buffer) is not bytearray:
        buffer = bytearray(buffer)
        setattr(conn, name, buffer)
    return buffer


def process_send(self) -> bool:
    """TcpConnection.__processSend without copying what is left after a partial send."""
    buffer = self._TcpConnection__writeBuffer
    if not buffer:
        return False
    try:
        sent = self._TcpConnection__socket.send(buffer)
    except socket.error as exc:
        if exc.errno not in _AGAIN:
            self.disconnect()
        return False
    if sent < 0:
        self.disconnect()
        return False
    if sent == 0:
        return False
    del buffer[:sent]  # a bytearray: `send` made it one before it put anything in
    return True


def process_read(self) -> bool:
    """TcpConnection.__processRead, appending to the read buffer in place."""
    sock = self._TcpConnection__socket
    try:
        incoming = sock.recv(self._TcpConnection__recvBufferSize)
    except socket.error as exc:
        if exc.errno not in _AGAIN:
            self.disconnect()
        return False
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        self.disconnect()
        return False
    if not incoming:
        self.disconnect()
        return False
    _buffer(self, "_TcpConnection__readBuffer").extend(incoming)
    return True


def process_parse_message(self):
    """TcpConnection.__processParseMessage: one message off the read buffer, or None (same checks)."""
    buffer = self._TcpConnection__readBuffer
    if len(buffer) < 4:
        return None
    length = LENGTH.unpack_from(buffer)[0]
    if len(buffer) - 4 < length:
        return None
    with memoryview(buffer) as view:
        data = bytes(view[4:4 + length])
    try:
        if self.encryptor:
            stamp = self.encryptor.extract_timestamp(data)
            assert stamp >= self.recvLastTimestamp
            self.recvLastTimestamp = stamp
            data = self.encryptor.decrypt(data)
        message = pickle.loads(zlib.decompress(data))
        if self.recvRandKey:
            rand_key, message = message
            assert rand_key == self.recvRandKey
    except Exception:
        # As pysyncobj: a message that does not open, parse or match the session ends the connection.
        self.disconnect()
        return None
    del buffer[:4 + length]  # a bytearray: `process_read` made it one before it put anything in
    return message


def on_next_index(raft, node, message) -> bool:
    """Handle a leader's success acknowledgement without moving the next index back.

    True when handled; False leaves the message to pysyncobj (failures, resets, non-leaders).
    """
    if not message.get("success") or message.get("reset") or not raft._isLeader():
        return False
    match = raft._SyncObj__raftMatchIndex
    nexts = raft._SyncObj__raftNextIndex
    if node not in match or node not in nexts:
        return False
    acknowledged = message["next_node_idx"]
    if match[node] < acknowledged - 1:
        match[node] = acknowledged - 1
    if nexts[node] < acknowledged:
        nexts[node] = acknowledged
    raft._SyncObj__lastResponseTime[node] = monotonic_time()
    return True


MAGIC = b"J1"
SALT_BYTES = 16
HEADER = struct.Struct(">2s16sQQ")  # magic, salt, counter, time
#: Keys of other processes kept for opening their messages (a few per peer restart).
PEER_KEYS_MAX = 64


class Sealer:
    """The `encryptor` of pysyncobj's connections (encrypt_at_time, extract_timestamp, decrypt)."""

    def __init__(self, password_key: bytes):
        self._master = password_key
        self._salt = os.urandom(SALT_BYTES)
        self._aead = self._key(self._salt)
        self._counter = itertools.count(1)
        self._peers: dict[bytes, AESGCM] = {self._salt: self._aead}
        self._opened = (None, None)  # (sealed message, its plaintext): extract_timestamp opens it once

    def _key(self, salt: bytes) -> AESGCM:
        return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"jobbie raft v1")
                      .derive(self._master))

    def encrypt_at_time(self, data: bytes, current_time: int) -> bytes:
        counter = next(self._counter)
        header = HEADER.pack(MAGIC, self._salt, counter, current_time)
        return header + self._aead.encrypt(counter.to_bytes(12, "big"), data, header)

    def _open(self, sealed: bytes) -> tuple[int, bytes]:
        if len(sealed) < HEADER.size + 16:
            raise ValueError("sealed raft message too short")
        magic, salt, counter, when = HEADER.unpack_from(sealed)
        if magic != MAGIC:
            raise ValueError("not a sealed raft message")
        aead = self._peers.get(salt)
        if aead is None:
            if len(self._peers) >= PEER_KEYS_MAX:
                self._peers = {self._salt: self._aead}
            aead = self._peers[salt] = self._key(salt)
        plain = aead.decrypt(counter.to_bytes(12, "big"), sealed[HEADER.size:], sealed[:HEADER.size])
        return when, plain

    def extract_timestamp(self, sealed: bytes) -> int:
        # pysyncobj reads the time before it asks for the plaintext: both come from one
        # authenticated opening, so a forged time is refused like a forged message.
        when, plain = self._open(sealed)
        self._opened = (sealed, plain)
        return when

    def decrypt(self, sealed: bytes) -> bytes:
        last, plain = self._opened
        self._opened = (None, None)
        if last is sealed:
            return plain
        return self._open(sealed)[1]


def get_sealer(password) -> Sealer:
    """pysyncobj's getEncryptor, with the same password derivation, sealing with `Sealer`."""
    if not isinstance(password, bytes):
        password = password.encode()
    kdf = pe.PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=pe.SALT, iterations=100_000)
    return Sealer(kdf.derive(password))


def install() -> bool:
    """Use `send`, the bytearray buffers and `Sealer` for pysyncobj in this process; False if pysyncobj's layout differs."""
    connection = getattr(tc, "TcpConnection", None)
    if connection is None or not all(hasattr(connection, name) for name in (
            "send", "_TcpConnection__trySendBuffer", "_TcpConnection__processSend", "_TcpConnection__processRead",
            "_TcpConnection__processParseMessage")) \
            or not all(hasattr(mod, name) for mod, name in ((ps, "getEncryptor"), (pe, "PBKDF2HMAC"), (pe, "SALT"))):
        log.warning("pysyncobj is not the version jobbie knows: raft messages keep its level-3 compression and "
                    "Fernet sealing")
        return False
    if getattr(pp, "__protocol", None) in (2, PICKLE_PROTOCOL):
        setattr(pp, "__protocol", PICKLE_PROTOCOL)
    else:
        log.warning("pysyncobj's pickle module is not the one jobbie knows: its commands keep their protocol")
    connection.send = send
    connection._TcpConnection__processSend = process_send
    connection._TcpConnection__processRead = process_read
    connection._TcpConnection__processParseMessage = process_parse_message
    ps.getEncryptor = get_sealer
    return True
