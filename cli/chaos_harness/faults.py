"""Faults drawn from a seed, applied to a running cluster, and the time the cluster takes to recover.

Every step of the plan is drawn from one `random.Random(seed)` with the same number of draws
whatever the step turns out to be, so a seed always gives the same list of steps; only whether a
step can be applied (is there a leader to stop?) depends on the run. The kinds:

- kill-actor: SIGKILL of one actor process of one node (its supervisor restarts it);
- kill-node: SIGKILL of a whole node (supervisor and actors), restarted 0.5-3 s later; skipped
  unless every node answers, so at most one node is down and a quorum always exists;
- sigstop-leader: SIGSTOP of the leader's raft process for 2-4 s, past the election time-out of
  0.8-1.6 s, then SIGCONT;
- drop-connections: every client connection through the proxy of one node, or of all of them,
  is reset, and new ones are refused for 0.5-2 s (see proxy.py).

A step follows the one before after 1-4 s. After each fault the prober enqueues a small job
(with its own request id, through the proxies, from a client of its own) until one is
acknowledged; the time from the fault to that acknowledgement is the fault's time to recover.
A probe counts for a fault only if it was sent after the fault.
"""
from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
import uuid
from dataclasses import dataclass

from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError

from .cluster import Cluster
from .nodes import ACTORS
from .proxy import Proxies

KINDS = ("kill-actor", "kill-node", "sigstop-leader", "drop-connections")
WEIGHTS = (5, 2, 2, 2)
#: A fault not followed by an acknowledged probe within this long counts as not recovered.
RECOVER_LIMIT_S = 60.0


@dataclass(frozen=True)
class Step:
    """One drawn step: wait `gap_s`, then apply `kind` (the other fields are read by some kinds only)."""

    gap_s: float
    kind: str
    node: int          #: index of the node hit by kill-actor, kill-node and a one-node drop-connections
    actor: str         #: the actor kill-actor kills
    length: float      #: in [0, 1): how far into its kind's range the pause goes
    everywhere: bool   #: drop-connections on every node's proxy, not one

    def pause_s(self) -> float:
        low, high = {"kill-node": (0.5, 3.0), "sigstop-leader": (2.0, 4.0),
                     "drop-connections": (0.5, 2.0)}.get(self.kind, (0.0, 0.0))
        return low + (high - low) * self.length


def weighted_kind(u: float) -> str:
    """The kind that `u` in [0, 1) falls on when [0, 1) is cut in proportion to WEIGHTS."""
    edge = 0.0
    for kind, weight in zip(KINDS, WEIGHTS):
        edge += weight / sum(WEIGHTS)
        if u < edge:
            return kind
    return KINDS[-1]


def plan(seed: int, nodes: int):
    """The endless list of steps of `seed` for a cluster of `nodes` (a generator)."""
    rng = random.Random(seed)
    while True:
        # Six uniform draws a step, each mapped onto its range: the stream never shifts, and the
        # cluster's size changes only which node a step hits.
        gap, kind, node, actor, length, everywhere = [rng.random() for _ in range(6)]
        yield Step(gap_s=1.0 + 3.0 * gap, kind=weighted_kind(kind),
                   node=int(node * nodes), actor=ACTORS[int(actor * len(ACTORS))], length=length,
                   everywhere=everywhere < 0.5)


