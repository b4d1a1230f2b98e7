"""/metrics: the node's figures in the Prometheus text format.

A scrape asks the gateway what a client could ask (cluster_status, list_queues, usage_summary,
list_budgets) and turns the answers into metric families; the http actor's own request counts
and latencies come from prometheus_client's registry in this process. `families(snapshot)` is
pure: the snapshot is the dict of those answers, so the names and labels are unit-tested.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jobbie.transport.ops_search import STATE_NAMES

#: This process's own HTTP figures.
HTTP_REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter("jobbie_http_requests", "HTTP requests answered by the http actor.",
                        ("route", "method", "status"), registry=HTTP_REGISTRY)
HTTP_LATENCY = Histogram("jobbie_http_request_duration_seconds", "Time to answer an HTTP request.",
                         ("route", "method"), registry=HTTP_REGISTRY,
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

USD_PER_MICRO = 1e-6


def _gauge(name, doc, labels=()):
    return GaugeMetricFamily(name, doc, labels=list(labels))


def families(snap: dict) -> list:
    """Metric families from one scrape's answers (each may be None when its op was refused)."""
    out = []
    status = snap.get("cluster_status")
    up = _gauge("jobbie_up", "1 when the gateway answered this scrape.")
    up.add_metric([], 1.0 if status else 0.0)
    out.append(up)
    if status:
        out.extend(_cluster(status))
    queues = snap.get("list_queues")
    if queues is not None:
        out.extend(_queues(queues["queues"]))
    usage = snap.get("usage_summary")
    if usage is not None:
        out.extend(_usage(usage))
    budgets = snap.get("list_budgets")
    if budgets is not None:
        out.extend(_budgets(budgets))
    errors = _gauge("jobbie_scrape_source_up", "1 when the op behind a group of metrics answered this scrape.",
                    ("source",))
    for source in ("cluster_status", "list_queues", "usage_summary", "list_budgets"):
        errors.add_metric([source], 0.0 if snap.get(source) is None else 1.0)
    out.append(errors)
    return out


