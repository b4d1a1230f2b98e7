"""The chaos harness's TCP proxy in front of a real node: it forwards, it cuts, it refuses, it closes."""
from __future__ import annotations

import socket
import time

import pytest

from jobbie.cli.chaos_harness.proxy import Proxies
from jobbie.transport.client import Client
from jobbie.transport.errors import Unavailable

from .conftest import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def proxies(node):
    made = Proxies({"n1": node.port})
    yield made
    made.close()


def test_a_client_through_the_proxy_is_served_and_rides_through_a_cut(proxies):
    with Client(proxies.endpoints, timeout=0.5, retry_for=10.0) as client:
        # Given a client connected through the proxy
        assert client.enqueue("proxied", {"n": 1}).startswith("job_")
        assert proxies.live() == 1
        # When its connection is reset and new ones are refused for 1 s
        cut_at = time.monotonic()
        assert proxies.cut(["n1"], refuse_s=1.0) == 1
        # Then a call retried with its request id is answered once the refusal ends, not before
        job_id = client.enqueue("proxied", {"n": 2})
        took = time.monotonic() - cut_at
        assert 0.9 <= took < 8.0, took
        assert client.get_job(job_id)["payload"] == {"n": 2}
        assert proxies.live() == 1


def test_during_a_refusal_a_one_try_call_fails(proxies):
    with Client(proxies.endpoints, timeout=0.3, retry_for=0) as client:
        client.status()
        proxies.cut(["n1"], refuse_s=3.0)
        with pytest.raises(Unavailable):
            client.status()


def test_a_proxy_to_a_closed_port_ends_each_connection_and_the_client_says_unreachable():
    proxies = Proxies({"gone": free_port()})
    try:
        with Client(proxies.endpoints, timeout=0.5, retry_for=0, connect_timeout=1.0) as client:
            with pytest.raises(Unavailable) as refused:
                client.status()
        assert refused.value.reason == "unreachable"
        assert proxies.live() == 0
    finally:
        proxies.close()


def test_close_frees_the_port_and_ends_the_loop_thread(node):
    proxies = Proxies({"n1": node.port})
    port = proxies.proxies["n1"].port
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    proxies.close()
    assert not proxies.thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    proxies.close()  # again: nothing happens
