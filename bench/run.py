"""Runs scenarios, sweeps and repeats; reports medians as text, JSON lines and markdown."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from jobbie.transport.client import Client
from jobbie.transport.curve import SERVER_KEY_ENV

from . import scenarios as S
from .driver import run, run_groups
from .http_driver import run_http
from .worker_driver import run_worker
from .servers import ceiling_server, jobbie_node, wait_mirrored


def percentile(sorted_values, q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


def summarize(raw: dict) -> dict:
    lat = raw["latencies"]
    return {"ops_per_s": raw["units"] / raw["duration_s"], "requests": raw["requests"],
            "p50_ms": percentile(lat, 0.50) * 1000, "p90_ms": percentile(lat, 0.90) * 1000,
            "p99_ms": percentile(lat, 0.99) * 1000, "max_ms": (lat[-1] * 1000) if lat else float("nan"),
            "errors": raw["errors"], "hung": raw["hung"]}


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__), timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"commit": commit, "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(terse=True)}


def prefill(endpoint: str, jobs: int, queue: str = S.QUEUE, agent: bool = False):
    with Client(endpoint, timeout=30, retry_for=60) as client:
        one = {"queue": queue, "payload": {"data": "x" * 48}}
        if agent:
            one["agent"] = S.AGENT
        batch = [one] * 1000
        for _ in range(max(1, jobs // 1000)):
            client.call("enqueue_batch", jobs=batch)


def actor_pids(endpoint: str) -> dict:
    """{actor name: pid} of a node (its status), for reading the actors' CPU time."""
    try:
        with Client(endpoint, timeout=5) as client:
            return {a["name"]: a["pid"] for a in client.status().get("actors") or () if a.get("pid")}
    except Exception:  # an old or remote node: no CPU figures
        return {}


