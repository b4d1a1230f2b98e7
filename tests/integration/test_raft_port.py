"""The raft port takes nothing unauthenticated: a crafted pickle sent to a single node's raft port
runs nothing, the connection is dropped, and the node goes on serving. The raft password is in no
file of the data dir."""
from __future__ import annotations

import os
import pickle
import socket
import struct
import time
import zlib


class Payload:
    """Unpickling this creates MARKER: what an attacker's pickle would do, harmlessly."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_on_the_raft_port_runs_nothing(node, tmp_path):
    client = node.client()
    status = client.call("cluster_status")
    host, port = status["raft_bind"].rsplit(":", 1)
    marker = tmp_path / "pwned"
    data = zlib.compress(pickle.dumps(Payload(str(marker))), 3)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(struct.pack("i", len(data)) + data)
        s.settimeout(3)
        try:
            dropped = s.recv(1) == b""  # the node closes the connection
        except (ConnectionResetError, socket.timeout):
            dropped = True
    time.sleep(0.5)
    assert not marker.exists(), "the raft port unpickled an unauthenticated message"
    assert dropped
    assert client.enqueue("after-pickle", {"ok": 1})
    assert client.call("cluster_status")["role"] == "leader"


def test_the_raft_password_is_in_no_file_of_the_data_dir(node_factory):
    secret = "raft-secret-4b1d"
    node = node_factory(extra_args=["--raft-password", secret])
    node.client().enqueue("pw", 1)
    for folder, _, files in os.walk(node.data_dir):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                assert secret.encode() not in f.read(), f"the raft password is written in {path}"