def _cluster(s: dict) -> list:
    out = []
    role = _gauge("jobbie_raft_role", "1 for this node's current raft role.", ("role",))
    for name in ("leader", "follower", "candidate", "unknown"):
        role.add_metric([name], 1.0 if s.get("role") == name else 0.0)
    out.append(role)
    for key, doc in (("term", "Raft term."), ("commit_index", "Raft commit index."),
                     ("applied_index", "Raft index applied to LMDB.")):
        g = _gauge(f"jobbie_raft_{key}", doc)
        g.add_metric([], float(s.get(key) or 0))
        out.append(g)
    leader = _gauge("jobbie_raft_leader_known", "1 when this node knows a raft leader.")
    leader.add_metric([], 1.0 if s.get("leader") else 0.0)
    out.append(leader)
    restarts = CounterMetricFamily("jobbie_actor_restarts", "Restarts of each actor process since the node started.",
                                   labels=["actor"])
    alive = _gauge("jobbie_actor_up", "1 when the actor process is running.", ("actor",))
    for row in s.get("actors") or ():
        restarts.add_metric([row["name"]], float(row.get("restarts") or 0))
        alive.add_metric([row["name"]], 1.0 if row.get("alive") else 0.0)
    out += [restarts, alive]
    gateway = s.get("gateway") or {}
    answers = CounterMetricFamily("jobbie_ops", "Requests answered by this node's gateway, by op and code "
                                  "(OK or the error code).", labels=["op", "code"])
    for op, code, n in gateway.get("answers") or ():
        answers.add_metric([op, code], float(n))
    out.append(answers)
    for key in ("invalid", "timeouts"):
        c = CounterMetricFamily(f"jobbie_gateway_{key}", f"Gateway requests: {key}.")
        c.add_metric([], float(gateway.get(key) or 0))
        out.append(c)
    for key in ("pending", "parked_fetches"):
        g = _gauge(f"jobbie_gateway_{key}", f"Gateway requests now: {key.replace('_', ' ')}.")
        g.add_metric([], float(gateway.get(key) or 0))
        out.append(g)
    pipeline = s.get("pipeline") or {}
    admission = pipeline.get("admission") or {}
    rejected = CounterMetricFamily("jobbie_admission_rejected", "Requests admission refused (overloaded).")
    rejected.add_metric([], float(admission.get("rejected") or 0))
    inflight = _gauge("jobbie_admission_in_flight", "Ops admitted and not yet applied.")
    inflight.add_metric([], float(admission.get("in_flight") or 0))
    out += [rejected, inflight]
    latency = _gauge("jobbie_pipeline_latency_ms", "Recent latency of a pipeline stage (last 4096 samples).",
                     ("stage", "quantile"))
    for stage in ("queue_wait_ms", "apply_ms", "entry_commit_ms"):
        window = pipeline.get(stage) or {}
        for q, key in (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")):
            if window.get(key) is not None:
                latency.add_metric([stage.removesuffix("_ms"), q], float(window[key]))
    out.append(latency)
    disk = s.get("disk") or {}
    if disk.get("free_bytes") is not None:
        free = _gauge("jobbie_disk_free_bytes", "Free space of the data dir's filesystem.")
        free.add_metric([], float(disk["free_bytes"]))
        low = _gauge("jobbie_disk_low", "1 while free space is under the reserve and writes are refused (disk_full).")
        low.add_metric([], 1.0 if disk.get("low") else 0.0)
        out += [free, low]
    for view in ("mirror", "usage"):
        report = s.get(view) or {}
        lag = _gauge(f"jobbie_{view}_lag_entries", f"Raft entries applied to LMDB and not yet to the {view} view.")
        lag.add_metric([], float(report.get("lag") or 0))
        stale = _gauge(f"jobbie_{view}_up", f"1 when the {view} actor reported recently.")
        stale.add_metric([], 0.0 if (not report or report.get("stale")) else 1.0)
        out += [lag, stale]
    return out


def _queues(rows: list) -> list:
    jobs = _gauge("jobbie_jobs", "Jobs by queue and state.", ("queue", "state"))
    paused = _gauge("jobbie_queue_paused", "1 when the queue is paused.", ("queue",))
    for row in rows:
        for state in STATE_NAMES:
            jobs.add_metric([row["name"], state], float(row.get(state) or 0))
        paused.add_metric([row["name"]], 1.0 if row.get("paused") else 0.0)
    return [jobs, paused]


def _usage(summary: dict) -> list:
    cost = CounterMetricFamily("jobbie_cost_usd", "Spend reported or priced, by queue and model.",
                               labels=["queue", "model"])
    tokens = CounterMetricFamily("jobbie_tokens", "Tokens used, by queue, model and kind.",
                                 labels=["queue", "model", "kind"])
    for group in summary.get("groups") or ():
        key = group.get("key") or {}
        labels = [str(key.get("queue") or ""), str(key.get("model") or "")]
        cost.add_metric(labels, float(group.get("cost_usd") or 0.0))
        for kind in ("input", "output", "cache_read", "cache_write"):
            tokens.add_metric(labels + [kind], float(group.get(f"{kind}_tokens") or 0))
    return [cost, tokens]


def _budgets(answer: dict) -> list:
    fams = {name: _gauge(f"jobbie_budget_{name}_usd", f"Budget {name} in USD, in its current window.", ("budget",))
            for name in ("limit", "spent", "reserved", "remaining")}
    for budget in answer.get("budgets") or ():
        for name, fam in fams.items():
            value = budget.get(f"{name}_usd")
            if value is not None:
                fam.add_metric([str(budget.get("id"))], float(value))
    return list(fams.values())


class _Snapshot:
    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        return iter(self.fams)


def exposition(snap: dict) -> bytes:
    """The whole /metrics body: the node's figures, then this process's HTTP figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families(snap)))
    return generate_latest(registry) + generate_latest(HTTP_REGISTRY)
