"""How raft messages cross the wire (actors/raft/wire.py): compression, sealing, acknowledgements."""
from __future__ import annotations

import json
import os
import pickle
import zlib

import pytest

from jobbie.actors.raft import wire

MIB = 1024 * 1024


# ------------------------------------------------------------------ compression
def test_small_and_incompressible_messages_are_stored_and_the_rest_compressed():
    assert wire.level_for(b"x" * 100) == 0
    assert wire.level_for(os.urandom(MIB)) == 0
    text = json.dumps([{"queue": "emails", "payload": {"to": f"user{i}@example.com"}} for i in range(5000)]).encode()
    assert wire.level_for(text) == 1
    assert wire.level_for(b"a" * 3000) == 1


class Connection:
    """What `wire.send` needs of pysyncobj's TcpConnection."""

    def __init__(self, encryptor=None, rand_key=None):
        self.encryptor = encryptor
        self.sendRandKey = rand_key
        self._TcpConnection__writeBuffer = b""
        self.flushed = 0

    def _TcpConnection__trySendBuffer(self):
        self.flushed += 1


def read_frame(buffer: bytes, encryptor=None):
    """What pysyncobj's receiving side does with one frame (tcp_connection's parse)."""
    length = int.from_bytes(buffer[:4], "little", signed=True)
    data = buffer[4:4 + length]
    assert len(data) == length
    if encryptor:
        encryptor.extract_timestamp(data)
        data = encryptor.decrypt(data)
    return pickle.loads(zlib.decompress(data))


@pytest.mark.parametrize("payload", [b"", b"small", os.urandom(MIB), b"compressible " * 50_000])
def test_what_send_writes_is_what_pysyncobj_reads(payload):
    message = {"type": "append_entries", "entries": [(payload, 7, 2)], "term": 2}
    conn = Connection()
    wire.send(conn, message)
    assert conn.flushed == 1
    assert read_frame(conn._TcpConnection__writeBuffer) == message


def test_send_seals_with_the_session_key_inside():
    sealer = wire.get_sealer("s3cret")
    conn = Connection(encryptor=sealer, rand_key=b"k" * 32)
    wire.send(conn, {"type": "next_node_idx", "next_node_idx": 5})
    assert read_frame(conn._TcpConnection__writeBuffer, wire.get_sealer("s3cret")) == (
        b"k" * 32, {"type": "next_node_idx", "next_node_idx": 5})


# ------------------------------------------------------------------ sealing
def test_a_peer_with_the_same_password_opens_what_another_process_sealed():
    a, b = wire.get_sealer("pw"), wire.get_sealer("pw")
    sealed = a.encrypt_at_time(b"hello", 1234)
    assert b.extract_timestamp(sealed) == 1234
    assert b.decrypt(sealed) == b"hello"
    # and without the time asked first
    assert b.decrypt(a.encrypt_at_time(b"again", 1235)) == b"again"


def test_each_process_seals_under_its_own_key_and_never_repeats_a_nonce():
    a, b = wire.get_sealer("pw"), wire.get_sealer("pw")
    first, second = a.encrypt_at_time(b"same", 1), a.encrypt_at_time(b"same", 1)
    heads = [wire.HEADER.unpack_from(m) for m in (first, second, b.encrypt_at_time(b"same", 1))]
    assert heads[0][2] != heads[1][2]  # counter moves on
    assert heads[0][1] == heads[1][1] != heads[2][1]  # one salt per process
    assert first != second


@pytest.mark.parametrize("where", [0, 3, 20, 30, -1, -20])
def test_a_changed_byte_anywhere_is_refused(where):
    sealer = wire.get_sealer("pw")
    sealed = bytearray(sealer.encrypt_at_time(b"payload" * 10, 99))
    sealed[where] ^= 0x01
    with pytest.raises(Exception):
        wire.get_sealer("pw").extract_timestamp(bytes(sealed))


def test_another_password_or_garbage_is_refused():
    sealed = wire.get_sealer("right").encrypt_at_time(b"x", 1)
    for bad in (sealed, b"", b"J1" + b"\0" * 10, pickle.dumps({"type": "append_entries"})):
        with pytest.raises(Exception):
            wire.get_sealer("wrong").extract_timestamp(bad)


def test_the_opened_plaintext_is_only_reused_for_the_same_message():
    a, b = wire.get_sealer("pw"), wire.get_sealer("pw")
    one, two = a.encrypt_at_time(b"one", 1), a.encrypt_at_time(b"two", 2)
    b.extract_timestamp(one)
    assert b.decrypt(two) == b"two"
    assert b.decrypt(one) == b"one"


# ------------------------------------------------------------------ acknowledgements
class Leader:
    """The parts of a pysyncobj leader that `on_next_index` reads and writes."""

    def __init__(self, leader=True):
        self.leader = leader
        self._SyncObj__raftMatchIndex = {"n2": 4}
        self._SyncObj__raftNextIndex = {"n2": 8}  # entries 5..7 sent, not yet acknowledged
        self._SyncObj__lastResponseTime = {}

    def _isLeader(self):
        return self.leader


def ack(n, success=True, reset=False):
    return {"type": "next_node_idx", "next_node_idx": n, "success": success, "reset": reset}


