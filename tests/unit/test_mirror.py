"""The mirror without processes: the jq subset, the search SQL, the feed/repair rules and bulk runs.

Real SQLite files in tmp_path, real LMDB through the `h` harness (storage/machine.py applies the ops);
change frames are built the way the raft actor builds them (`raft.core.changes_frame`).
"""
from __future__ import annotations

import json
import math
import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

from jobbie.actors.gateway.core import GatewayCore
from jobbie.actors.mirror import jq, query
from jobbie.actors.mirror.bulk import BulkRuns
from jobbie.actors.mirror.core import MirrorCore
from jobbie.actors.mirror.db import MirrorFiles
from jobbie.actors.mirror.rows import COLUMNS, job_row, payload_json
from jobbie.actors.mirror.source import JobSource
from jobbie.actors.raft import core as raft_core
from jobbie.storage import reads
from jobbie.storage.states import STATES
from jobbie.transport import codec
from jobbie.transport.errors import InvalidArgument
from jobbie.transport.ops import validate
from jobbie.transport.ops_search import STATE_NAMES


def payload_text(value) -> str:
    """The mirror's JSON text of a payload value (the mirror reads payloads msgpack-encoded)."""
    return payload_json(codec.encode(value))

# ======================================================================= jq subset
# What jq 1.6 answers for each expression over PAYLOADS (`try (EXPR) catch ...`, truthy results);
# the translation must select exactly those payloads.
PAYLOADS = [{"a": 1}, {"a": "x"}, {"a": None}, {}, {"a": [1, 2, "abc"]}, {"a": {"b": 2}}, {"a": True}, {"a": False},
            {"a": 2.5}, {"a": -3}, {"user": {"name": "bob", "tags": ["x", "vip"]}}, {"a": "abc", "b": "abd"},
            {"a": 1, "b": 1}, {"a": [1], "b": [1]}, {"n": 10, "s": "hello world"}, {"a": ""}, {"a": []}]
EVERY = list(range(len(PAYLOADS)))
JQ_ANSWERS = {
    '.a == 1': [0, 12], '.a > 1': [1, 4, 5, 8, 11, 13, 15, 16],
    '.a < "a"': [0, 2, 3, 6, 7, 8, 9, 10, 12, 14, 15], '.a != 1': [i for i in EVERY if i not in (0, 12)],
    '.a': [0, 1, 4, 5, 6, 8, 9, 11, 12, 13, 15, 16], '.a | not': [2, 3, 7, 10, 14],
    '.a | length > 1': [4, 8, 9, 11], '.a | length == 0': [2, 3, 10, 14, 15, 16],
    '.user | .name == "bob"': [10], '.user.name | startswith("b")': [10], '.a | contains(["b"])': [4],
    '.a | contains("b")': [11], '.a == null': [2, 3, 10, 14], '.a >= 1 and .a <= 2': [0, 12],
    '(.a == 1) or (.a == "x")': [0, 1, 12], '.a == true': [6], '.a == false': [7],
    'length == 1': [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 15, 16], '.a[-1] == "abc"': [4], '.a[0] == 1': [4, 13],
    '.a.b == 2': [5], '.a < .b': [11], '.a == .b': [2, 3, 10, 12, 13, 14], '.a <= .b': [2, 3, 10, 11, 12, 13, 14],
    '.user.tags | contains(["vip"])': [10], '.s | endswith("world")': [14], '.n >= 10': [14], '.n > 9.5': [14],
    '.a | length': [i for i in EVERY if i not in (6, 7)], '.a > false': [0, 1, 4, 5, 6, 8, 9, 11, 12, 13, 15, 16],
    '.a >= null': EVERY, '.["a"] == 1': [0, 12], '."a" == 1': [0, 12], '.a | contains(1)': [0, 12],
    '.a | startswith("")': [1, 11, 15], '(.a | not) | not': [0, 1, 4, 5, 6, 8, 9, 11, 12, 13, 15, 16],
    '.missing.deep == null': EVERY, '.a == -3': [9], '.a | length == 3': [4, 9, 11],
    '.a < "zzz" and .a > 1': [1, 8, 11, 15], '.a > true': [0, 1, 4, 5, 8, 9, 11, 12, 13, 15, 16],
}


