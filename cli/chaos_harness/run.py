"""One chaos run over a started cluster: load, faults, drain, then the figures and the invariants.

The run, in order: proxies in front of the nodes' client ports; producers, workers and the
recovery prober through them; faults for `seconds`; the producers stop; every node is brought
up; the workers drain the queue; the history is read back from the leader and every replica is
digested. The invariants (`broken`):

- lost: every acknowledged enqueue exists;
- not completed: every acknowledged enqueue completed once the workers drained the queue;
- acked, not completed: every acknowledged ack left its job `completed`;
- active past lease: no job is active past its lease plus LEASE_GRACE_MS;
- digests: every node reaches the same applied index with the same digest, and the `digest` op
  answers what the harness's own read of each node's LMDB says;
- unrecovered: after every fault a probe write was acknowledged within RECOVER_LIMIT_S.

Executions beyond one per job are counted (a fault can make a job run twice: delivery is at
least once), never required to be zero.
"""
from __future__ import annotations

import threading
import time

from jobbie.transport.client import Client
from jobbie.transport.errors import JobbieError

from .cluster import Cluster, HarnessError, ReplicasDiffer, digest_of_op_view
from .faults import KINDS, RECOVER_LIMIT_S, Chaos, Prober, recovery_figures
from .load import LEASE_GRACE_MS, Producer, Workers, get_jobs
from .nodes import wait_for
from .proxy import Proxies

QUEUE = "chaos"
PROBE_QUEUE = "chaos-probe"
#: How long the workers get to complete every acknowledged enqueue after the faults.
DRAIN_LIMIT_S = 120.0
#: Ids shown per broken invariant (the counts are whole).
EXAMPLES = 5


