"""bench/run.py's arithmetic: medians and the mirror's cost from on/off pairs (no node is started)."""
from __future__ import annotations

import pytest

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
