"""Admission: who may enter the raft pipeline, in what order, in what batches.

Rules it keeps:
- In-flight limits, globally and per client (the connection, or an explicit
  client key the request carries). Over a limit the op is answered at once
  with RESOURCE_EXHAUSTED and a `retry_after_ms` computed from the backlog;
  nothing waits without bound.
- Fairness: waiting ops queue per client, and a batch is cut round-robin over
  the clients, so one flooding client cannot starve a light one. An op too big
  for the rest of an entry leads the next one, and smaller ops of other clients
  fill the space (so a small write does not wait behind a line of 1 MiB ones).
- Group commit: while no entry is with raft, a batch is cut at once (low
  latency when idle); otherwise ops wait and the next entry carries
  everything that piled up (throughput under load).
  An entry never exceeds `entry_ops_max` ops or `entry_bytes_max` bytes.
- Bytes in flight: entries with raft hold at most `bytes_in_flight_max` bytes
  together (one entry may be larger when it goes alone). Raft commits in log
  order, so every byte ahead of a small write in the log is time it waits:
  the cap keeps at most about one large entry ahead of it. Behind a large
  entry (`pipeline_after_bytes`), up to `entries_in_flight_max` entries of
  small ops are pipelined in the space left, instead of waiting for it.
- Sparse clients first: while a dense client (many ops waiting) fills the
  entries, a client with only a few ops waiting or in flight does not wait for
  the next full entry: its ops leave at once in a small entry of their own,
  pipelined behind the one in flight (as fq_codel serves new, sparse flows
  before the backlogged ones). Its wait is then the rest of the entry ahead,
  not that entry and the next full one. Without a dense client (every client
  with a request or two in flight) the entries carry everyone's ops as before.
- An entry raft never answers for (its process restarted) is forgotten when
  the new raft process says hello, or after `entry_timeout_s`; the gateway
  answers its ops UNAVAILABLE when its own time-out runs out.

Pure: no sockets, no clock (time comes in as `now`).
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from jobbie.transport.metrics import Window


#: Clients whose next op is too big for the rest of an entry, passed over at most per entry.
SKIPS_MAX = 64


@dataclass
class AdmissionLimits:
    #: Ops waiting or in flight, all clients together.
    inflight_max: int = 50_000
    #: Ops waiting or in flight for one client (<= inflight_max).
    inflight_per_client_max: int = 10_000
    #: Raft entries proposed and not yet applied.
    entries_in_flight_max: int = 4
    #: Another entry joins those in flight only when they hold at least this many bytes: a
    #: large entry is ahead, and what waits would wait for it anyway, so it is pipelined behind
    #: it. Below this, ops wait and the next entry carries them all (group commit: fewer,
    #: fuller entries, which is what small ops need).
    pipeline_after_bytes: int = 256 * 1024
    #: Bytes of the entries proposed and not yet applied: room for one entry of
    #: `entry_bytes_max` and a quarter more for small ops beside it.
    bytes_in_flight_max: int = 1024 * 1024 + 256 * 1024
    #: Ops in one raft entry.
    entry_ops_max: int = 2000
    #: Encoded bytes in one raft entry: one op may be larger (the gateway caps a write at
    #: about 1 MiB) and then goes alone. pysyncobj pickles, compresses and sends an entry to
    #: each follower on its tick thread (about 150 ms per MiB of incompressible data on this
    #: kind of machine), so bigger entries stall its heartbeats past the election timeout.
    #: Well below the raft actor's appendEntriesBatchSizeBytes (2 MiB), which a single
    #: entry must never reach (pysyncobj then sends it in chunks that followers can drop).
    entry_bytes_max: int = 1024 * 1024
    #: A client with at most this many ops waiting or in flight is sparse ...
    sparse_ops_max: int = 2
    #: ... and one with at least this many waiting is dense: while one waits, sparse clients' ops
    #: leave in express entries (at most `entries_in_flight_max` in flight in all).
    dense_ops_min: int = 16
    #: Forget an entry raft has not answered for after this long (a backstop:
    #: a restarted raft actor says hello, which frees its entries at once).
    entry_timeout_s: float = 3.0


class Waiting:
    __slots__ = ("client", "size", "tag", "op_bytes", "since")

    def __init__(self, client, size, tag, op_bytes, since):
        self.client = client
        self.size = size
        self.tag = tag
        self.op_bytes = op_bytes
        self.since = since


class AdmissionCore:
    def __init__(self, limits: AdmissionLimits = AdmissionLimits()):
        self.limits = limits
        self.queues: OrderedDict[str, deque] = OrderedDict()  # client -> waiting ops, round-robin order
        self.per_client: dict[str, int] = {}  # waiting + in flight
        self.total = 0
        self.in_flight: dict[int, tuple[float, list, int]] = {}  # entry n -> (sent at, [(client, count)], bytes)
        self.bytes_in_flight = 0
        self.next_entry = 0
        self.applied_ops = 0
        self.rejected = 0
        self.apply_rate = 0.0  # ops/s, smoothed, for retry hints
        self.queue_wait_ms = Window()  # per op: offered -> cut into an entry
        self.entry_ops = Window(1024)  # ops per entry
        self.entry_ms = Window(1024)  # per entry: sent to raft -> applied
        self.express_entries = 0  # entries of sparse clients, pipelined behind a dense client's

    # ------------------------------------------------------------------ intake
    def offer(self, client: str, size: int, tag, op_bytes: bytes, now: float = 0.0):
        """Queue one op, or return the refusal to answer it with."""
        lim = self.limits
        mine = self.per_client.get(client, 0)
        if self.total >= lim.inflight_max or mine >= lim.inflight_per_client_max:
            self.rejected += 1
            scope = "node" if self.total >= lim.inflight_max else "client"
            backlog = self.total if scope == "node" else mine
            return {"err": {"code": "RESOURCE_EXHAUSTED", "reason": "overloaded",
                            "message": f"too many requests in flight for this {scope} ({backlog}); "
                                       "retry after the hinted delay",
                            "retry_after_ms": self.retry_after_ms(backlog)}}
        queue = self.queues.get(client)
        if queue is None:
            queue = self.queues[client] = deque()
        queue.append(Waiting(client, size, tag, op_bytes, now))
        self.per_client[client] = mine + 1
        self.total += 1
        return None

    def retry_after_ms(self, backlog: int) -> int:
        rate = self.apply_rate if self.apply_rate > 0 else 5000.0
        return int(min(5000, max(5, 1000 * backlog / rate)))

    # ----------------------------------------------------------------- batches
    def cut_batch(self, now: float):
        """The next entry to propose: (entry number, [op bytes], [tags]) or None."""
        lim = self.limits
        if not self.queues or len(self.in_flight) >= lim.entries_in_flight_max:
            return None
        # With nothing in flight any op may go (alone, if it is over the caps).
        room = lim.entry_bytes_max
        if self.in_flight:
            if self.bytes_in_flight < lim.pipeline_after_bytes:
                return self._cut_express(now)
            room = min(room, lim.bytes_in_flight_max - self.bytes_in_flight)
            if room <= 0:
                return None
        ops, tags, counts = [], [], {}
        size = 0
        skipped = []
        while self.queues and len(ops) < lim.entry_ops_max:
            client, queue = next(iter(self.queues.items()))
            item = queue[0]
            if (ops or self.in_flight) and size + item.size > room:
                # Too big for what is left of this entry: it leads the next one, and the smaller ops of
                # the clients behind it fill this one (a small write never waits behind a line of
                # large ones for more than one entry).
                skipped.append((client, self.queues.pop(client)))
                if len(skipped) >= SKIPS_MAX:
                    break
                continue
            size += self._take(client, queue, now, ops, tags, counts)
            # Round-robin: this client goes to the back of the line.
            self.queues.move_to_end(client)
            if not queue:
                del self.queues[client]
        for client, queue in reversed(skipped):
            self.queues[client] = queue
            self.queues.move_to_end(client, last=False)
        if not ops:
            return None
        return self._entry(now, ops, tags, counts, size)

    def _take(self, client: str, queue: deque, now: float, ops: list, tags: list, counts: dict) -> int:
        """Move the op at the head of `queue` into the entry being cut; returns its size."""
        item = queue.popleft()
        self.queue_wait_ms.record((now - item.since) * 1000)
        ops.append(item.op_bytes)
        tags.append(item.tag)
        counts[client] = counts.get(client, 0) + 1
        return item.size

    def _entry(self, now: float, ops: list, tags: list, counts: dict, size: int):
        n = self.next_entry
        self.next_entry += 1
        self.in_flight[n] = (now, list(counts.items()), size)
        self.bytes_in_flight += size
        self.entry_ops.record(len(ops))
        return n, ops, tags

    def _cut_express(self, now: float):
        """An entry of the sparse clients' waiting ops while a dense client waits, or None."""
        lim = self.limits
        sparse, dense = [], False
        for client, queue in self.queues.items():
            mine = self.per_client[client]
            if mine <= lim.sparse_ops_max:
                sparse.append(client)
            elif len(queue) >= lim.dense_ops_min:
                dense = True
        if not sparse or not dense:
            return None
        ops, tags, counts = [], [], {}
        size = 0
        room = min(lim.entry_bytes_max, lim.bytes_in_flight_max - self.bytes_in_flight)
        for client in sparse:
            if len(ops) >= lim.entry_ops_max:
                break
            queue = self.queues[client]
            while queue and size + queue[0].size <= room and len(ops) < lim.entry_ops_max:
                size += self._take(client, queue, now, ops, tags, counts)
            if not queue:
                del self.queues[client]
        if not ops:
            return None
        self.express_entries += 1
        return self._entry(now, ops, tags, counts, size)

    def on_applied(self, n: int, now: float):
        entry = self.in_flight.pop(n, None)
        if entry is None:
            return
        sent_at, counts, size = entry
        self.bytes_in_flight -= size
        done = self._release(counts)
        self.entry_ms.record((now - sent_at) * 1000)
        elapsed = max(now - sent_at, 1e-4)
        self.apply_rate = 0.8 * self.apply_rate + 0.2 * (done / elapsed) if self.apply_rate else done / elapsed
        self.applied_ops += done

    def on_raft_restarted(self):
        """Raft came back: whatever it had not answered is lost (or will be answered late, harmlessly)."""
        for _, counts, _ in self.in_flight.values():
            self._release(counts)
        self.in_flight.clear()
        self.bytes_in_flight = 0

    def expire(self, now: float):
        for n, (sent_at, counts, size) in list(self.in_flight.items()):
            if now - sent_at > self.limits.entry_timeout_s:
                del self.in_flight[n]
                self.bytes_in_flight -= size
                self._release(counts)

    def _release(self, counts) -> int:
        done = 0
        for client, count in counts:
            left = self.per_client.get(client, 0) - count
            if left > 0:
                self.per_client[client] = left
            else:
                self.per_client.pop(client, None)
            self.total -= count
            done += count
        return done

    def stats(self) -> dict:
        lim = self.limits
        return {"waiting": sum(len(q) for q in self.queues.values()), "in_flight": self.total,
                "entries_in_flight": len(self.in_flight), "bytes_in_flight": self.bytes_in_flight, "clients": len(self.per_client),
                "applied_ops": self.applied_ops, "rejected": self.rejected, "express_entries": self.express_entries,
                "apply_rate_ops_per_s": round(self.apply_rate, 1),
                "limits": {"inflight_max": lim.inflight_max, "inflight_per_client_max": lim.inflight_per_client_max,
                           "entry_ops_max": lim.entry_ops_max, "entry_bytes_max": lim.entry_bytes_max,
                           "entries_in_flight_max": lim.entries_in_flight_max,
                           "bytes_in_flight_max": lim.bytes_in_flight_max},
                "queue_wait_ms": self.queue_wait_ms.summary(), "entry_ops": self.entry_ops.summary(),
                "entry_commit_ms": self.entry_ms.summary()}