@pytest.fixture
def payload_db(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "jq.sqlite"))
    conn.execute("CREATE TABLE t (i INTEGER, payload TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, payload_text(p)) for i, p in enumerate(PAYLOADS)])
    yield conn
    conn.close()


def matching(conn, expr) -> list:
    params = jq.Params()
    sql = jq.to_sql(expr, "payload", params)
    return sorted(r[0] for r in conn.execute(f"SELECT i FROM t WHERE {sql}", params.values))


@pytest.mark.parametrize("expr", list(JQ_ANSWERS))
def test_jq_subset_selects_what_jq_answers(payload_db, expr):
    # Given payloads of every JSON type / When the expression is translated and run / Then jq's answer
    assert matching(payload_db, expr) == JQ_ANSWERS[expr]


@pytest.mark.parametrize("expr,position,words", [
    (".a == ", 6, "end of expression"), (".a ==== 1", 5, "unexpected"), ('.a == "x', 6, "unterminated"),
    (".a | map(.b)", 5, "unsupported function 'map'"), (".[]", 1, "iteration"), (".a == 1 == 2", 8, "chain"),
    ("not .a", 0, "EXPR | not"), ("", 0, "empty"), (".a @ 1", 3, "unexpected character"),
    ('"\\(.a)"', 1, "interpolation"), (".a | contains(.b)", 14, "literal"), ("and .a", 0, "left"),
    (".a == [1]", 3, "contains()"), (".a | startswith(1)", 16, "string"), ("(.a == 1", 8, "expected ')'"),
])
def test_jq_errors_name_the_position(expr, position, words):
    # Given a bad or unsupported expression / When translated / Then a JqError at the position, saying why
    with pytest.raises(jq.JqError) as info:
        jq.to_sql(expr, "payload", jq.Params())
    assert info.value.position == position and words in info.value.message, (info.value.position, info.value.message)


def test_jq_values_travel_as_parameters_never_as_sql(payload_db):
    # Given literals and keys that would break SQL if inlined
    params = jq.Params()
    sql = jq.to_sql('."a\'b" == "x\'); DROP TABLE t; --" or .a == 1', "payload", params)
    # Then none of them is in the SQL text, and the query still runs
    assert "DROP" not in sql and "a'b" not in sql
    assert sorted(r[0] for r in payload_db.execute(f"SELECT i FROM t WHERE {sql}", params.values)) == [0, 12]


def test_jq_hostile_expressions_end_in_a_clear_error():
    # Given very deep parentheses or very many operators / Then JqError, not RecursionError
    with pytest.raises(jq.JqError, match="deeper"):
        jq.parse("(" * 500 + ".a" + ")" * 500)
    with pytest.raises(jq.JqError, match="operators"):
        jq.parse(" and ".join([".a == 1"] * 200))
    with pytest.raises(jq.JqError, match='keys containing "'):
        jq.to_sql('."a\\"b" == 1', "payload", jq.Params())


def test_payload_json_of_values_json_lacks():
    # Given msgpack-only values / Then the documented JSON text
    assert payload_text({"b": b"\x00\xff", 1: "one", "n": math.nan, "i": -math.inf}) == \
        '{"b":"AP8=","1":"one","n":"NaN","i":"-Infinity"}'
    assert payload_text({b"k": 1, True: [False], None: 2.5}) == '{"aw==":1,"true":[false],"null":2.5}'
    assert payload_text("é") == '"é"' and payload_text(None) == "null"
    # a float32 NaN (other clients' encoders send them) is caught like a float64 one
    assert payload_json(b"\x91\xca\x7f\xc0\x00\x00") == '["NaN"]'
    assert payload_json(b"\xca\xff\x80\x00\x00") == '"-Infinity"'



_PAYLOAD_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=8),
                            st.binary(max_size=8))
_PAYLOADS = st.recursive(_PAYLOAD_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-5, 5), st.binary(max_size=3), st.booleans()),
                    inner, max_size=4)), max_leaves=12)


def _entries(value) -> int:
    if isinstance(value, dict):
        return len(value) + sum(_entries(v) for v in value.values())
    if isinstance(value, list):
        return sum(_entries(v) for v in value)
    return 0


@settings(max_examples=300, deadline=None)
@given(_PAYLOADS)
def test_payload_json_fast_path_matches_value_by_value_conversion(payload):
    # Given any payload msgpack can carry / Then the one-pass encoding gives the very text of the
    # value-by-value conversion, so searches do not depend on which path wrote a row. (Where two keys
    # spell the same, {"": 1, b"": 2}, the text keeps both and JSON readers take the last.)
    from jobbie.actors.mirror.rows import _JSON, _jsonable
    text, slow = payload_text(payload), _jsonable(payload)
    assert json.loads(text) == json.loads(_JSON.encode(slow))  # JSON SQLite can read: no NaN tokens
    if _entries(slow) == _entries(payload):
        assert text == _JSON.encode(slow).decode()


# ======================================================================= mirror fixtures

def source_of(h) -> JobSource:
    src = JobSource(h.store.path)
    src.store = h.store  # read transactions on the harness's own environment
    return src


class Raft:
    """Applies ops through the harness and builds the change frames raft would send."""

    def __init__(self, h):
        self.h = h
        self.last = h.index

    def apply(self, ops: list):
        self.h.apply(ops)
        if not self.h.last_changes.jobs:
            return None
        prev, self.last = self.last, self.h.index
        return raft_core.changes_frame(self.h.index, prev, self.h.last_changes.jobs)

    def run(self, name, args=None, now=None, **kw):
        return self.apply([self.h.op(name, args, now=now or self.h.T0, **kw)])

    def status(self, **extra):
        return {"k": "raft_status", "applied_index": self.h.index, "changes_index": self.last, **extra}


def make_core(tmp_path, h, **kw) -> MirrorCore:
    kw.setdefault("chunk_jobs", 3)
    core = MirrorCore(MirrorFiles(str(tmp_path / "mirror.sqlite")), source_of(h), incarnation=7, **kw)
    core.start(0.0)
    return core


def settle(core, now=0.0):
    for _ in range(10_000):
        core.step(now)
        if not core.busy():
            return
    raise AssertionError("the mirror core never became idle")