def test_an_acknowledgement_of_an_older_message_does_not_move_the_next_index_back():
    raft = Leader()
    assert wire.on_next_index(raft, "n2", ack(6))
    assert raft._SyncObj__raftMatchIndex["n2"] == 5
    assert raft._SyncObj__raftNextIndex["n2"] == 8  # pysyncobj would have set 6 and sent 6, 7 again
    assert "n2" in raft._SyncObj__lastResponseTime
    assert wire.on_next_index(raft, "n2", ack(10))
    assert (raft._SyncObj__raftMatchIndex["n2"], raft._SyncObj__raftNextIndex["n2"]) == (9, 10)
    # a late one changes nothing
    assert wire.on_next_index(raft, "n2", ack(7))
    assert (raft._SyncObj__raftMatchIndex["n2"], raft._SyncObj__raftNextIndex["n2"]) == (9, 10)


def test_failures_resets_unknown_nodes_and_followers_are_left_to_pysyncobj():
    raft = Leader()
    assert not wire.on_next_index(raft, "n2", ack(3, success=False, reset=True))
    assert not wire.on_next_index(raft, "n2", ack(3, success=False))
    assert not wire.on_next_index(raft, "n9", ack(3))
    assert not wire.on_next_index(Leader(leader=False), "n2", ack(6))
    assert raft._SyncObj__raftNextIndex["n2"] == 8


def test_install_takes_the_pysyncobj_it_knows():
    assert wire.install()
    from pysyncobj import syncobj, tcp_connection
    assert tcp_connection.TcpConnection.send is wire.send
    assert tcp_connection.TcpConnection._TcpConnection__processSend is wire.process_send
    assert tcp_connection.TcpConnection._TcpConnection__processParseMessage is wire.process_parse_message
    assert syncobj.getEncryptor is wire.get_sealer


# ------------------------------------------------------------------ commands
def test_a_replicated_command_carries_its_entry_bytes_as_bytes_not_as_latin1_text():
    from pysyncobj import pickle as pysyncobj_pickle
    entry = os.urandom(MIB)
    before = len(pickle.dumps((0, (entry,), {}), 2))  # what pysyncobj's own module wrote
    wire.install()
    command = pysyncobj_pickle.dumps((0, (entry,), {}))
    # protocol 2 spelt the bytes as latin-1 text in UTF-8: about 1.5x their size
    assert len(command) < MIB + 64 <= before
    assert pysyncobj_pickle.loads(command) == (0, (entry,), {})
    # and a random entry in a message is stored, not deflated for nothing
    message = pickle.dumps({"type": "append_entries", "entries": [(command, 7, 2)]}, wire.PICKLE_PROTOCOL)
    assert wire.level_for(message) == 0


# ------------------------------------------------------------------ buffers
def connection_pair():
    """Two pysyncobj TcpConnections over a real socket pair, with jobbie's wire installed."""
    import socket

    from pysyncobj.poller import createPoller
    from pysyncobj.tcp_connection import TcpConnection

    wire.install()
    poller = createPoller("poll")
    left, right = socket.socketpair()
    for s in (left, right):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sender = TcpConnection(poller, socket=left, recvBufferSize=256 * 1024)
    receiver = TcpConnection(poller, socket=right, recvBufferSize=256 * 1024)
    return sender, receiver


def pump(sender, receiver, want: int) -> list:
    """Move bytes until `want` messages have been parsed on the receiving side."""
    got = []
    for _ in range(100_000):
        sender._TcpConnection__trySendBuffer()
        receiver._TcpConnection__tryReadBuffer()
        while (message := receiver._TcpConnection__processParseMessage()) is not None:
            got.append(message)
        if len(got) >= want:
            return got
    raise AssertionError(f"only {len(got)} of {want} messages arrived")


def test_large_messages_cross_a_real_socket_through_in_place_buffers():
    sender, receiver = connection_pair()
    try:
        messages = [{"type": "append_entries", "n": i, "data": os.urandom(MIB // 2 + i)} for i in range(6)]
        messages.append({"type": "next_node_idx", "n": 6})
        for m in messages:
            sender.send(m)
        # the socket takes far less than 3 MiB at once: the rest waits in the sender's buffer
        assert type(sender._TcpConnection__writeBuffer) is bytearray
        assert sender.getSendBufferSize() > 0
        assert pump(sender, receiver, len(messages)) == messages
        assert sender.getSendBufferSize() == 0
        assert len(receiver._TcpConnection__readBuffer) == 0
    finally:
        sender.disconnect()
        receiver.disconnect()


def test_a_message_that_does_not_open_ends_the_connection_as_pysyncobj_does():
    sender, receiver = connection_pair()
    try:
        sender.encryptor = wire.get_sealer("one password")
        receiver.encryptor = wire.get_sealer("another password")
        sender.send({"type": "append_entries"})
        for _ in range(100):
            sender._TcpConnection__trySendBuffer()
            receiver._TcpConnection__tryReadBuffer()
            if len(receiver._TcpConnection__readBuffer):
                break
        assert receiver._TcpConnection__processParseMessage() is None
        assert receiver.state == 0  # CONNECTION_STATE.DISCONNECTED
    finally:
        sender.disconnect()
        receiver.disconnect()
