"""The admission process's shell: the gateway's rules and admission's in one turn, without sockets.

A client's request becomes a raft entry in the same turn it arrives; raft's one results frame
answers the client and frees admission's slot; an op admission refuses is answered in the same
turn, with no frame between the two roles.
"""
from __future__ import annotations

import pytest

from jobbie.actors.admission.actor import AdmissionActor
from jobbie.actors.admission.core import AdmissionLimits
from jobbie.actors.config import NodeConfig
from jobbie.actors.raft import core as raft_core
from jobbie.transport import codec
from jobbie.transport.pump import Inbox


@pytest.fixture
def shell(tmp_path):
    def make(**limits):
        return AdmissionActor(None, NodeConfig(data_dir=str(tmp_path / "data")), AdmissionLimits(**limits))
    return make


def request(ident: bytes, req_id: int, op: str, **args) -> tuple:
    return ("clients", [ident, codec.encode({"id": req_id, "op": op, "args": args})])


def turn(actor, messages, now=1000.0, tick=False):
    return actor.handle(Inbox(messages, tick, now))


def replies(out) -> dict:
    return {frames[0]: codec.decode(frames[-1]) for name, frames in out if name == "clients"}


def entries(out) -> list:
    return [(raft_core.decode_entry(frames[0]), codec.decode(frames[1]))
            for name, frames in out if name == "raft" and frames[0] != b"control"]


def test_a_request_leaves_as_an_entry_in_its_turn_and_one_results_frame_answers_it(shell):
    actor = shell()
    # Given two enqueues from two clients in one turn
    out = turn(actor, [request(b"A", 1, "enqueue", queue="q", payload={"n": 1}),
                       request(b"B", 7, "enqueue", queue="q", payload={"n": 2})])
    # Then they leave together as one raft entry, stamped with ids and tags, and nobody is answered yet
    [(entry, (tags, entry_id))] = entries(out)
    assert [op["args"]["payload"] for op in entry["ops"]] == [{"n": 1}, {"n": 2}]
    assert all(op["ids"][0].startswith("job_") for op in entry["ops"])
    assert replies(out) == {} and actor.core.stats()["entries_in_flight"] == 1
    # When raft's one frame for that entry comes back
    results = [{"ok": {"job_id": op["ids"][0], "state": "pending", "unique_existing": False}} for op in entry["ops"]]
    [(dest, frame)] = raft_core.route(entry, 5, results, None)
    assert dest == "gateway" and frame["entry"] == entry_id
    out = turn(actor, [("in", [codec.encode(frame)])])
    # Then both clients have their answer and admission's slot is free
    got = replies(out)
    assert got[b"A"] == {"id": 1, "ok": results[0]["ok"]} and got[b"B"] == {"id": 7, "ok": results[1]["ok"]}
    assert actor.core.stats()["entries_in_flight"] == 0 and actor.core.total == 0


def test_an_op_over_admissions_limit_is_answered_in_the_same_turn(shell):
    actor = shell(inflight_max=1, inflight_per_client_max=1)
    out = turn(actor, [request(b"A", 1, "enqueue", queue="q", payload=1),
                       request(b"A", 2, "enqueue", queue="q", payload=2)])
    # Then the second is refused in this turn (the only answer so far) and the first leaves for raft
    refused = [codec.decode(frames[-1]) for name, frames in out if name == "clients"]
    assert refused == [{"id": 2, "err": refused[0]["err"]}]
    assert refused[0]["err"]["code"] == "RESOURCE_EXHAUSTED" and refused[0]["err"]["retry_after_ms"] >= 5
    assert len(entries(out)) == 1 and len(entries(out)[0][0]["ops"]) == 1


def test_bad_input_is_answered_at_once_and_nothing_reaches_raft(shell):
    actor = shell()
    out = turn(actor, [request(b"A", 3, "enqueue", queue="no spaces allowed", payload=1)])
    assert entries(out) == []
    assert replies(out)[b"A"]["err"]["field"] == "queue"


def test_entries_of_other_nodes_and_earlier_lives_are_ignored(shell):
    actor = shell()
    turn(actor, [request(b"A", 1, "enqueue", queue="q", payload=1)])
    foreign = {"k": "applied", "index": 9, "items": [[["gw", 1, 1], {"ok": {}}]], "woken": {}, "entry": [1, 0]}
    out = turn(actor, [("in", [codec.encode(foreign)])])
    assert replies(out) == {} and actor.core.stats()["entries_in_flight"] == 1


def test_the_lifecycles_ops_are_admitted_and_refusals_go_back_to_it(shell):
    actor = shell(inflight_max=1, inflight_per_client_max=1)
    op = codec.encode({"op": "tick", "args": {}, "now": 1, "tag": ["lc", 5, 1]})
    frame = {"k": "ops", "items": [["lc", len(op), ["lc", 5, 1], op], ["lc", len(op), ["lc", 5, 2], op]]}
    out = turn(actor, [("in", [codec.encode(frame)])])
    assert len(entries(out)) == 1
    [refusal] = [codec.decode(frames[0]) for name, frames in out if name == "lifecycle"]
    assert refusal["items"][0][0] == ["lc", 5, 2] and refusal["items"][0][1]["err"]["code"] == "RESOURCE_EXHAUSTED"


def test_cluster_status_shows_admissions_figures_after_a_status_tick(shell):
    actor = shell()
    turn(actor, [], now=1000.0, tick=True)
    out = turn(actor, [request(b"A", 1, "cluster_status")], now=1000.01)
    status = replies(out)[b"A"]["ok"]
    assert status["pipeline"]["admission"]["limits"]["inflight_max"] == 50_000
