"""The chaos run's pure parts: the seeded fault plan, the time-to-recover figures, the invariants' lines."""
from __future__ import annotations

import itertools

from jobbie.cli.chaos import render_figures
from jobbie.cli.chaos_harness.faults import KINDS, Step, plan, recovery_figures
from jobbie.cli.chaos_harness.run import broken


def steps(seed: int, count: int = 60, nodes: int = 3) -> list[Step]:
    return list(itertools.islice(plan(seed, nodes), count))


def test_a_seed_always_gives_the_same_steps_and_another_seed_others():
    # Given two draws of the same seed and one of another / Then the first two are equal, the third differs
    assert steps(7) == steps(7)
    assert steps(7) != steps(8)


def test_every_kind_is_drawn_and_each_step_stays_in_its_ranges():
    drawn = steps(11, count=200, nodes=5)
    # Then every kind comes up, gaps are 1-4 s, nodes are in range, and pauses fit their kind
    assert {s.kind for s in drawn} == set(KINDS)
    assert all(1.0 <= s.gap_s <= 4.0 and 0 <= s.node < 5 for s in drawn)
    ranges = {"kill-actor": (0.0, 0.0), "kill-node": (0.5, 3.0), "sigstop-leader": (2.0, 4.0),
              "drop-connections": (0.5, 2.0)}
    assert all(ranges[s.kind][0] <= s.pause_s() <= ranges[s.kind][1] for s in drawn)


def test_a_cluster_size_changes_only_which_node_is_hit_not_the_kinds_or_gaps():
    # Given the same seed for a 3-node and a 5-node cluster / Then the kinds and the gaps are the same steps
    three, five = steps(5, nodes=3), steps(5, nodes=5)
    assert [(s.kind, s.gap_s) for s in three] == [(s.kind, s.gap_s) for s in five]


def test_time_to_recover_is_the_median_and_max_over_faults_and_counts_the_unrecovered():
    events = [{"kind": "kill-actor", "recover_s": 0.2}, {"kind": "restart-node"},
              {"kind": "kill-node", "recover_s": 3.0}, {"kind": "sigstop-leader", "recover_s": 1.0},
              {"kind": "drop-connections", "recover_s": None}]
    assert recovery_figures(events) == {"measured": 3, "median_s": 1.0, "max_s": 3.0, "unrecovered": 1}
    assert recovery_figures([]) == {"measured": 0, "median_s": None, "max_s": None, "unrecovered": 0}


def clean_figures(**changes) -> dict:
    figures = {"seed": 7, "seconds": 30.0, "run_seconds": 50.0, "nodes": 3, "faults": {k: 1 for k in KINDS},
               "faults_total": 4, "skipped_steps": 0, "enqueues_acknowledged": 900, "acks_acknowledged": 880,
               "lost": 0, "lost_ids": [], "not_completed": 0, "not_completed_ids": [], "acked_not_completed": [],
               "duplicate_executions": 1, "retried_on_purpose": 90, "active_past_lease": [],
               "longest_enqueue_s": 2.5, "digests": ["ab" * 16], "applied_index": 4000, "replicas": None,
               "time_to_recover": {"measured": 4, "median_s": 0.5, "max_s": 2.0, "unrecovered": 0},
               "schedule": [{"at_s": 1.5, "kind": "kill-node", "detail": "n2", "recover_s": 2.0},
                            {"at_s": 3.0, "kind": "restart-node", "detail": "n2"}]}
    figures.update(changes)
    figures["broken"] = broken(figures)
    figures["ok"] = not figures["broken"]
    return figures


def test_clean_figures_break_nothing_and_say_so():
    figures = clean_figures()
    assert figures["broken"] == []
    text = render_figures(figures)
    assert "every invariant holds" in text and "identical: 3 nodes at applied index 4000" in text
    assert "median 0.50 s, max 2.00 s over 4 faults" in text
    assert "kill-node         n2  recovered in 2.00 s" in text


def test_each_broken_invariant_is_one_line_that_names_it():
    # Given figures with a lost enqueue, two digests and a fault never recovered from
    figures = clean_figures(lost=1, lost_ids=["job_1"], digests=["a", "b"],
                            time_to_recover={"measured": 3, "median_s": 0.5, "max_s": 2.0, "unrecovered": 1})
    # Then each is a line of its own, naming the invariant (and the example id)
    assert [line.split(":")[0] for line in figures["broken"]] == ["lost", "digests", "unrecovered"]
    assert "job_1" in figures["broken"][0]
    assert render_figures(figures).splitlines()[-1].startswith("BROKEN: lost: 1 acknowledged")
