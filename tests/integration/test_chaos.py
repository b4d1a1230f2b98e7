"""A seeded chaos run: a 3-node cluster under producers and real workers, with random faults.

The run is the installed harness's (`jobbie.cli.chaos_harness.ChaosRun`, the same one `jobbie
chaos` runs): producers with request ids and library workers reach the nodes through TCP proxies;
faults drawn from the seed are kill -9 of an actor, kill -9 of a node (restarted), SIGSTOP of the
leader's raft process past the election time-out, and every client connection of one node or of
all of them reset (new ones refused for a while). At most one node is down at a time, so every
fault is one the cluster must ride through. After each fault a probe write measures the time to
recover. Afterwards the workers drain the queue and the history is checked (see the harness's
run.py for the invariants).

This test keeps its own assertions on top of the harness's invariants: enough faults and enqueues
for the run to mean something, and every kind of fault applied at least once (for the fixed seed, whose
first steps hold all four, and for long runs).

The suite runs one fixed seed for ~25 s of faults. Longer runs, with other seeds:

    JOBBIE_CHAOS_SECONDS=600 JOBBIE_CHAOS_SEEDS=11,12,13 python -m pytest tests/integration/test_chaos.py -s

or `jobbie chaos --seconds 600 --seed 11`. A failure prints its seed and the fault schedule; the
same seed replays the same schedule (the timing of a real machine still differs from run to run).
"""
from __future__ import annotations

import os

import pytest

from jobbie.cli.chaos import render_figures
from jobbie.cli.chaos_harness import ChaosRun
from jobbie.cli.chaos_harness.faults import KINDS

from .cluster import make_cluster  # noqa: F401 (a fixture)

SECONDS = float(os.environ.get("JOBBIE_CHAOS_SECONDS", "25"))
#: The suite's seed: its first five steps hold all four kinds of fault.
DEFAULT_SEED = 3
SEEDS = [int(s) for s in os.environ.get("JOBBIE_CHAOS_SEEDS", str(DEFAULT_SEED)).split(",") if s.strip()]


@pytest.mark.timeout(SECONDS + 360)
@pytest.mark.parametrize("seed", SEEDS)
def test_chaos_loses_nothing_acknowledged(make_cluster, seed):
    cluster = make_cluster()
    figures = ChaosRun(cluster, seed, SECONDS).run()
    print(f"\nchaos seed {seed}:\n{render_figures(figures)}")
    context = f"seed {seed}; broken {figures['broken']}; schedule: {figures['schedule']}"
    assert figures["faults_total"] >= 3, f"too few faults to mean anything; {context}"
    if seed == DEFAULT_SEED or SECONDS >= 300:
        assert all(figures["faults"][kind] >= 1 for kind in KINDS), f"a kind of fault never ran; {context}"
    assert figures["enqueues_acknowledged"] > 100, context
    assert figures["lost"] == 0, context
    assert figures["not_completed"] == 0, context
    assert figures["acked_not_completed"] == [], context
    assert figures["active_past_lease"] == [], context
    assert figures["replicas"] is None and len(figures["digests"]) == 1, context
    assert figures["time_to_recover"]["unrecovered"] == 0, context
    assert figures["time_to_recover"]["measured"] == figures["faults_total"], context
    assert figures["broken"] == [] and figures["ok"], context