# ------------------------------------------------------------------ recovery
class Prober(threading.Thread):
    """After each fault, enqueues a probe job until one is acknowledged; sets the fault's `recover_s`."""

    def __init__(self, endpoints: str, queue: str):
        super().__init__(name="chaos-prober", daemon=True)
        self.client = Client(endpoints, timeout=0.5, retry_for=0)
        self.queue = queue
        self.waiting: list[dict] = []
        self.cond = threading.Condition()
        self.halt = False
        self.sent = 0
        self.tag = uuid.uuid4().hex[:8]

    def probe(self) -> float | None:
        """One enqueue with a fresh request id; the time it was sent if it was acknowledged, else None."""
        self.sent += 1
        sent = time.monotonic()
        try:
            self.client.enqueue(self.queue, {"probe": self.sent}, request_id=f"probe-{self.tag}-{self.sent}")
        except JobbieError:
            return None
        return sent

    def watch(self, event: dict):
        """Measure `event` (a fault that has just happened; its `t` is time.monotonic() at the fault)."""
        event["recover_s"] = None
        with self.cond:
            self.waiting.append(event)
            self.cond.notify()

    def run(self):
        while True:
            with self.cond:
                while not self.waiting and not self.halt:
                    self.cond.wait()
                if self.halt:
                    return
            sent = self.probe()
            now = time.monotonic()
            with self.cond:
                for event in list(self.waiting):
                    if sent is not None and event["t"] <= sent:
                        event["recover_s"] = round(now - event["t"], 3)
                        self.waiting.remove(event)
                    elif now - event["t"] > RECOVER_LIMIT_S:
                        event["unrecovered"] = True
                        self.waiting.remove(event)
            if sent is None:
                time.sleep(0.02)

    def settle(self, timeout: float):
        """Wait up to `timeout` seconds for every watched fault to be measured."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.cond:
                if not self.waiting:
                    return
            time.sleep(0.05)

    def stop(self):
        with self.cond:
            self.halt = True
            self.cond.notify()
        if self.ident is not None:  # started
            self.join(timeout=5)
        self.client.close()


def recovery_figures(events: list[dict]) -> dict:
    """Median and max time to recover over the faults of `events`, and how many never recovered."""
    faults = [e for e in events if e["kind"] in KINDS]
    times = [e["recover_s"] for e in faults if e.get("recover_s") is not None]
    return {"measured": len(times), "median_s": round(statistics.median(times), 3) if times else None,
            "max_s": max(times) if times else None,
            "unrecovered": sum(1 for e in faults if e.get("recover_s") is None)}


# ------------------------------------------------------------------ faults
class Chaos:
    """Applies the steps of `seed` to `cluster` until `seconds` have passed (in the calling thread)."""

    def __init__(self, cluster: Cluster, proxies: Proxies, seed: int, seconds: float, prober: Prober | None = None):
        self.cluster = cluster
        self.proxies = proxies
        self.steps = plan(seed, len(cluster.nodes))
        self.seconds = seconds
        self.prober = prober
        #: What happened, in order: {"at_s", "kind", "detail"} (+ "recover_s" for a fault).
        self.events: list[dict] = []
        self.counts: dict[str, int] = {}
        self.skipped = 0
        self.stopped: list[int] = []
        self.started = self.ended = time.monotonic()

    def note(self, kind: str, detail: str, at: float | None = None) -> dict:
        at = time.monotonic() if at is None else at
        event = {"at_s": round(at - self.started, 1), "kind": kind, "detail": detail, "t": at}
        self.events.append(event)
        if kind in KINDS:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if self.prober is not None:
                self.prober.watch(event)
        return event

    def kill_actor(self, step: Step) -> bool:
        node = self.cluster.nodes[step.node]
        pid = node.live_actor_pid(step.actor) if node.alive else None
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        self.note("kill-actor", f"{node.node_id} {step.actor} (pid {pid})")
        return True

    def kill_node(self, step: Step) -> bool:
        if any(n.try_status() is None for n in self.cluster.nodes):
            return False  # one node down at a time: a quorum must remain
        node = self.cluster.nodes[step.node]
        node.kill9()
        self.note("kill-node", node.node_id, at=node.killed_at)
        time.sleep(step.pause_s())
        self.cluster.restart(node, wait=False)
        self.note("restart-node", node.node_id)
        return True

    def stop_leader(self, step: Step) -> bool:
        leader = self.cluster.leader_view()
        pid = leader.live_actor_pid("raft") if leader is not None else None
        if pid is None:
            return False
        pause = step.pause_s()
        os.kill(pid, signal.SIGSTOP)
        self.stopped.append(pid)
        self.note("sigstop-leader", f"{leader.node_id} raft (pid {pid}) for {pause:.1f} s")
        try:
            time.sleep(pause)
        finally:
            os.kill(pid, signal.SIGCONT)
            self.stopped.remove(pid)
        return True

    def drop_connections(self, step: Step) -> bool:
        names = [n.node_id for n in self.cluster.nodes] if step.everywhere else [self.cluster.nodes[step.node].node_id]
        refuse = step.pause_s()
        cut = self.proxies.cut(names, refuse)
        where = "every node" if step.everywhere else names[0]
        self.note("drop-connections", f"{where}: {cut} connections reset, new ones refused for {refuse:.1f} s")
        return True

    def apply(self, step: Step):
        act = {"kill-actor": self.kill_actor, "kill-node": self.kill_node, "sigstop-leader": self.stop_leader,
               "drop-connections": self.drop_connections}[step.kind]
        if not act(step):
            self.skipped += 1

    def run(self):
        """Draw and apply steps until `seconds` have passed; leave every node running and no process stopped."""
        self.started = time.monotonic()
        try:
            for step in self.steps:
                left = self.seconds - (time.monotonic() - self.started)
                if left <= step.gap_s:
                    time.sleep(max(0.0, left))
                    break
                time.sleep(step.gap_s)
                self.apply(step)
        finally:
            self.resume_stopped()
            self.ended = time.monotonic()
        for node in self.cluster.nodes:
            if not node.alive:
                self.cluster.restart(node, wait=False)
                self.note("restart-node", node.node_id)

    def resume_stopped(self):
        """SIGCONT every process a fault stopped (safe to call more than once)."""
        for pid in list(self.stopped):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.stopped.remove(pid)

    def schedule(self) -> list[dict]:
        """The events as plain data: at_s, kind, detail, and recover_s for a fault (None: not recovered)."""
        return [{k: v for k, v in e.items() if k not in ("t", "unrecovered")} for e in self.events]
