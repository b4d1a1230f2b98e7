"""bench/run.py's arithmetic: medians and the mirror's cost from on/off pairs (no node is started)."""
from __future__ import annotations

import os
import time

import pytest

from jobbie.bench import run as bench_run
from jobbie.bench.run import cost_line, medians, mirror_cost


def run(scenario, repeat, mirror, ops, p99=5.0, cpu=None):
    return {"scenario": scenario, "concurrency": 10, "repeat": repeat, "mirror": mirror, "ops_per_s": ops,
            "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": p99, "max_ms": 9.0, "errors": {}, "requests": int(ops),
            "hung": 0, **({"cpu_us_per_op": cpu} if cpu else {})}


def test_mirror_cost_pairs_runs_of_the_same_repeat():
    # Given three repeats, each an on run and an off run; the machine is slower in repeat 1
    records = [
        run("unary", 0, True, 900, cpu={"raft": 60, "gateway": 30, "mirror": 10}),
        run("unary", 0, False, 1000),
        run("unary", 1, False, 500),
        run("unary", 1, True, 480, cpu={"raft": 70, "gateway": 25, "mirror": 5}),
        run("unary", 2, True, 950, cpu={"raft": 60, "gateway": 32, "mirror": 8}),
        run("unary", 2, False, 1000),
    ]
    [cost] = mirror_cost(medians(records), records)
    # Then the ratio of medians, each pair's ratio (sorted) and the mirror's median CPU share
    assert cost["on_over_off"] == pytest.approx(900 / 1000)
    assert cost["pair_ratios"] == pytest.approx([0.90, 0.95, 0.96])
    assert cost["pair_median"] == pytest.approx(0.95)
    assert cost["mirror_cpu_share"] == pytest.approx(0.08)
    line = cost_line(cost)
    assert line.startswith("mirror on/off: unary c10 0.900 (900 / 1,000 ops/s;")
    assert "pairs: median 0.950, 0.900-0.960 over 3" in line and "mirror 8.0% of the node's CPU" in line


def test_mirror_cost_without_pairs_or_cpu_figures():
    # Given a remote node (no CPU figures) and an off run whose on run is missing
    records = [run("lifecycle", 0, True, 300), run("lifecycle", 0, False, 400), run("lifecycle", 1, False, 420)]
    [cost] = mirror_cost(medians(records), records)
    # Then the one complete pair counts, and no CPU share is claimed
    assert cost["pair_ratios"] == pytest.approx([0.75]) and cost["mirror_cpu_share"] is None
    assert "of the node's CPU" not in cost_line(cost)
    # And a run with the mirror only on or only off has no cost line at all
    assert mirror_cost(medians(records[:1]), records[:1]) == []


def test_counters_read_this_process_and_per_op_divides_by_units():
    # Given this very process, read twice around some work
    me = {"self": os.getpid()}
    before = bench_run.counters(me)
    sum(i * i for i in range(200_000))
    time.sleep(0.01)  # at least one voluntary switch
    after = bench_run.counters(me)
    # When the readings are turned into per-op figures for 10 ops
    figures = bench_run.per_op(before, after, 10)
    # Then CPU and voluntary switches grew, and the node total is the sum over actors
    assert after["self"][0] >= before["self"][0]
    assert after["self"][1] > before["self"][1]
    assert figures["server_cpu_us_per_op"] == figures["cpu_us_per_op"]["self"]
    assert figures["csw_per_op"] > 0


def test_counters_skip_processes_that_are_gone():
    assert bench_run.counters({"ghost": 2**22 + 12345}) == {}


def test_markdown_shows_cpu_and_context_switches():
    row = {"scenario": "unary", "concurrency": 10, "mirror": True, "ops_per_s": 1000.0, "p50_ms": 1.0,
           "p90_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0, "errors": {}, "error_share": 0.0,
           "server_cpu_us_per_op": 212.4, "csw_per_op": 3.1, "icsw_per_op": 0.25}
    line = bench_run.markdown([row]).splitlines()[-1]
    assert "| 212 | 3.10 + 0.25 |" in line


def test_http_actor_cost_pairs_runs_like_the_mirror():
    # Given runs with the http actor on and off (the mirror on in both)
    records = [dict(run("unary", r, True, ops, cpu={"raft": 60, "gateway": 30, "http": 1}), http=on)
               for r, on, ops in ((0, True, 990), (0, False, 1000), (1, False, 800), (1, True, 780))]
    [cost] = mirror_cost(medians(records), records, "http")
    # Then the cost line is about the http actor, not the mirror
    assert cost["toggle"] == "http" and cost["pair_ratios"] == pytest.approx([0.975, 0.99])
    assert cost_line(cost).startswith("http on/off: unary c10")
    assert mirror_cost(medians(records), records) == []  # the mirror was never off


def test_an_unknown_scenario_is_one_line_before_anything_starts():
    with pytest.raises(SystemExit) as info:
        bench_run.main(scenarios="unary,nope")
    assert "unknown scenario nope" in str(info.value) and "http-unary" in str(info.value)
    with pytest.raises(SystemExit):
        bench_run.main(scenarios="unary", mirror="both", http="both")


def test_curve_runs_are_their_own_rows_with_cpu_on_and_off():
    # Given runs with CURVE on and off, each with the node's CPU per op
    records = [dict(run("lifecycle", r, True, ops), curve=on, server_cpu_us_per_op=cpu)
               for r, on, ops, cpu in ((0, True, 900, 250.0), (0, False, 1000, 200.0), (1, False, 980, 210.0),
                                       (1, True, 890, 260.0))]
    rows = medians(records)
    # Then on and off are separate rows, the on row labelled
    assert sorted(r["curve"] for r in rows) == [False, True]
    assert any(line.startswith("| lifecycle, curve on |") for line in bench_run.markdown(rows).splitlines())
    # And the cost line is about CURVE and quotes the CPU per op of both
    [cost] = mirror_cost(rows, records, "curve")
    line = cost_line(cost)
    assert line.startswith("curve on/off: lifecycle c10") and line.endswith("server CPU 255 / 205 us/op")
    with pytest.raises(SystemExit, match="one thing at a time"):
        bench_run.main(scenarios="unary", auth="both", curve="both")
