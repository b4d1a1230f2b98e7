"""The transport ceiling: a bare ZeroMQ ROUTER echo in Python.

Every benchmark run also drives this server with the same client harness, so
each jobbie figure can be read as a ratio of what ZeroMQ and Python allow on
the same machine at the same moment. It sends every frame straight back (no
decoding): the fastest any Python server on this transport can answer.

    python -m jobbie.bench.ceiling tcp://127.0.0.1:7799
"""
from __future__ import annotations

import signal
import sys

import zmq


def serve(endpoint: str):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(endpoint)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    try:
        while True:
            if not poller.poll(500):
                continue
            # Drain and answer in a batch, like jobbie's own pump does.
            for _ in range(10_000):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                sock.send_multipart(frames)
    finally:
        sock.close()
        ctx.term()


if __name__ == "__main__":
    serve(sys.argv[1])