def counters(pids: dict) -> dict:
    """{actor name: (user + system CPU seconds, voluntary, involuntary context switches)} so far, of
    the processes readable here (same machine). Context switches are summed over the threads alive
    now; CPU time covers every thread the process ever had."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            voluntary = involuntary = 0
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            voluntary += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            involuntary += int(line.split()[1])
        except OSError:
            continue
        out[name] = ((int(fields[11]) + int(fields[12])) / tick, voluntary, involuntary)
    return out


def per_op(before: dict, after: dict, units: float) -> dict:
    """CPU and context switches per op (or job) between two `counters` readings, per actor and for
    the whole node."""
    names = [n for n in after if n in before]
    cpu = {n: round(1e6 * (after[n][0] - before[n][0]) / units, 1) for n in names}
    return {"cpu_us_per_op": cpu,
            "server_cpu_us_per_op": round(sum(cpu.values()), 1),
            "csw_per_op": round(sum(after[n][1] - before[n][1] for n in names) / units, 2),
            "icsw_per_op": round(sum(after[n][2] - before[n][2] for n in names) / units, 2)}


def set_budgets(endpoint: str):
    """Two budget layers that match every bench job and never run out (a global one and one for
    the bench queues' namespace), so every enqueue, fetch and ack takes the budget paths."""
    with Client(endpoint, timeout=5) as client:
        client.set_budget("bench-global", scope="global", limit_usd=1e9, window="day")
        client.set_budget("bench-namespace", scope="namespace", target=S.QUEUE.partition(".")[0],
                          limit_usd=1e9, limit_tokens=2**62, window="hours", hours=24)


class Bench:
    def __init__(self, duration: float, repeats: int, durable: bool, server: str | None, progress,
                 mirror: bool = True, usage: bool = False, budgets: bool = False, agent: bool = False,
                 http: bool = False, auth: bool = False, curve: bool = False):
        self.auth = auth
        self.curve = curve
        self.http = http
        self.usage = usage
        self.budgets = budgets
        self.agent = agent
        self.mirror = mirror
        self.duration = duration
        self.repeats = repeats
        self.durable = durable
        self.server = server
        self.progress = progress
        self.records: list[dict] = []
        self.meta = machine()

    def _node(self, http: bool = False):
        if self.server:
            class External:
                endpoint = self.server
                curve_server_key = os.environ.get(SERVER_KEY_ENV) or None

                def __enter__(s):
                    return s

                def __exit__(s, *exc):
                    return None
            return External()
        return jobbie_node(durable=self.durable, mirror=self.mirror, http=self.http or http, auth=self.auth,
                           curve=self.curve)

    def record(self, scenario: str, concurrency: int, repeat: int, result: dict, **extra):
        rec = {"scenario": scenario, "concurrency": concurrency, "repeat": repeat, **result, **extra,
               "durable": self.durable, "mirror": self.mirror, "http": self.http, "auth": self.auth, "curve": self.curve, "usage": self.usage, "budgets": self.budgets, "agent": self.agent, "duration_s": self.duration, **self.meta,
               "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self.records.append(rec)
        errs = ", ".join(f"{k} {v}" for k, v in sorted(result["errors"].items())) or "no errors"
        ratio = f", {rec['ratio_to_ceiling']:.2f}x ceiling" if rec.get("ratio_to_ceiling") else ""
        if rec.get("server_cpu_us_per_op") is not None:
            ratio += (f", server {rec['server_cpu_us_per_op']:.0f} us/op, "
                      f"{rec['csw_per_op']:.2f} + {rec['icsw_per_op']:.2f} ctx sw/op")
        self.progress(f"{scenario:<10} c{concurrency:<4} run {repeat + 1}/{self.repeats}: "
                      f"{result['ops_per_s']:>10,.0f}/s  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
                      f"  max {result['max_ms']:.1f} ms  ({errs}{ratio})")
        return rec

    def ceiling(self, concurrency: int, repeat: int) -> float:
        with ceiling_server() as echo:
            result = summarize(run(echo.endpoint, S.Unary(), concurrency, self.duration))
        self.record("ceiling", concurrency, repeat, result)
        return result["ops_per_s"]

    def scenario(self, name: str, concurrency: int, repeat: int, ceiling: float | None = None,
                 batch_size: int = 1000, work_ms: float = 0.0):
        with self._node(http=name == "http-unary") as node:
            if self.budgets:
                set_budgets(node.endpoint)
            if name == "http-unary" and not getattr(node, "http_url", None):
                raise ValueError("http-unary needs a node started here (not --server), with its http actor")
            workload = None
            if name in ("unary", "http-unary"):
                workload = S.Unary(agent=self.agent)
            elif name == "batch":
                workload = S.Batch(batch_size)
            elif name == "lifecycle":
                prefill(node.endpoint, jobs=max(20_000, int(self.duration * 12_000)), agent=self.agent)
                workload = S.Lifecycle(work_ms, usage=self.usage, agent=self.agent)
            elif name == "worker":
                prefill(node.endpoint, jobs=max(20_000, int(self.duration * 20_000)))
            elif name == "mixed":
                workload = S.Mixed(work_ms=work_ms)
            else:
                raise ValueError(f"unknown scenario {name!r}")
            if self.mirror and name in ("lifecycle", "worker"):
                with Client(node.endpoint, timeout=5) as client:
                    wait_mirrored(client, timeout=60.0)  # the prefill's rows are written before the clock starts
            pids = actor_pids(node.endpoint) if not self.server else {}
            before = counters(pids)
            if name == "http-unary":
                result = summarize(run_http(node.http_url, concurrency, self.duration))
            elif name == "worker":
                result = summarize(run_worker(node.endpoint, concurrency, self.duration, work_ms,
                                              curve_server_key=node.curve_server_key))
            else:
                result = summarize(run(node.endpoint, workload, concurrency, self.duration,
                                       curve_server_key=node.curve_server_key))
            if pids:
                time.sleep(0.3)  # the mirror writes the run's last changes (it takes them in every 100 ms)
                result.update(per_op(before, counters(pids), max(1.0, result["ops_per_s"] * self.duration)))
        extra = {}
        if ceiling and name in ("unary", "http-unary"):
            extra["ceiling_ops_per_s"] = ceiling
            extra["ratio_to_ceiling"] = result["ops_per_s"] / ceiling
        return self.record(name, concurrency, repeat, result, **extra)

    def fairness(self, repeat: int, flood: int = 100):
        with self._node() as node:
            alone = summarize(run(node.endpoint, S.Unary(client_key="light", queue="light"), 1, self.duration,
                                  curve_server_key=node.curve_server_key))
        with self._node() as node:
            flooded, light = (summarize(r) for r in run_groups(
                node.endpoint, [(S.Unary(client_key="flood", queue="flood"), flood),
                                (S.Unary(client_key="light", queue="light"), 1)], self.duration,
                curve_server_key=node.curve_server_key))
        ratio = light["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] else float("nan")
        self.record("fair-alone", 1, repeat, alone)
        self.record("fair-flood", flood, repeat, flooded)
        return self.record("fair-light", 1, repeat, light, p99_ratio_to_alone=ratio)


SCENARIOS = ("unary", "batch", "lifecycle", "mixed", "fairness", "http-unary", "worker")


def medians(records: list[dict]) -> list[dict]:
    groups: dict[tuple, list] = {}
    for r in records:
        # The ceiling does not depend on the node's mirror.
        mirror = None if r["scenario"] == "ceiling" else r.get("mirror")
        http = None if r["scenario"] == "ceiling" else bool(r.get("http"))
        auth = None if r["scenario"] == "ceiling" else bool(r.get("auth"))
        curve_on = None if r["scenario"] == "ceiling" else bool(r.get("curve"))
        groups.setdefault((r["scenario"], r["concurrency"], mirror, http, auth, curve_on), []).append(r)
    out = []
    for (scenario, concurrency, mirror, http, auth, curve_on), rs in groups.items():
        row = {"scenario": scenario, "concurrency": concurrency, "mirror": mirror, "http": http, "auth": auth,
               "curve": curve_on, "runs": len(rs)}
        for key in ("ops_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "ratio_to_ceiling", "p99_ratio_to_alone",
                    "server_cpu_us_per_op", "csw_per_op", "icsw_per_op"):
            values = [r[key] for r in rs if r.get(key) is not None]
            if values:
                row[key] = statistics.median(values)
        errors: dict[str, int] = {}
        for r in rs:
            for code, n in r["errors"].items():
                errors[code] = errors.get(code, 0) + n
        row["errors"] = errors
        row["error_share"] = sum(errors.values()) / max(1, sum(r["requests"] + sum(r["errors"].values())
                                                              for r in rs))
        row["hung"] = sum(r["hung"] for r in rs)
        out.append(row)
    return out


def mirror_cost(rows: list[dict], records: list[dict] = (), toggle: str = "mirror") -> list[dict]:
    """For each (scenario, clients) measured with the mirror (or `toggle`: the http actor, auth,
    curve) on and off: on ÷ off of the medians, the on ÷ off of each pair of runs (same repeat, one
    after the other, so the machine's drift hits both alike), that actor's share of the node's CPU
    in the runs with it on, and the node's CPU per op on and off (medians)."""
    by_key = {(r["scenario"], r["concurrency"], bool(r.get(toggle))): r for r in rows if r.get(toggle) is not None}
    out = []
    for (scenario, concurrency, flag), on in by_key.items():
        off = by_key.get((scenario, concurrency, False))
        if flag is True and off is not None and off["ops_per_s"]:
            runs = [r for r in records if r["scenario"] == scenario and r["concurrency"] == concurrency]
            pairs: dict = {}
            for r in runs:
                pairs.setdefault(r["repeat"], {})[bool(r.get(toggle))] = r["ops_per_s"]
            ratios = sorted(p[True] / p[False] for p in pairs.values() if p.get(True) and p.get(False))
            shares = [r["cpu_us_per_op"][toggle] / sum(r["cpu_us_per_op"].values())
                      for r in runs if r.get(toggle) and r.get("cpu_us_per_op", {}).get(toggle) is not None]
            out.append({"toggle": toggle, "scenario": scenario, "concurrency": concurrency,
                        "on_ops_per_s": on["ops_per_s"],
                        "off_ops_per_s": off["ops_per_s"], "on_over_off": on["ops_per_s"] / off["ops_per_s"],
                        "on_p99_ms": on["p99_ms"], "off_p99_ms": off["p99_ms"], "pair_ratios": ratios,
                        "pair_median": statistics.median(ratios) if ratios else None,
                        "mirror_cpu_share": statistics.median(shares) if shares else None,
                        "on_cpu_us_per_op": on.get("server_cpu_us_per_op"),
                        "off_cpu_us_per_op": off.get("server_cpu_us_per_op")})
    return out


def cost_line(c: dict) -> str:
    line = (f"{c.get('toggle', 'mirror')} on/off: {c['scenario']} c{c['concurrency']} {c['on_over_off']:.3f} "
            f"({c['on_ops_per_s']:,.0f} / {c['off_ops_per_s']:,.0f} ops/s; "
            f"p99 {c['on_p99_ms']:.2f} / {c['off_p99_ms']:.2f} ms)")
    if c.get("pair_ratios"):
        r = c["pair_ratios"]
        line += f"; pairs: median {c['pair_median']:.3f}, {r[0]:.3f}-{r[-1]:.3f} over {len(r)}"
    if c.get("mirror_cpu_share") is not None:
        line += f"; {c.get('toggle', 'mirror')} {c['mirror_cpu_share']:.1%} of the node's CPU"
    if c.get("on_cpu_us_per_op") is not None and c.get("off_cpu_us_per_op") is not None:
        line += f"; server CPU {c['on_cpu_us_per_op']:.0f} / {c['off_cpu_us_per_op']:.0f} us/op"
    return line


def markdown(rows: list[dict]) -> str:
    lines = ["| scenario | clients | ops/s (median) | p50 ms | p90 ms | p99 ms | max ms | × ceiling "
             "| server CPU µs/op | ctx sw/op (vol + invol) | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        errs = ", ".join(f"{k} {v} ({r['error_share']:.1%})" for k, v in sorted(r["errors"].items())) or "none"
        ratio = f"{r['ratio_to_ceiling']:.2f}" if r.get("ratio_to_ceiling") else ""
        if r.get("p99_ratio_to_alone"):
            ratio = f"p99 {r['p99_ratio_to_alone']:.2f}× alone"
        label = r["scenario"] + (", mirror off" if r.get("mirror") is False else "") + \
            (", http actor on" if r.get("http") and r["scenario"] != "http-unary" else "") + \
            (", auth on" if r.get("auth") else "") + (", curve on" if r.get("curve") else "")
        cpu = f"{r['server_cpu_us_per_op']:.0f}" if r.get("server_cpu_us_per_op") is not None else ""
        csw = (f"{r['csw_per_op']:.2f} + {r['icsw_per_op']:.2f}" if r.get("csw_per_op") is not None else "")
        lines.append(f"| {label} | {r['concurrency']} | {r['ops_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | {ratio} | {cpu} | {csw} | {errs} |")
    return "\n".join(lines)


def main(scenarios: str = "unary,batch,lifecycle", concurrency: str = "10", duration: float = 5.0,
         repeats: int = 3, batch_size: int = 1000, work_ms: float = 0.0, durable: bool = False,
         server: str | None = None, ceiling: bool = True, output: str = "text", json_out: str | None = None,
         markdown_out: str | None = None, mirror: bool | str = True, usage: bool = False,
         budgets: bool = False, agent: bool = False, http: bool | str = False, auth: bool | str = False,
         curve: bool | str = False):
    """Load-test a jobbie node over the wire protocol (closed loop) and report medians.

    Args:
      scenarios: Comma-separated: unary, batch, lifecycle, mixed, fairness, http-unary (enqueue over the
        http actor's JSON API, one keep-alive connection per client), worker (one real Worker with
        `concurrency` handler slots on a pre-filled queue: batched fetches and acks).
      concurrency: Comma-separated client counts to sweep, e.g. 10,50,100,200.
      duration: Seconds per run.
      repeats: Runs per (scenario, concurrency); the median is reported.
      batch_size: Jobs per enqueue_batch frame (scenario batch).
      work_ms: Simulated work between fetch and ack (lifecycle, mixed).
      durable: Start the node with --durable.
      mirror: Start the node with its mirror actor (false: --mirror=false). "both": every run twice,
        mirror on and off, alternating which goes first, and an on/off line per scenario: the mirror's
        cost, measured so that the machine's drift hits both sides alike.
      http: Start the node with its http actor (idle unless the scenario is http-unary). "both": every
        run twice, http actor on and off, alternating, and an on/off line per scenario.
      auth: Start the node with --auth and send its first admin token with every request. "both": every
        run twice, auth on and off, alternating, and an on/off line per scenario.
      curve: Start the node with --curve (every client speaks CURVE to it; the ceiling stays plaintext, so
        its ratio shows what CURVE costs). "both": every run twice, curve on and off, alternating, and an
        on/off line per scenario.
      usage: Every ack of the lifecycle scenario carries a usage map (tokens, model, cost), so runs with
        and without it show what usage accounting costs.
      budgets: Set two budgets that match every job (and never run out) before each run, so runs with and
        without them show what budget checks, reservations and charges cost.
      agent: Agent jobs instead of plain ones: unary enqueues them, lifecycle acks every fetch with
        agent_status continue (an iteration recorded and the job re-queued).
      server: Use this running node instead of starting a fresh one per run (results then accumulate state).
      ceiling: Also measure the bare ZeroMQ ROUTER echo at each concurrency, for the ratio.
      output: text or json (JSON lines of every run, then the medians).
      json_out: Also append every run as JSON lines to this file.
      markdown_out: Also write the median table (markdown) to this file.
    """
    names = [s.strip() for s in str(scenarios).split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise SystemExit(f"jobbie bench: unknown scenario {', '.join(unknown) or '(none given)'}; "
                         f"pick from {', '.join(SCENARIOS)}")
    levels = [int(c) for c in str(concurrency).split(",") if str(c).strip()]
    quiet = output == "json"
    if [mirror, http, auth, curve].count("both") > 1:
        raise SystemExit("jobbie bench: compare one thing at a time: --mirror, --http, --auth or --curve both, "
                         "not two")
    settings = {"mirror": mirror, "http": http, "auth": auth, "curve": curve}
    toggle = next((name for name, value in settings.items() if value == "both"), "mirror")
    modes = [True, False] if "both" in settings.values() else [bool(settings[toggle])]
    bench = Bench(float(duration), int(repeats), bool(durable), server,
                  progress=(lambda line: print(line, file=sys.stderr, flush=True)),
                  mirror=modes[0] if toggle == "mirror" else bool(mirror),
                  usage=bool(usage), budgets=bool(budgets), agent=bool(agent),
                  http=modes[0] if toggle == "http" else bool(http),
                  auth=modes[0] if toggle == "auth" else bool(auth),
                  curve=modes[0] if toggle == "curve" else bool(curve))
    total = len(levels) * int(repeats)
    for repeat in range(int(repeats)):
        for c in levels:
            roof = bench.ceiling(c, repeat) if ceiling and ({"unary", "http-unary"} & set(names)) else None
            for name in names:
                if name == "fairness":
                    if c == levels[0]:
                        setattr(bench, toggle, modes[0])
                        bench.fairness(repeat)
                    continue
                # With both modes, alternate which goes first so drift does not favour one.
                for flag in (modes if repeat % 2 == 0 else modes[::-1]):
                    setattr(bench, toggle, flag)
                    bench.scenario(name, c, repeat, roof, batch_size=batch_size, work_ms=work_ms)
        bench.progress(f"-- repeat {repeat + 1}/{repeats} done ({(repeat + 1) * len(levels)}/{total} sweeps)")
    rows = medians(bench.records)
    cost = mirror_cost(rows, bench.records, toggle)
    if json_out:
        with open(json_out, "a") as f:
            for r in bench.records:
                f.write(json.dumps(r) + "\n")
    table = markdown(rows)
    if markdown_out:
        with open(markdown_out, "w") as f:
            f.write(table + "\n")
    if quiet:
        for r in bench.records:
            print(json.dumps(r))
        print(json.dumps({"medians": rows, "mirror_cost": cost, "machine": bench.meta}))
    else:
        print(table)
        for c in cost:
            print(cost_line(c))