def assert_mirror_equals_lmdb(core, h):
    """Every row holds what job_row makes of the job's LMDB record now (rev, the record's CRC, included)."""
    mirrored = {row[0]: row for row in core.live.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs")}
    truth = {job_id: job_row(raw, errors)[0] for job_id, raw, errors in source_of(h).scan(None, 10**6, errors=True)}
    assert mirrored == truth
    tags = sorted(core.live.conn.execute("SELECT job_id, key, value FROM tags").fetchall())
    want = sorted((i.decode(), k, v) for i, raw in h.items("jobs") for k, v in codec.decode(raw)["tags"].items())
    assert tags == want


def populate(h) -> dict:
    """A small zoo of jobs in every state, with errors, tags, batches, times and odd payloads."""
    T, ids = h.T0, {}
    ids["a"] = h.enqueue(now=T, queue="emails", payload={"to": "a@x.io", "n": 1, "user": {"plan": "pro"}},
                         tags={"team": "red", "env": "prod"}, priority="high")
    ids["b"] = h.enqueue(now=T + 1000, queue="emails", payload={"to": "b@y.io", "n": 2, "user": {"plan": "free"}},
                         tags={"team": "blue"})
    ids["c"] = h.enqueue(now=T + 2000, queue="reports", payload={"kind": "monthly", "blob": b"\x00\xff"},
                         unique_key="rep-1", delay_ms=60_000)
    ids["d"] = h.enqueue(now=T + 3000, queue="reports", payload=[1, 2, 3], hold=True, expire_after_ms=3_600_000)
    ids["e"] = h.enqueue(now=T + 4000, queue="work-e", payload={"to": "e@x.io", "n": 5}, max_retries=0)
    h.fetch_one(now=T + 5000, queues=["work-e"], worker_id="w1")
    h.ok("fail", {"job_id": ids["e"], "error": "SMTP 550: mailbox 100%_full"}, now=T + 6000)
    ids["f"] = h.enqueue(now=T + 7000, queue="work-f", payload={"n": 7}, priority="low", tags={"team": "red"})
    h.fetch_one(now=T + 8000, queues=["work-f"], worker_id="w2")
    h.ok("ack", {"job_id": ids["f"]}, now=T + 9000)
    ids["g"] = h.enqueue(now=T + 10_000, queue="work-g", payload={"n": 10}, priority="critical")
    h.fetch_one(now=T + 11_000, queues=["work-g"], worker_id="w1")
    batch = h.ok("enqueue_batch", {"jobs": [{"queue": "emails", "payload": {"n": 12}},
                                            {"queue": "emails", "payload": "plain %_ text"}],
                                   "batch": {"callback_queue": "done"}}, now=T + 12_000)
    ids["h1"], ids["h2"] = batch["job_ids"]
    ids["batch"] = batch["batch_id"]
    ids["i"] = h.enqueue(now=T + 13_000, queue="emails", payload={"n": 13})
    h.ok("cancel_job", {"job_id": ids["i"]}, now=T + 14_000)
    return ids


@pytest.fixture
def zoo(tmp_path, h):
    ids = populate(h)
    core = make_core(tmp_path, h)
    settle(core)
    return h, core, ids


def records(h) -> list[dict]:
    with h.store.begin() as txn:
        return [reads.get_job(txn, h.dbs, bytes(k).decode()) for k, _ in txn.cursor(db=h.dbs["jobs"])]


def search(core, **args) -> dict:
    return core.live.search(validate("search_jobs", args)[1], core.source.records)


# ======================================================================= search

T0 = 1_700_000_000_000
FILTERS = [
    ({"queue": "emails"}, lambda j: j["queue"] == "emails"),
    ({"state": ["dead", "completed"]}, lambda j: j["state"] in ("dead", "completed")),
    ({"priority": "high"}, lambda j: j["priority"] == "high"),
    ({"tags": {"team": "red"}}, lambda j: j["tags"].get("team") == "red"),
    ({"tags": {"team": "red", "env": "prod"}}, lambda j: j["tags"] == {"team": "red", "env": "prod"}),
    ({"payload_contains": "x.io"}, lambda j: "x.io" in payload_text(j["payload"])),
    ({"payload_contains": "AP8="}, lambda j: j["payload"] == {"kind": "monthly", "blob": b"\x00\xff"}),
    ({"payload_jq": '.user.plan == "pro" or .n >= 12'},
     lambda j: isinstance(j["payload"], dict) and (j["payload"].get("user", {}).get("plan") == "pro"
                                                   or j["payload"].get("n", 0) >= 12)),
    ({"created_after": T0 + 3000, "created_before": T0 + 10_000}, lambda j: T0 + 3000 <= j["created_at"] < T0 + 10_000),
    ({"scheduled_after": T0 + 50_000}, lambda j: j["run_at"] >= T0 + 50_000),
    ({"started_after": T0 + 6000}, lambda j: j["started_at"] is not None and j["started_at"] >= T0 + 6000),
    ({"started_before": T0 + 6000}, lambda j: j["started_at"] is not None and j["started_at"] < T0 + 6000),
    ({"completed_after": 0}, lambda j: j["completed_at"] is not None),
    ({"expire_before": T0 + 10 ** 9}, lambda j: j["expire_at"] is not None),
    ({"worker_id": "w1"}, lambda j: j["worker_id"] == "w1"),
    ({"has_errors": True}, lambda j: bool(j["errors"] or j["last_error"])),
    ({"has_errors": False}, lambda j: not (j["errors"] or j["last_error"])),
    ({"error_contains": "100%_FULL"}, lambda j: any("100%_full" in e["error"] for e in j["errors"])),
    ({"error_contains": "%"}, lambda j: any("%" in e["error"] for e in j["errors"])),
    ({"error_contains": "%_F"}, lambda j: any("%_f" in e["error"] for e in j["errors"])),
    ({"batch_id": "BATCH"}, lambda j: j["batch_id"] is not None),
    ({"unique_key": "rep-1"}, lambda j: j["unique_key"] == "rep-1"),
    ({"attempt_min": 1}, lambda j: j["attempt"] >= 1),
    ({"attempt_max": 0}, lambda j: j["attempt"] == 0),
    ({"job_id_prefix": "job_1"}, lambda j: j["id"].startswith("job_1")),
    ({"queue": "emails", "state": ["pending"], "payload_contains": "n"},
     lambda j: j["queue"] == "emails" and j["state"] == "pending" and "n" in payload_text(j["payload"])),
]


@pytest.mark.parametrize("args,want", FILTERS, ids=[json.dumps(f[0], default=str)[:60] for f in FILTERS])
def test_each_filter_selects_exactly_the_right_jobs(zoo, args, want):
    h, core, ids = zoo
    args = {k: (ids["batch"] if v == "BATCH" else v) for k, v in args.items()}
    # Given the zoo mirrored / When searched with one filter
    got = search(core, limit=1000, **args)
    # Then exactly the jobs whose LMDB record passes the same test, newest first
    expected = sorted((j for j in records(h) if want(j)), key=lambda j: (j["created_at"], j["id"]), reverse=True)
    assert [j["id"] for j in got["jobs"]] == [j["id"] for j in expected] and expected
    assert got["total"] == len(expected) and got["has_more"] is False and got["cursor"] is None


def test_a_page_shows_the_record_lmdb_holds_and_leaves_out_deleted_jobs(zoo):
    h, core, ids = zoo
    # Given changes the mirror has not written yet: job b cancelled, job a deleted
    h.ok("cancel_job", {"job_id": ids["b"]}, now=T0 + 20_000)
    h.ok("delete_job", {"job_id": ids["a"]}, now=T0 + 20_000)
    # When the mirror, whose rows still say pending, is searched for pending emails
    got = search(core, queue="emails", state=["pending"], limit=1000)
    # Then b shows its record as LMDB has it now, a is left out of the page, and total counts rows
    by_id = {j["id"]: j for j in got["jobs"]}
    assert ids["a"] not in by_id and by_id[ids["b"]]["state"] == "cancelled"
    assert got["total"] == len(got["jobs"]) + 1
    # And once the mirror took the changes in, the rows agree with LMDB again
    core.on_changes(raft_core.changes_frame(h.index, core.index, [ids["a"], ids["b"]]))
    settle(core)
    assert_mirror_equals_lmdb(core, h)
    assert ids["b"] not in {j["id"] for j in search(core, queue="emails", state=["pending"])["jobs"]}


def test_like_wildcards_in_error_contains_are_literal(zoo):
    _, core, _ = zoo
    # Given an error "SMTP 550: mailbox 100%_full": wildcards would match these, literals do not
    for text in ("0%f", "0_f", "55_", "%%%"):
        assert search(core, error_contains=text)["total"] == 0, text
    assert search(core, error_contains="100%_")["total"] == 1


@pytest.mark.parametrize("sort", list(query.SORT_SQL))
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_pages_follow_the_sort_with_a_stable_cursor(zoo, sort, order):
    h, core, _ = zoo
    column = {"scheduled_at": "run_at", "priority": "priority"}.get(sort, sort)
    level = {"critical": 3, "high": 2, "normal": 1, "low": 0}

    def key(j):
        v = level[j["priority"]] if sort == "priority" else j[column]
        return (-1 if v is None else v, j["id"])
    expected = [j["id"] for j in sorted(records(h), key=key, reverse=order == "desc")]
    # When paging two at a time
    seen, cursor = [], None
    while True:
        page = search(core, sort=sort, order=order, limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [j["id"] for j in page["jobs"]]
        assert page["total"] == len(expected)
        if not page["has_more"]:
            assert page["cursor"] is None
            break
        cursor = page["cursor"]
    # Then every job once, in sort order (ties by id)
    assert seen == expected


def test_new_jobs_do_not_shift_the_pages_of_a_running_search(tmp_path, h):
    raft = Raft(h)
    core = make_core(tmp_path, h)
    for i in range(6):
        core.on_changes(raft.run("enqueue", {"queue": "q", "payload": i}, now=T0 + i))
    settle(core)
    first = search(core, queue="q", limit=3)
    # Given newer jobs arriving between pages
    core.on_changes(raft.run("enqueue", {"queue": "q", "payload": 99}, now=T0 + 100))
    settle(core)
    second = search(core, queue="q", limit=3, cursor=first["cursor"])
    # Then the second page continues exactly where the first ended
    payloads = [j["payload"] for j in first["jobs"] + second["jobs"]]
    assert payloads == [5, 4, 3, 2, 1, 0] and second["has_more"] is False


def test_cursors_are_checked(zoo):
    _, core, _ = zoo
    page = search(core, queue="emails", limit=1)
    for bad, words in ((page["cursor"] + "x", "not a cursor"), ("!!!", "not a cursor")):
        with pytest.raises(InvalidArgument) as info:
            search(core, queue="emails", cursor=bad)
        assert info.value.field == "cursor" and words in info.value.message
    with pytest.raises(InvalidArgument, match="another search"):
        search(core, queue="reports", cursor=page["cursor"])


def test_a_slow_search_is_stopped_with_a_clear_reason(tmp_path, h):
    raft = Raft(h)
    core = make_core(tmp_path, h)
    core.on_changes(raft.run("enqueue_batch", {"jobs": [{"queue": "q", "payload": {"s": "x" * 200, "i": i}}
                                                        for i in range(1000)]}))
    settle(core)
    args = validate("search_jobs", {"payload_jq": " or ".join(f'(.s | contains("y{i}"))' for i in range(40))})[1]
    with pytest.raises(InvalidArgument) as info:
        core.live.search(args, core.source.records, budget_ms=1)
    assert info.value.reason == "query_too_slow" and "ran longer than 1 ms" in info.value.message


def test_a_page_stops_before_the_answer_gets_too_big(tmp_path, h, monkeypatch):
    from jobbie.actors.mirror import db as dbmod
    monkeypatch.setattr(dbmod, "RESULT_BYTES_MAX", 3500)  # records here are ~1.4 kB
    raft = Raft(h)
    core = make_core(tmp_path, h)
    core.on_changes(raft.run("enqueue_batch", {"jobs": [{"queue": "q", "payload": "x" * 1000} for _ in range(5)]}))
    settle(core)
    page = search(core, limit=5)
    assert len(page["jobs"]) == 2 and page["has_more"] and page["cursor"] and page["total"] == 5
    rest = search(core, limit=5, cursor=page["cursor"])
    assert len(rest["jobs"]) == 2 and rest["has_more"]


def test_bad_jq_in_a_search_names_the_field_and_position(zoo):
    _, core, _ = zoo
    with pytest.raises(InvalidArgument) as info:
        search(core, payload_jq=".a ==")
    assert (info.value.field, info.value.reason) == ("payload_jq", "query_syntax")
    assert "at position 5" in info.value.message


# ======================================================================= feed and repairs

def test_frames_in_sequence_keep_sqlite_equal_to_lmdb(tmp_path, h):
    raft = Raft(h)
    core = make_core(tmp_path, h)
    job = h.new_job_id()
    frames = [raft.run("enqueue", {"queue": "q", "payload": 1}, ids=[job]),
              raft.run("fetch", {"queues": ["q"], "worker_id": "w"}),
              raft.run("fail", {"job_id": job, "error": "boom"}),
              raft.run("enqueue", {"queue": "q", "payload": 2})]
    for f in frames:
        core.on_changes(f)
    settle(core)
    assert_mirror_equals_lmdb(core, h)
    assert core.index == h.index and core.dropped == 0 and core.reconciles == 0
    core.on_changes(raft.run("delete_job", {"job_id": job}))
    settle(core)
    assert_mirror_equals_lmdb(core, h)
    assert core.live.meta("mirrored_index") == h.index


def test_a_lost_frame_is_repaired_from_lmdb(tmp_path, h):
    raft = Raft(h)
    core = make_core(tmp_path, h)
    core.on_changes(raft.run("enqueue", {"queue": "q", "payload": 1}))
    settle(core)
    # Given frames that never arrive: a new job, a deleted one
    raft.run("enqueue", {"queue": "q", "payload": "lost"})
    gone = h.job_ids()[0]
    raft.run("delete_job", {"job_id": gone})
    # When the next frame shows the gap
    core.on_changes(raft.run("enqueue", {"queue": "q", "payload": 3}))
    core.step(0.0)
    assert core.repair is not None and core.index < h.index  # the mirror does not claim what it lacks
    settle(core)
    # Then a reconcile brings every row back in step, and the gap is counted once
    assert_mirror_equals_lmdb(core, h)
    assert (core.dropped, core.reconciles, core.index) == (1, 1, h.index)


def test_idle_mirror_follows_raft_reports(tmp_path, h):
    raft = Raft(h)
    core = make_core(tmp_path, h, stall_s=2.0)
    core.on_changes(raft.run("enqueue", {"queue": "q", "payload": 1}))
    settle(core)
    # Given entries that changed no job (a fetch of an empty queue)
    raft.run("fetch", {"queues": ["empty"], "worker_id": "w"})
    core.on_status(raft.status(), 1.0)
    # Then the mirror is at raft's applied index (lag 0)
    assert core.index == h.index and core.status()["lag"] == 0
    # Given the last frame lost and nothing after it: raft reports it, it never comes
    raft.run("enqueue", {"queue": "q", "payload": 2})
    core.on_status(raft.status(), 2.0)
    core.on_status(raft.status(), 3.0)
    assert core.repair is None  # in flight, maybe
    core.on_status(raft.status(), 4.1)
    assert core.repair is not None
    settle(core)
    assert_mirror_equals_lmdb(core, h)
    assert core.dropped == 1 and core.index == h.index


def test_a_new_lmdb_file_is_reconciled(tmp_path, h):
    raft = Raft(h)
    core = make_core(tmp_path, h)
    core.on_status(raft.status(lmdb_id="1:1"), 0.0)
    raft.run("enqueue", {"queue": "q", "payload": 1})  # no frame: as if a snapshot brought it
    core.source.watch = lambda lmdb_id: False  # keep the harness's environment open
    core.on_status(raft.status(lmdb_id="1:2"), 1.0)
    settle(core)
    assert_mirror_equals_lmdb(core, h)
    assert core.reconciles == 1 and core.dropped == 0


def test_rebuild_swaps_files_and_keeps_changes_made_meanwhile(tmp_path, h):
    raft = Raft(h)
    core = make_core(tmp_path, h, chunk_jobs=2)
    core.on_changes(raft.apply([h.op("enqueue", {"queue": "q", "payload": i}) for i in range(7)]))
    settle(core)
    old_inode = core.live.inode
    core.on_request({"k": "search", "tag": ["gw", 1, 1], "op": "rebuild_mirror", "args": {}})
    core.step(0.0)
    assert core.repair.kind == "rebuild"
    # Given changes while the new file is being written: searches still answer from the old one
    changed = h.job_ids()[0]
    core.on_changes(raft.run("cancel_job", {"job_id": changed}))
    core.on_changes(raft.run("enqueue", {"queue": "q", "payload": "late"}))
    core.on_request({"k": "search", "tag": ["gw", 1, 2], "op": "search_jobs", "args": {"limit": 50}})
    core.step(0.0)
    replies, _ = core.take_outputs()
    assert [r[0] for r in replies] == [["gw", 1, 2]] and replies[0][1]["ok"]["total"] == 8
    settle(core, now=1.5)
    # Then the rebuilt file is in place, holds everything, and the waiting request is answered
    assert core.live.inode != old_inode and core.rebuilds == 1
    assert_mirror_equals_lmdb(core, h)
    replies, _ = core.take_outputs()
    assert replies == [[["gw", 1, 1], {"ok": {"jobs": 8, "applied_index": h.index, "duration_ms": 1500}}]]


def test_a_damaged_file_is_rebuilt_at_start_and_searches_wait(tmp_path, h):
    populate(h)
    path = tmp_path / "mirror.sqlite"
    path.write_bytes(b"this is not a database" * 500)
    core = make_core(tmp_path, h)
    assert core.live is None and core.repair.kind == "rebuild"
    core.on_request({"k": "search", "tag": ["gw", 1, 1], "op": "search_jobs", "args": {}})
    core.step(0.0)
    replies, _ = core.take_outputs()
    assert replies[0][1]["err"]["reason"] == "mirror_rebuilding" and replies[0][1]["err"]["code"] == "UNAVAILABLE"
    settle(core)
    assert_mirror_equals_lmdb(core, h)
    assert core.rebuilds == 1


def test_a_file_of_an_older_schema_is_rebuilt_at_start(tmp_path, h, caplog):
    populate(h)
    # Given a mirror file written by an older jobbie (schema version 1: rows with the record blob)
    conn = sqlite3.connect(str(tmp_path / "mirror.sqlite"))
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
                       "CREATE TABLE jobs (id TEXT PRIMARY KEY, record BLOB NOT NULL);"
                       "INSERT INTO meta VALUES ('schema_version', 1), ('mirrored_index', 3);")
    conn.close()
    # When the mirror starts
    core = make_core(tmp_path, h)
    # Then it says why in one line (not "damaged"), rebuilds the file and holds every job
    assert core.repair.kind == "rebuild" and core.repair.reason == "file of schema version 1"
    assert any("schema version 1, this jobbie writes 2" in r.getMessage() for r in caplog.records)
    settle(core)
    assert_mirror_equals_lmdb(core, h)
    assert core.live.meta("schema_version") == 2 and core.rebuilds == 1


def test_a_deleted_file_is_rebuilt(zoo, tmp_path):
    h, core, _ = zoo
    (tmp_path / "mirror.sqlite").unlink()
    assert core.files.lost(core.live)
    core.on_file_lost(0.0)
    settle(core)
    assert not core.files.lost(core.live) and core.rebuilds == 2  # the first build of the zoo counts too
    assert_mirror_equals_lmdb(core, h)


def test_a_write_error_leads_to_a_rebuild(zoo):
    h, core, _ = zoo
    core.live.conn.execute("DROP TABLE jobs")  # what a damaged file looks like to the writer
    raft = Raft(h)
    core.on_changes(raft.run("enqueue", {"queue": "q", "payload": 1}))
    settle(core)
    assert core.rebuilds == 2  # the zoo's first build, then this one
    assert_mirror_equals_lmdb(core, h)


# ======================================================================= bulk

class ResultRaft(Raft):
    def apply(self, ops):
        self.results = self.h.apply(ops)
        if not self.h.last_changes.jobs:
            return None
        prev, self.last = self.last, self.h.index
        return raft_core.changes_frame(self.h.index, prev, self.h.last_changes.jobs)


def test_small_bulk_answers_when_done_in_chunks(zoo):
    h, core, ids = zoo
    core.bulk = BulkRuns(7, chunk_ops=2)
    raft = ResultRaft(h)
    core.on_request({"k": "search", "tag": ["gw", 1, 5], "op": "bulk",
                     "args": validate("bulk", {"filter": {"queue": "emails"}, "action": "cancel"})[1]})
    seen_chunks = []
    for _ in range(50):
        core.step(1.0)
        replies, items = core.take_outputs()
        if replies:
            break
        assert len(items) <= 2
        if items:
            seen_chunks.append(len(items))
            ops = [codec.decode(i[3]) for i in items]
            assert all(o["args"]["request_id"].startswith("blk_7_1-") for o in ops)
            frame = raft.apply(ops)
            if frame:
                core.on_changes(frame)
            core.on_results({"k": "applied", "items": [[o["tag"], r] for o, r in zip(ops, raft.results)]}, 1.0)
    (tag, result), = replies
    ok = result["ok"]
    # Then one answer once every chunk is back: every job of the queue is cancelled (an already cancelled one too)
    emails = [j for j in records(h) if j["queue"] == "emails"]
    assert tag == ["gw", 1, 5] and ok["total"] == len(emails) == ok["affected"] + ok["error_count"]
    assert seen_chunks and max(seen_chunks) <= 2
    assert all(j["state"] == "cancelled" for j in records(h) if j["queue"] == "emails")


def test_large_bulk_answers_at_once_and_reports_progress(tmp_path, h):
    raft = ResultRaft(h)
    core = make_core(tmp_path, h)
    core.bulk = BulkRuns(7, chunk_ops=50, sync_max=100)
    core.on_changes(raft.apply([h.op("enqueue_batch", {"jobs": [{"queue": "q", "payload": i, "max_retries": 0}
                                                                   for i in range(150)]})]))
    settle(core)
    core.on_request({"k": "search", "tag": ["gw", 1, 9], "op": "bulk",
                     "args": validate("bulk", {"filter": {"queue": "q"}, "action": "delete"})[1]})
    core.step(1.0)
    replies, items = core.take_outputs()
    ok = replies[0][1]["ok"]
    assert ok["status"] == "running" and ok["total"] == 150 and len(items) == 50
    ops = [codec.decode(i[3]) for i in items]
    core.on_changes(raft.apply(ops))
    core.on_results({"k": "applied", "items": [[o["tag"], r] for o, r in zip(ops, raft.results)]}, 1.1)
    core.on_request({"k": "search", "tag": ["gw", 1, 10], "op": "bulk_status", "args": {"bulk_id": ok["bulk_id"]}})
    core.step(1.2)
    replies, items = core.take_outputs()
    progress = replies[0][1]["ok"]
    assert (progress["status"], progress["done"], progress["affected"]) == ("running", 50, 50) and len(items) == 50


def test_requeue_skips_jobs_that_are_not_finished(zoo):
    h, core, ids = zoo
    raft = ResultRaft(h)
    core.on_request({"k": "search", "tag": ["gw", 1, 5], "op": "bulk",
                     "args": validate("bulk", {"job_ids": [ids["a"], ids["e"], ids["f"], ids["i"]],
                                               "action": "requeue"})[1]})
    for _ in range(20):
        core.step(1.0)
        replies, items = core.take_outputs()
        if replies:
            break
        ops = [codec.decode(i[3]) for i in items]
        assert {o["args"]["job_id"] for o in ops} <= {ids["e"], ids["f"], ids["i"]}
        raft.apply(ops)
        core.on_results({"k": "applied", "items": [[o["tag"], r] for o, r in zip(ops, raft.results)]}, 1.0)
    ok = replies[0][1]["ok"]
    assert (ok["total"], ok["affected"], ok["skipped"]) == (3, 3, 1)
    assert h.state(ids["e"]) == h.state(ids["f"]) == h.state(ids["i"]) == "pending"


def test_bulk_retries_refusals_and_resends_lost_chunks_with_the_same_request_id():
    def ops(items):
        return [codec.decode(i[3])["args"] for i in items]
    runs = BulkRuns(3, chunk_ops=2, chunk_timeout_s=5.0)
    run = runs.start("retry", ["j1", "j2", "j3"], {}, 0, now=0.0, reply=["gw", 1, 1])
    # Given a first chunk: one chunk in flight at a time
    first = runs.next_chunk(0.0)
    assert [a["job_id"] for a in ops(first)] == ["j1", "j2"] and runs.next_chunk(0.0) == []
    # When j1 succeeds and j2 is refused as overloaded
    runs.on_result(first[0][2], {"ok": {"state": "pending"}}, 0.1)
    runs.on_result(first[1][2], {"err": {"code": "RESOURCE_EXHAUSTED", "message": "busy", "retry_after_ms": 200}}, 0.1)
    # Then the next chunk goes on with j3; j2 waits for its hint
    second = runs.next_chunk(0.15)
    assert [a["job_id"] for a in ops(second)] == ["j3"] and runs.next_chunk(0.4) == []
    # When j3's answer never comes, after the chunk time-out both go again, with their first request_ids
    runs.check_timeouts(5.2)
    third = runs.next_chunk(5.2)
    assert sorted(a["request_id"] for a in ops(third)) == sorted([ops(first)[1]["request_id"], ops(second)[0]["request_id"]])
    for item in third:
        runs.on_result(item[2], {"err": {"code": "NOT_FOUND", "message": "gone"}}, 5.3)
    assert (run.status, run.affected, run.error_count, run.done) == ("done", 1, 2, 3)
    assert runs.take_finished() == [run] and [e["code"] for e in run.errors] == ["NOT_FOUND", "NOT_FOUND"]


# ======================================================================= validation and wiring

def test_state_names_of_the_protocol_match_the_state_machine():
    assert tuple(STATE_NAMES) == tuple(STATES)


@pytest.mark.parametrize("args,field,reason", [
    ({"state": ["dead", "bogus"]}, "state[1]", "invalid_choice"),
    ({"state": []}, "state", "out_of_range"),
    ({"state": [1]}, "state[0]", "wrong_type"),
    ({"attempt_min": 3, "attempt_max": 2}, "attempt_max", "out_of_range"),
])
def test_search_arg_rules(args, field, reason):
    with pytest.raises(InvalidArgument) as info:
        validate("search_jobs", args)
    assert (info.value.field, info.value.reason) == (field, reason)


@pytest.mark.parametrize("args,field,reason", [
    ({"action": "retry"}, "job_ids", "missing_field"),
    ({"action": "retry", "job_ids": ["a"], "filter": {"queue": "q"}}, "filter", "conflicting_fields"),
    ({"action": "retry", "filter": {}}, "filter", "empty_filter"),
    ({"action": "retry", "job_ids": []}, "job_ids", "too_large"),
    ({"action": "retry", "job_ids": ["ok", "a b"]}, "job_ids[1]", "invalid_name"),
    ({"action": "retry", "job_ids": [7]}, "job_ids[0]", "wrong_type"),
    ({"action": "move", "job_ids": ["a"]}, "move_to_queue", "missing_field"),
    ({"action": "change_priority", "job_ids": ["a"]}, "priority", "missing_field"),
    ({"action": "delete", "filter": {"state": ["nope"]}}, "filter.state[0]", "invalid_choice"),
])
def test_bulk_arg_rules(args, field, reason):
    with pytest.raises(InvalidArgument) as info:
        validate("bulk", args)
    assert (info.value.field, info.value.reason) == (field, reason)


def test_raft_feeds_the_mirror_and_routes_bulk_results_to_it():
    assert raft_core.changes_frame(9, 4, ["a", "b", "a"]) == {"k": "changes", "index": 9, "prev": 4, "jobs": ["a", "b"]}
    assert raft_core.origin_socket("mr") == "mirror"
    entry = {"v": 1, "ops": [{"op": "retry_job", "tag": ["mr", 3, 1]}]}
    assert dict(raft_core.route(entry, 5, [{"ok": {}}], None))["mirror"]["items"] == [[["mr", 3, 1], {"ok": {}}]]


def test_gateway_forwards_mirror_ops_and_refuses_them_while_the_mirror_is_silent():
    core = GatewayCore("n1", 5, ids=None, reader=None)
    request = codec.encode({"id": 1, "op": "search_jobs", "args": {"queue": "q"}})
    core.on_request([b"c1", request], 10.0)
    replies, _ = core.take_outputs()
    assert codec.decode(replies[0][1])["err"]["reason"] == "mirror_unavailable"
    core.on_status({"k": "mirror_status", "applied_index": 4, "lag": 0, "dropped_updates": 0, "rebuilds": 0}, 10.0)
    core.on_request([b"c1", request], 10.1)
    (sent,) = core.take_mirror()
    assert sent["op"] == "search_jobs" and sent["args"]["queue"] == "q" and sent["tag"][:2] == ["gw", 5]
    core.on_applied({"k": "applied", "items": [[sent["tag"], {"ok": {"jobs": [], "total": 0}}]]}, 10.2)
    replies, _ = core.take_outputs()
    assert codec.decode(replies[0][1]) == {"id": 1, "ok": {"jobs": [], "total": 0}}
    assert core.cluster_status(10.3)["mirror"]["applied_index"] == 4
    assert core.cluster_status(20.0)["mirror"]["stale"] is True


# ======================================================================= read your acknowledged writes

def test_feed_batch_sends_the_first_change_at_once_and_merges_the_rest_of_its_window():
    feed = raft_core.FeedBatch(last_index=10, window_s=0.01, ids_max=4)
    # Given a quiet node / When an entry changes a job / Then its frame leaves at once
    assert feed.add(11, ["a"], now=5.0) == {"k": "changes", "index": 11, "prev": 10, "jobs": ["a"]}
    # When more entries follow within the window / Then they wait, and nothing is due yet
    assert feed.add(12, ["b", "a"], now=5.002) is None
    assert feed.add(14, ["a"], now=5.004) is None
    assert feed.due(5.006) is None and feed.last == 14
    # When the window is over / Then one frame carries them, chained to the last one sent
    assert feed.due(5.011) == {"k": "changes", "index": 14, "prev": 11, "jobs": ["b", "a"]}
    assert feed.due(5.5) is None
    # When ids pile up past the limit within a window / Then they leave at once
    assert feed.add(15, ["c"], now=5.012) is None
    assert feed.add(16, ["d", "e", "f"], now=5.013) == {"k": "changes", "index": 16, "prev": 14,
                                                         "jobs": ["c", "d", "e", "f"]}
    # When LMDB is replaced / Then the chain starts again at its index and waiting ids are dropped
    assert feed.add(17, ["g"], now=5.014) is None
    feed.restart(40)
    assert feed.due(6.0) is None
    assert feed.add(41, ["h"], now=6.0) == {"k": "changes", "index": 41, "prev": 40, "jobs": ["h"]}


def test_a_search_waits_for_the_changes_up_to_its_min_index(tmp_path, h):
    raft = Raft(h)
    core = make_core(tmp_path, h)
    first = raft.run("enqueue", {"queue": "q", "payload": 1})
    core.on_changes(first)
    settle(core)
    late = raft.run("enqueue", {"queue": "q", "payload": 2})
    # Given a search from a gateway that has answered entry `late` / When its frame has not arrived
    core.on_request({"k": "search", "tag": ["gw", 1, 1], "op": "search_jobs", "args": {"queue": "q"},
                     "min_index": late["index"]})
    core.step(10.0)
    # Then the search waits (a request that reads no rows does not)
    core.on_request({"k": "search", "tag": ["gw", 1, 2], "op": "bulk_status", "args": {"bulk_id": "blk_x"}})
    core.step(10.01)
    replies, _ = core.take_outputs()
    assert [tag for tag, _ in replies] == [["gw", 1, 2]] and core.status()["catching_up"] == 1
    # When the frame arrives / Then the search answers with the acknowledged write in it
    core.on_changes(late)
    core.step(10.02)
    replies, _ = core.take_outputs()
    assert [tag for tag, _ in replies] == [["gw", 1, 1]] and replies[0][1]["ok"]["total"] == 2


def test_a_search_waits_for_its_min_index_at_most_catch_up_s(tmp_path, h):
    from jobbie.actors.mirror.core import CATCH_UP_S
    raft = Raft(h)
    core = make_core(tmp_path, h)
    core.on_changes(raft.run("enqueue", {"queue": "q", "payload": 1}))
    settle(core)
    # Given a min_index the mirror will not see a frame for (it was lost)
    core.on_request({"k": "search", "tag": ["gw", 1, 1], "op": "search_jobs", "args": {},
                     "min_index": h.index + 5})
    core.step(20.0)
    core.step(20.0 + CATCH_UP_S / 2)
    assert core.take_outputs()[0] == []
    # Then it is answered from what the mirror holds once CATCH_UP_S is over
    core.step(20.0 + CATCH_UP_S)
    replies, _ = core.take_outputs()
    assert replies[0][0] == ["gw", 1, 1] and replies[0][1]["ok"]["total"] == 1


def test_entries_that_changed_no_job_move_the_mirror_on_and_release_searches(tmp_path, h):
    raft = Raft(h)
    core = make_core(tmp_path, h)
    core.on_changes(raft.run("enqueue", {"queue": "q", "payload": 1}))
    settle(core)
    # Given a fetch of an empty queue: an entry that changed no job, fed by raft with no ids
    h.apply([h.op("fetch", {"queues": ["empty"], "worker_id": "w"})])
    assert h.last_changes.jobs == []
    feed = raft_core.FeedBatch(last_index=raft.last)
    frame = feed.add(h.index, h.last_changes.jobs, now=1.0)
    assert frame == {"k": "changes", "index": h.index, "prev": raft.last, "jobs": []}
    # And a search from the gateway that answered that fetch
    core.on_request({"k": "search", "tag": ["gw", 1, 1], "op": "search_jobs", "args": {},
                     "min_index": h.index})
    core.step(30.0)
    assert core.take_outputs()[0] == []
    # When the frame arrives / Then M moves to its index and the search is answered at once
    core.on_changes(frame)
    core.step(30.003)
    replies, _ = core.take_outputs()
    assert core.index == h.index and replies[0][0] == ["gw", 1, 1] and replies[0][1]["ok"]["total"] == 1
    assert core.status()["dropped_updates"] == 0


def test_gateway_mirror_ops_carry_the_newest_index_it_has_seen_results_for():
    core = GatewayCore("n1", 5, ids=None, reader=None)
    core.on_status({"k": "mirror_status", "applied_index": 4}, 10.0)
    core.on_applied({"k": "applied", "index": 41, "items": [], "woken": {}}, 10.0)
    core.on_applied({"k": "applied", "index": None, "items": [], "woken": {}}, 10.0)  # a refusal: no index
    core.on_applied({"k": "applied", "index": 39, "items": [], "woken": {}}, 10.0)
    core.on_request([b"c1", codec.encode({"id": 1, "op": "search_jobs", "args": {}})], 10.1)
    (sent,) = core.take_mirror()
    assert sent["min_index"] == 41


def test_after_a_bulk_result_searches_wait_for_its_changes(tmp_path, h):
    raft = Raft(h)
    core = make_core(tmp_path, h)
    core.on_changes(raft.run("enqueue", {"queue": "q", "payload": 1}))
    settle(core)
    # Given the result of a bulk op's entry (routed to the mirror, so no gateway has seen its index)
    job = records(h)[0]["id"]
    moved = raft.run("move_job", {"job_id": job, "queue": "r"})
    core.on_results({"k": "applied", "index": h.index, "items": [], "woken": {}}, 1.0)
    # When a search arrives before that entry's frame / Then it waits for it, and sees the move
    core.on_request({"k": "search", "tag": ["gw", 1, 1], "op": "search_jobs", "args": {"queue": "r"}})
    core.step(1.0)
    assert core.take_outputs()[0] == []
    core.on_changes(moved)
    core.step(1.01)
    replies, _ = core.take_outputs()
    assert replies[0][1]["ok"]["total"] == 1
