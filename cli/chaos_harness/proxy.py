"""TCP proxies in front of the nodes' client ports, so a fault can drop every client connection.

The load (producers and workers) and the recovery probe reach the nodes only through these
proxies: one per node, listening on a free 127.0.0.1 port and copying bytes both ways to the
node's ZeroMQ port. `cut` aborts every live connection of the chosen proxies (the peers see a
reset, mid-message or not) and, for a while after, accepts new connections only to abort them at
once, so the ZeroMQ sockets' reconnects fail too. What a cut tests: requests and replies lost in
flight (the client library retries writes with their request id, and the server must apply each
at most once); fetch replies lost after the jobs were leased (the lifecycle must take the leases
back when they end); heartbeats and acks lost (leases run out under a handler that still runs).

Why client ports and not raft ports: pysyncobj knows a node by the address it binds, which its
peers must dial as well, so a proxy in front of a raft port would give the node a second name that
its peers do not know. Raft connections are broken by the faults that kill and stop processes.

All proxies share one asyncio loop on a thread of their own.
"""
from __future__ import annotations

import asyncio
import threading

HOST = "127.0.0.1"
#: Bytes a side may have waiting to be written before the other side stops being read.
BUFFER_HIGH_BYTES = 1 << 20


class _Link:
    """One proxied connection: the client's side and the node's side."""

    def __init__(self, proxy: "Proxy"):
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.node: asyncio.Transport | None = None
        self.early: list[bytes] = []  # from the client, before the node side is connected
        self.closed = False

    def close(self, abort: bool = False):
        if self.closed:
            return
        self.closed = True
        self.proxy.links.discard(self)
        for side in (self.client, self.node):
            if side is not None:
                side.abort() if abort else side.close()


class _Side(asyncio.Protocol):
    """One end of a link; what it receives is written to the other end."""

    def __init__(self, link: _Link, is_client: bool):
        self.link = link
        self.is_client = is_client

    def other(self) -> asyncio.Transport | None:
        return self.link.node if self.is_client else self.link.client

    def data_received(self, data: bytes):
        other = self.other()
        if other is not None:
            other.write(data)
        elif self.is_client:
            self.link.early.append(data)

    def eof_received(self):
        self.link.close()
        return False

    def connection_lost(self, exc):
        self.link.close()

    def pause_writing(self):
        other = self.other()
        if other is not None:
            other.pause_reading()

    def resume_writing(self):
        other = self.other()
        if other is not None and not self.link.closed:
            other.resume_reading()


class _Accepted(_Side):
    """The client's end: refused while the proxy refuses, else it dials the node."""

    def __init__(self, proxy: "Proxy"):
        super().__init__(_Link(proxy), is_client=True)

    def connection_made(self, transport):
        proxy = self.link.proxy
        if proxy.refusing():
            transport.abort()
            self.link.closed = True
            return
        self.link.client = transport
        transport.set_write_buffer_limits(high=BUFFER_HIGH_BYTES)
        proxy.links.add(self.link)
        asyncio.get_running_loop().create_task(self.dial())

    async def dial(self):
        link = self.link
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(lambda: _Side(link, is_client=False),
                                                        HOST, link.proxy.target_port)
        except OSError:
            link.close()  # the node is down: the client sees its connection end
            return
        if link.closed:
            transport.abort()
            return
        link.node = transport
        transport.set_write_buffer_limits(high=BUFFER_HIGH_BYTES)
        for data in link.early:
            transport.write(data)
        link.early.clear()


class Proxy:
    """Copies 127.0.0.1:`port` to and from 127.0.0.1:`target_port`."""

    def __init__(self, name: str, target_port: int, loop: asyncio.AbstractEventLoop):
        self.name = name
        self.target_port = target_port
        self.loop = loop
        self.links: set[_Link] = set()
        self.refuse_until = 0.0
        self.server: asyncio.Server | None = None
        self.port: int | None = None

    @property
    def endpoint(self) -> str:
        return f"tcp://{HOST}:{self.port}"

    def refusing(self) -> bool:
        return self.loop.time() < self.refuse_until

    async def open(self):
        self.server = await self.loop.create_server(lambda: _Accepted(self), HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def cut(self, refuse_s: float) -> int:
        """Abort every live connection, and refuse new ones for `refuse_s` seconds; returns how many were cut."""
        self.refuse_until = self.loop.time() + refuse_s
        links = list(self.links)
        for link in links:
            link.close(abort=True)
        return len(links)

    async def close(self):
        if self.server is not None:
            self.server.close()
        for link in list(self.links):
            link.close(abort=True)


class Proxies:
    """One proxy per node, on one loop thread. Thread-safe: every call runs on the loop."""

    def __init__(self, targets: dict[str, int]):
        """`targets` maps a node id to the node's client port."""
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="chaos-proxies", daemon=True)
        self.thread.start()
        self.proxies = {name: Proxy(name, port, self.loop) for name, port in targets.items()}
        try:
            for proxy in self.proxies.values():
                self._call(proxy.open())
        except BaseException:
            self.close()
            raise

    def _call(self, coroutine, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def endpoints(self) -> str:
        """The proxies' endpoints, comma-separated, for a Client."""
        return ",".join(p.endpoint for p in self.proxies.values())

    def live(self) -> int:
        """Connections open through all proxies."""
        async def count():
            return sum(len(p.links) for p in self.proxies.values())
        return self._call(count())

    def cut(self, names, refuse_s: float) -> int:
        """Cut the proxies of the nodes `names` (see Proxy.cut); returns the connections cut."""
        async def cut_all():
            return sum(self.proxies[n].cut(refuse_s) for n in names)
        return self._call(cut_all())

    def close(self):
        """Close every proxy and connection and end the loop thread (again: nothing happens)."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            async def close_all():
                for proxy in self.proxies.values():
                    await proxy.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()  # dials still waiting for a node
            try:
                self._call(close_all())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()
