"""A client that sends a long pipeline and never reads its replies does not grow the gateway's memory
without bound (the replies waiting for one connection are capped), and the node keeps serving."""
from __future__ import annotations

import time

import pytest
import zmq

from jobbie.transport import codec

pytestmark = pytest.mark.timeout(90)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_an_unread_pipeline_is_capped_per_connection(node_factory):
    node = node_factory(extra_args=["--inflight-per-client-max", "2000"])
    client = node.client()
    for q in range(20):  # replies of a few KB each (list_queues of 20 queues)
        client.enqueue(f"unread-queue-with-a-long-name-{q:02d}", {"q": q})
    # the admission process holds the client socket and its unsent replies
    front = node.actor_pid("admission")
    before = rss_mb(front)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 10)  # this client reads nothing: replies stay with the server
    sock.connect(node.endpoint)
    try:
        for i in range(100_000):
            sock.send(codec.encode({"id": i, "op": "list_queues", "args": {}}))
        # Let the gateway answer all of them (into the void)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answered = client.call("cluster_status")["gateway"]["requests"]
            if answered >= 100_000:
                break
            time.sleep(0.2)
        grown = rss_mb(front) - before
        print(f"\nadmission RSS grew by {grown:.1f} MB for 100,000 unread replies")
        assert grown < 100, f"admission RSS grew by {grown:.0f} MB"
        assert client.enqueue("still-serving", {"ok": 1})
    finally:
        sock.close()