class ChaosRun:
    """Load and faults for `seconds` on `cluster` (already built, not yet started), then the checks.

    `on_progress(figures)` is called every `progress_every_s` seconds from a thread of its own
    with {"phase", "elapsed_s", "faults", "enqueues_acknowledged", "acks_acknowledged"}.
    """

    def __init__(self, cluster: Cluster, seed: int, seconds: float, producers: int = 2, workers: int = 2,
                 on_progress=None, progress_every_s: float = 5.0):
        self.cluster = cluster
        self.seed = seed
        self.seconds = seconds
        self.producer_count = producers
        self.worker_count = workers
        self.on_progress = on_progress
        self.progress_every_s = progress_every_s
        self.phase = "starting the cluster"
        self.proxies: Proxies | None = None
        self.producers: list[Producer] = []
        self.workers: Workers | None = None
        self.prober: Prober | None = None
        self.chaos: Chaos | None = None
        self.started = time.monotonic()
        self._done = threading.Event()
        self._reporter: threading.Thread | None = None

    # ------------------------------------------------------------ progress
    def progress(self) -> dict:
        return {"phase": self.phase, "elapsed_s": round(time.monotonic() - self.started, 1),
                "faults": sum(self.chaos.counts.values()) if self.chaos else 0,
                "enqueues_acknowledged": sum(len(p.acked) for p in self.producers),
                "acks_acknowledged": self.workers.acked_count() if self.workers else 0}

    def _report(self):
        while not self._done.wait(self.progress_every_s):
            self.on_progress(self.progress())

    # ------------------------------------------------------------ the run
    def run(self) -> dict:
        """Start the cluster, run load and faults, check; returns the figures. Stops the load, not the cluster."""
        self.started = time.monotonic()
        if self.on_progress is not None:
            self._reporter = threading.Thread(target=self._report, name="chaos-progress", daemon=True)
            self._reporter.start()
        try:
            self.cluster.start(timeout=60)
            self.proxies = Proxies({n.node_id: n.port for n in self.cluster.nodes})
            endpoints = self.proxies.endpoints
            self.prober = Prober(endpoints, PROBE_QUEUE)
            self.producers = [Producer(endpoints, f"p{i}", QUEUE) for i in range(self.producer_count)]
            self.workers = Workers(endpoints, self.worker_count, self.seed, QUEUE)
            self.chaos = Chaos(self.cluster, self.proxies, self.seed, self.seconds, self.prober)
            self.prober.start()
            for p in self.producers:
                p.start()
            self.workers.start()
            self.phase = "faults"
            self.chaos.run()
            self.phase = "stopping the producers"
            for p in self.producers:
                p.stop()
            figures = self.check()
        except BaseException:
            self.close(now=True)
            raise
        self.close()
        return figures

    def check(self) -> dict:
        cluster, workers, chaos = self.cluster, self.workers, self.chaos
        self.phase = "waiting for every node"
        for node in cluster.nodes:
            node.wait_up(timeout=60)
        self.prober.settle(RECOVER_LIMIT_S)
        self.prober.stop()
        enqueued = {job_id for p in self.producers for job_id in p.acked}
        leader = cluster.wait_leader(timeout=60)
        reader = cluster.client([leader], timeout=5.0, retry_for=30.0)

        def read(ids) -> dict:
            """job_id -> record (None when the leader has no such job)."""
            return {j: r.get("ok") for j, r in get_jobs(reader, sorted(ids)).items()}

        # The workers drain the queue; only the jobs not yet seen completed are read again.
        self.phase = "draining"
        open_ids = set(enqueued)

        def drained():
            done = {j for j, r in read(open_ids).items() if (r or {}).get("state") == "completed"}
            open_ids.difference_update(done)
            return not open_ids

        try:
            wait_for(drained, DRAIN_LIMIT_S, interval=0.5, message="every acknowledged enqueue to complete")
        except HarnessError:
            pass  # the figures say which did not
        finally:
            workers.stop()
        self.phase = "checking"
        acked = workers.acked
        jobs = read(enqueued | acked)
        now_ms = int(time.time() * 1000)
        lost = sorted(j for j in enqueued if jobs.get(j) is None)
        figures = {
            "seed": self.seed, "seconds": round(chaos.ended - chaos.started, 1), "nodes": len(cluster.nodes),
            "producers": self.producer_count, "workers": self.worker_count,
            "faults": {k: chaos.counts.get(k, 0) for k in KINDS}, "faults_total": sum(chaos.counts.values()),
            "skipped_steps": chaos.skipped,
            "enqueues_acknowledged": len(enqueued), "acks_acknowledged": len(acked),
            "lost": len(lost), "lost_ids": lost[:EXAMPLES],
            "not_completed": len([j for j in enqueued if jobs.get(j) and jobs[j]["state"] != "completed"]),
            "acked_not_completed": sorted(j for j in acked if (jobs.get(j) or {}).get("state") != "completed"),
            "duplicate_executions": workers.duplicate_executions(),
            "retried_on_purpose": workers.retried_on_purpose(),
            "active_past_lease": sorted(j["id"] for j in jobs.values() if j and j["state"] == "active"
                                        and j["lease_expires_at"] + LEASE_GRACE_MS < now_ms),
            "longest_enqueue_s": round(max((p.max_latency for p in self.producers), default=0.0), 2),
            "producer_errors": [e for p in self.producers for e in p.errors][:EXAMPLES],
            "time_to_recover": recovery_figures(chaos.events),
        }
        figures["not_completed_ids"] = sorted(j for j in enqueued if jobs.get(j) and
                                              jobs[j]["state"] != "completed")[:EXAMPLES]
        figures.update(self.compare_replicas())
        figures["schedule"] = chaos.schedule()
        figures["run_seconds"] = round(time.monotonic() - self.started, 1)
        figures["broken"] = broken(figures)
        figures["ok"] = not figures["broken"]
        return figures

    def compare_replicas(self) -> dict:
        """digests (the distinct ones), applied_index, and what went wrong ("replicas": None if nothing)."""
        try:
            converged = self.cluster.wait_converged(timeout=60)
        except ReplicasDiffer as exc:
            return {"digests": [], "applied_index": None, "replicas": str(exc)}
        except HarnessError as exc:
            return {"digests": [], "applied_index": None, "replicas": f"no common applied index: {exc}"}
        problems = []
        for node in self.cluster.nodes:
            try:
                with Client(node.endpoint, timeout=30.0, retry_for=5.0) as client:
                    answer = client.call("digest")
            except JobbieError as exc:
                problems.append(f"{node.node_id}: the digest op failed: {exc}")
                continue
            index, direct = digest_of_op_view(node)
            if answer["applied_index"] == index and answer["digest"] != direct:
                problems.append(f"{node.node_id}: the digest op disagrees with its store")
        return {"digests": sorted({d for _, d in converged.values()}),
                "applied_index": next(iter(converged.values()))[0],
                "replicas": "; ".join(problems) or None}

    def close(self, now: bool = False):
        """Stop the load, the prober and the proxies and resume stopped processes (safe to call again).
        `now`: do not wait for calls in flight (on Ctrl-C)."""
        self._done.set()
        if self.chaos is not None:
            self.chaos.resume_stopped()
        for p in self.producers:
            p.stop(now=now)
        if self.workers is not None:
            self.workers.stop(now=now)
        if self.prober is not None:
            self.prober.stop()
        if self.proxies is not None:
            self.proxies.close()


def broken(figures: dict) -> list[str]:
    """One line per invariant the figures break (empty: every invariant holds)."""
    out = []

    def ids(key):
        shown = figures.get(key) or []
        return f" (e.g. {', '.join(shown[:EXAMPLES])})" if shown else ""

    if figures["lost"]:
        out.append(f"lost: {figures['lost']} acknowledged enqueues do not exist{ids('lost_ids')}")
    if figures["not_completed"]:
        out.append(f"not completed: {figures['not_completed']} acknowledged enqueues did not complete within "
                   f"{DRAIN_LIMIT_S:g} s of the faults' end{ids('not_completed_ids')}")
    if figures["acked_not_completed"]:
        out.append(f"acked, not completed: {len(figures['acked_not_completed'])} jobs whose ack was acknowledged "
                   f"are not completed{ids('acked_not_completed')}")
    if figures["active_past_lease"]:
        out.append(f"active past lease: {len(figures['active_past_lease'])} jobs are active {LEASE_GRACE_MS} ms "
                   f"past their lease{ids('active_past_lease')}")
    if figures["replicas"]:
        out.append(f"digests: {figures['replicas']}")
    elif len(figures["digests"]) != 1:
        out.append(f"digests: {len(figures['digests'])} different replica digests at one applied index")
    unrecovered = figures["time_to_recover"]["unrecovered"]
    if unrecovered:
        out.append(f"unrecovered: after {unrecovered} faults no probe write was acknowledged within "
                   f"{RECOVER_LIMIT_S:g} s")
    return out
