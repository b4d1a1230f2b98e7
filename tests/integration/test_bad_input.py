"""Bad input against a live node, over raw ZeroMQ sockets (the bad-input table of docs/protocol.md).

Every case sends raw bytes on a fresh DEALER socket and expects exactly one
`{"id": <id or -1>, "err": {"code": "INVALID_ARGUMENT", ...}}` naming the field
where one applies; then the SAME socket must get a normal answer to a valid
request, and that answer (list_queues) must equal the snapshot taken before
any bad input was sent: no bad frame changes state.

Most cases are generated from the op registry (`jobbie.transport.ops.OPS`):
wrong types for every typed enqueue arg (nested struct fields included),
out-of-range values for every bounded number of every client op, a missing
value for every required arg, an unknown arg for every op, every internal op.

The cases share one node (module scope, started like the `node` fixture and
torn down the same way) so that the last test can check that, after all of
them, the node still serves with no actor restarted and no state changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import msgpack
import pytest
import zmq

from jobbie.transport.codec import FRAME_BYTES_MAX, FRAME_CUT_BYTES
from jobbie.transport.ops import OPS

from .conftest import Node

pytestmark = pytest.mark.timeout(60)

PROBE_QUEUE = "bad-input-probe"
VALID_ID = 4242
REPLY_TIMEOUT_S = 5.0
CLIENT_OPS = sorted(name for name, op in OPS.items() if op.path != "internal")
INTERNAL_OPS = sorted(name for name, op in OPS.items() if op.path == "internal")


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# ------------------------------------------------------------------ raw socket
class RawSocket:
    """One DEALER (or REQ) socket that sends raw frames and reads one raw reply."""

    def __init__(self, endpoint: str, kind=zmq.DEALER):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes]):
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = REPLY_TIMEOUT_S) -> list[bytes] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv_multipart()

    def roundtrip(self, frames: list[bytes], timeout: float = REPLY_TIMEOUT_S) -> dict:
        """Send `frames`, return the decoded reply.

        The reply is one frame, except after a malformed multi-part message,
        which the server may answer with an empty delimiter frame first: any
        frame before the last must then be empty.
        """
        self.send(frames)
        reply = self.recv(timeout)
        assert reply is not None, f"no reply within {timeout}s to {[f[:40] for f in frames]!r}"
        assert all(f == b"" for f in reply[:-1]), f"unexpected extra reply frames {reply[:-1]!r}"
        return msgpack.unpackb(reply[-1], raw=False)

    def close(self):
        self.sock.close(linger=0)


def assert_usable(sock: RawSocket, snapshot: list):
    """The same socket still gets a normal answer, and the state is what it was."""
    reply = sock.roundtrip([pack({"id": VALID_ID, "op": "list_queues", "args": {}})])
    assert reply == {"id": VALID_ID, "ok": {"queues": snapshot}}


def assert_invalid(reply: dict, req_id: int, field: str | None = None, reason: str | None = None):
    assert set(reply) == {"id", "err"}, reply
    assert reply["id"] == req_id, reply
    err = reply["err"]
    assert err["code"] == "INVALID_ARGUMENT", reply
    assert isinstance(err["message"], str) and err["message"], reply
    if field is not None:
        assert err.get("field") == field, reply
    if reason is not None:
        assert err.get("reason") == reason, reply


# ----------------------------------------------------------------- shared node
@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One node for every case, seeded with a little state; yields (node, snapshot)."""
    node = Node(tmp_path_factory.mktemp("bad-input") / "node")
    node.start()
    try:
        client = node.client()
        client.enqueue("seed", {"n": 1})
        client.enqueue("seed", {"n": 2}, priority="high", tags={"k": "v"})
        client.enqueue("seed-done", {"n": 3})
        (job,) = client.fetch("seed-done", "seeder", lease_ms=12 * 3_600_000)
        client.ack(job["job_id"], attempt=job["attempt"], result="ok")
        client.enqueue("seed-paused", {"n": 4})
        client.pause("seed-paused")
        snapshot = client.queues()
        assert {q["name"] for q in snapshot} == {"seed", "seed-done", "seed-paused"}
        status = node.status()
        shared_state = {"snapshot": snapshot, "pids": {a["name"]: a["pid"] for a in status["actors"]},
                        "invalid_before": status["gateway"]["invalid"], "sent": 0}
        yield node, shared_state
    finally:
        try:
            node.stop(timeout=10)
        except Exception:
            pass
        node.kill_everything()


@pytest.fixture
def raw(shared):
    node, _ = shared
    sock = RawSocket(node.endpoint)
    yield sock
    sock.close()


# ----------------------------------------------------------------- case tables
@dataclass(frozen=True)
class Case:
    name: str
    frames: tuple
    req_id: int = -1
    field: str | None = None
    reason: str | None = None


def request(op, args, req_id=7) -> bytes:
    return pack({"id": req_id, "op": op, "args": args})


#: Valid values for required args whose kind alone does not say what is valid.
NAMED_VALUES = {"cron": "* * * * *", "timezone": "UTC", "address": "127.0.0.1:8704", "confirm": True}


def valid_value(arg):
    if arg.name in NAMED_VALUES:
        return NAMED_VALUES[arg.name]
    if arg.kind == "struct":
        return {f.name: valid_value(f) for f in arg.fields if f.required}
    if arg.choices:
        return arg.choices[0]
    values = {"queue": PROBE_QUEUE, "id": "job_probe", "queues": [PROBE_QUEUE], "any": {"x": 1},
              "map": {}, "list": [{"queue": PROBE_QUEUE, "payload": 1}], "str": "probe", "bool": False,
              "int": int(arg.low if arg.low is not None else 1), "float": float(arg.low or 0),
              "str_map": {}, "raft_address": "127.0.0.1:8704"}
    return values[arg.kind]


def base_args(op_name: str) -> dict:
    """Valid values for the required args of a client op (validation alone must accept them)."""
    return {a.name: valid_value(a) for a in OPS[op_name].args if a.required}


def with_value(op_name: str, path: tuple, value) -> dict:
    """base_args(op) with `value` set at `path` (nested for struct fields)."""
    args = base_args(op_name)
    target = args
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return args


def walk_args(rows, path=()):
    """(path, Arg) for every arg, descending into struct fields."""
    for arg in rows:
        yield path + (arg.name,), arg
        if arg.kind == "struct":
            yield from walk_args(arg.fields, path + (arg.name,))


#: Values of the wrong type for each arg kind: bool/float/str for int, int for str, list for map...
WRONG_TYPES = {
    "int": [("bool", True), ("float", 1.0), ("str", "1"), ("list", [1])],
    "float": [("str", "1.5"), ("bool", True)],
    "str": [("int", 1), ("bin", b"abc")],
    "queue": [("int", 1), ("bin", b"abc")],
    "id": [("int", 1), ("bin", b"abc")],
    "bool": [("int", 1), ("str", "true")],
    "struct": [("list", [1])],
    "str_map": [("list", [1]), ("str", "k=v")],
    "map": [("list", [1])],
    "list": [("map", {"a": 1})],
    "queues": [("str", PROBE_QUEUE)],
}


def wrong_type_cases():
    for path, arg in walk_args(OPS["enqueue"].args):
        for label, value in WRONG_TYPES.get(arg.kind, ()):
            field = ".".join(path)
            yield Case(f"enqueue.{field}={label}", (request("enqueue", with_value("enqueue", path, value)),),
                       7, field, "wrong_type")
    # Inside a string map, a non-string value names the key.
    yield Case("enqueue.tags.k=int", (request("enqueue", with_value("enqueue", ("tags",), {"k": 1})),),
               7, "tags.k", "wrong_type")


def out_of_range_values(arg):
    out = []
    if arg.kind == "int":
        if arg.low is not None:
            out.append(("below", int(arg.low) - 1))
        if arg.high is not None and arg.high < 2**64 - 1:
            out.append(("above", int(arg.high) + 1))
        out.append(("u64max", 2**64 - 1))  # > 2**63: msgpack allows it, int64 storage does not
    elif arg.kind == "float":
        if arg.low is not None:
            out.append(("below", arg.low - 1.0))
        if arg.high is not None:
            out.append(("above", arg.high * 10.0))
        out += [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)]
    return out


#: Values the brief names explicitly (some duplicate generated ones).
EXPLICIT_RANGE = [("enqueue", ("delay_ms",), -1), ("fetch", ("lease_ms",), 10**15),
                  ("fetch", ("count",), 10**9), ("enqueue", ("run_at",), 2**63),
                  ("enqueue", ("max_retries",), 2**63)]


def out_of_range_cases():
    seen = set()
    for op_name in CLIENT_OPS:
        for path, arg in walk_args(OPS[op_name].args):
            for label, value in out_of_range_values(arg):
                field = ".".join(path)
                seen.add((op_name, path, repr(value)))
                yield Case(f"{op_name}.{field}={label}", (request(op_name, with_value(op_name, path, value)),),
                           7, field, "out_of_range")
    for op_name, path, value in EXPLICIT_RANGE:
        if (op_name, path, repr(value)) not in seen:
            field = ".".join(path)
            yield Case(f"{op_name}.{field}={value}", (request(op_name, with_value(op_name, path, value)),),
                       7, field, "out_of_range")


def missing_and_unknown_cases():
    for op_name in CLIENT_OPS:
        args = base_args(op_name)
        for name in args:
            partial = {k: v for k, v in args.items() if k != name}
            yield Case(f"{op_name}.missing-{name}", (request(op_name, partial),), 7, name, "missing_field")
        yield Case(f"{op_name}.unknown-priorty", (request(op_name, {**args, "priorty": "high"}),),
                   7, "priorty", "unknown_field")


BAD_NAMES = [("empty", ""), ("dash-first", "-x"), ("129-chars", "a" * 129), ("space", "a b"),
             ("nul", "a\x00b"), ("e-acute", "é"), ("rtl-override", "\u202e"), ("rtl-inside", "ab\u202ecd")]


def bad_name_cases():
    for label, name in BAD_NAMES:
        yield Case(f"enqueue.queue={label}", (request("enqueue", {"queue": name, "payload": 1}),),
                   7, "queue", "invalid_name")
        yield Case(f"pause_queue.queue={label}", (request("pause_queue", {"queue": name}),),
                   7, "queue", "invalid_name")
        yield Case(f"fetch.queues={label}", (request("fetch", {"queues": [PROBE_QUEUE, name], "worker_id": "w"}),),
                   7, "queues[1]", "invalid_name")


def nested(depth: int, req_id: int = 7) -> bytes:
    """An enqueue whose payload is `depth` nested lists, encoded by hand (packb stops at 511 levels)."""
    head = pack({"id": req_id, "op": "enqueue", "args": {"queue": PROBE_QUEUE, "payload": None}})
    assert head.endswith(b"\xc0")
    return head[:-1] + b"\x91" * depth + b"\xc0"


VALID = pack({"id": 7, "op": "list_queues", "args": {}})
# Hand-made: {"id": 7, "op": <str with bytes ff fe>} -- packb refuses to write invalid UTF-8.
BAD_UTF8 = b"\x82\xa2id\x07\xa2op\xa2\xff\xfe"
# Hand-made: an invalid UTF-8 str deep inside args (queue name).
BAD_UTF8_ARG = pack({"id": 7, "op": "enqueue", "args": {"payload": 1, "queue": "xy"}})[:-2] + b"\xff\xfe"

# Hand-made: a UTF-16 surrogate (U+D800) encoded as if it were UTF-8, as the queue name.
SURROGATE_ARG = pack({"id": 7, "op": "enqueue", "args": {"payload": 1, "queue": "xyz"}}).replace(
    b"\xa3xyz", b"\xa3\xed\xa0\x80")
# Hand-made: a map with the key "op" twice (msgpack-python silently keeps the last one).
DUPLICATE_KEY = b"\x83" + b"".join(pack(x) for x in ("id", 7, "op", "list_queues", "op", "list_queues"))

ENVELOPE_CASES = [
    Case("empty-frame", (b"",), reason="malformed"),
    Case("not-msgpack-c1", (b"\xc1",), reason="malformed"),
    # A malformed frame is answered under its own id when the id can be read before the fault.
    Case("truncated", (VALID[:-3],), req_id=7, reason="malformed"),
    Case("truncated-one-byte", (VALID[:1],), reason="malformed"),
    Case("trailing-bytes", (VALID + b"\x00",), req_id=7, reason="malformed"),
    Case("two-values", (VALID + VALID,), req_id=7, reason="malformed"),
    Case("list-not-map", (pack([7, "list_queues", {}]),), reason="malformed"),
    Case("int-not-map", (pack(7),), reason="malformed"),
    Case("str-not-map", (pack("list_queues"),), reason="malformed"),
    Case("no-id", (pack({"op": "list_queues", "args": {}}),), field="id", reason="missing_field"),
    Case("no-op", (pack({"id": 7, "args": {}}),), req_id=7, field="op", reason="missing_field"),
    Case("id-str", (pack({"id": "7", "op": "list_queues"}),), field="id", reason="wrong_type"),
    Case("id-float", (pack({"id": 7.0, "op": "list_queues"}),), field="id", reason="wrong_type"),
    Case("id-bool", (pack({"id": True, "op": "list_queues"}),), field="id", reason="wrong_type"),
    # nil means absent, for the envelope's keys as for args.
    Case("id-nil", (pack({"id": None, "op": "list_queues"}),), field="id", reason="missing_field"),
    Case("op-nil", (pack({"id": 7, "op": None}),), req_id=7, field="op", reason="missing_field"),
    Case("client-int", (pack({"id": 7, "op": "list_queues", "client": 5}),), req_id=7, field="client",
         reason="wrong_type"),
    Case("client-with-space", (pack({"id": 7, "op": "list_queues", "client": "a b"}),), req_id=7, field="client",
         reason="invalid_name"),
    Case("id-list", (pack({"id": [7], "op": "list_queues"}),), field="id", reason="wrong_type"),
    Case("op-int", (pack({"id": 7, "op": 5}),), req_id=7, field="op", reason="wrong_type"),
    Case("args-list", (pack({"id": 7, "op": "list_queues", "args": [1]}),), req_id=7, field="args",
         reason="wrong_type"),
    Case("unknown-envelope-field", (pack({"id": 7, "op": "list_queues", "x": 1}),), req_id=7, field="x",
         reason="unknown_field"),
    Case("invalid-utf8-op", (BAD_UTF8,), req_id=7, reason="malformed"),
    Case("invalid-utf8-arg", (BAD_UTF8_ARG,), req_id=7, reason="malformed"),
    Case("surrogate-in-str", (SURROGATE_ARG,), req_id=7, reason="malformed"),
    Case("duplicate-key", (DUPLICATE_KEY,), req_id=7, reason="malformed"),
    # A map key that is neither str nor bin: wrong_type, under the request's id, naming where.
    Case("non-str-key-top", (pack({"id": 7, "op": "list_queues", 1: 2}),), req_id=7, reason="wrong_type"),
    Case("non-str-key-args", (pack({"id": 7, "op": "enqueue", "args": {1: 2}}),), 7, "args", "wrong_type"),
    Case("bin-key-envelope", (pack({b"id": 7, "op": "list_queues"}),), field="id", reason="missing_field"),
    Case("bin-key-args", (request("enqueue", {"queue": PROBE_QUEUE, "payload": 1, b"priority": "high"}),),
         7, "args", "wrong_type"),
    Case("bin-key-tags", (request("enqueue", {"queue": PROBE_QUEUE, "payload": 1, "tags": {b"k": "v"}}),),
         7, "tags", "wrong_type"),
    Case("non-str-key-payload", (request("enqueue", {"queue": PROBE_QUEUE, "payload": {1: "x"}}),),
         7, "payload", "wrong_type"),
    Case("non-str-key-deep", (request("enqueue", {"queue": PROBE_QUEUE, "payload": {"a": [0, {2.5: 1}]}}),),
         7, "payload.a[1]", "wrong_type"),
    Case("ext-type", (request("enqueue", {"queue": PROBE_QUEUE, "payload": msgpack.ExtType(5, b"x")}),),
         req_id=7, reason="malformed"),
    Case("nesting-2000", (nested(2000),), req_id=7, reason="malformed"),
    Case("nesting-100", (nested(100),), req_id=7, field="payload", reason="too_deep"),
    Case("unknown-op-enqeue", (request("enqeue", {"queue": PROBE_QUEUE, "payload": 1}),), 7, "op", "unknown_op"),
    Case("unknown-op-empty", (request("", {}),), 7, "op", "unknown_op"),
    Case("three-frames", (b"a", b"b", b"c"), reason="malformed"),
    Case("two-frames-non-empty-first", (b"x", VALID), reason="malformed"),
    Case("delimiter-then-two-frames", (b"", VALID, VALID), reason="malformed"),
    *[Case(f"internal-op-{name}", (request(name, {}),), 7, "op", "unknown_op") for name in INTERNAL_OPS],
    Case("run_at-and-delay_ms", (request("enqueue", {"queue": PROBE_QUEUE, "payload": 1, "run_at": 1,
                                                     "delay_ms": 1}),), 7, "delay_ms", "conflicting_fields"),
    Case("backoff-max-below-base", (request("enqueue", {"queue": PROBE_QUEUE, "payload": 1,
                                                        "backoff": {"base_ms": 2000, "max_ms": 1000}}),),
         7, "backoff.max_ms", "out_of_range"),
    Case("priority-not-a-choice", (request("enqueue", {"queue": PROBE_QUEUE, "payload": 1, "priority": "urgent"}),),
         7, "priority", "invalid_choice"),
    Case("job_id-with-space", (request("get_job", {"job_id": "job 1"}),), 7, "job_id", "invalid_name"),
    Case("job_id-too-long", (request("get_job", {"job_id": "j" * 129}),), 7, "job_id", "invalid_name"),
    Case("request_id-nul", (request("enqueue", {"queue": PROBE_QUEUE, "payload": 1, "request_id": "a\x00"}),),
         7, "request_id", "invalid_name"),
    Case("batch-empty", (request("enqueue_batch", {"jobs": []}),), 7, "jobs", "too_large"),
    Case("batch-job-bad-queue", (request("enqueue_batch", {"jobs": [{"queue": "-x", "payload": 1}]}),),
         7, "jobs[0].queue", "invalid_name"),
    Case("id-echoed-negative", (request("enqeue", {}, req_id=-5),), -5, "op", "unknown_op"),
    Case("id-echoed-u64", (request("enqeue", {}, req_id=2**64 - 1),), 2**64 - 1, "op", "unknown_op"),
]

ALL_CASES = [*ENVELOPE_CASES, *wrong_type_cases(), *out_of_range_cases(), *missing_and_unknown_cases(),
             *bad_name_cases()]
assert len({c.name for c in ALL_CASES}) == len(ALL_CASES), "duplicate case names"


# ------------------------------------------------------------------------ tests
#: Cases that expose a known bug (kept, expected to fail until it is fixed). None of them changes state.
KNOWN_BUGS: dict[str, str] = {}


def _params(cases):
    for case in cases:
        if case.name in KNOWN_BUGS:
            yield pytest.param(case, marks=pytest.mark.xfail(strict=False, reason=KNOWN_BUGS[case.name]))
        else:
            yield case


@pytest.mark.parametrize("case", list(_params(ALL_CASES)), ids=lambda c: c.name)
def test_bad_frame_is_answered_and_socket_stays_usable(shared, raw, case):
    _, state = shared
    # Given a fresh DEALER socket on a node with some state
    # When a bad frame is sent
    reply = raw.roundtrip(list(case.frames))
    # Then it is answered with INVALID_ARGUMENT (id echoed when readable, else -1), naming the field
    assert_invalid(reply, case.req_id, case.field, case.reason)
    state["sent"] += 1
    # And the same socket then gets a normal answer, with nothing changed
    assert_usable(raw, state["snapshot"])


def test_many_bad_frames_pipelined_on_one_socket(shared, raw):
    _, state = shared
    # Given one socket
    cases = [c for c in ALL_CASES if len(c.frames) == 1 and c.name not in KNOWN_BUGS][:40]
    # When many bad frames go out back to back, each with its own id where the frame has one
    for case in cases:
        raw.send(list(case.frames))
    replies = []
    for _ in cases:
        frames = raw.recv()
        assert frames is not None, f"only {len(replies)} of {len(cases)} bad frames were answered"
        replies.append(msgpack.unpackb(frames[-1], raw=False))
    state["sent"] += len(cases)
    # Then every one is answered INVALID_ARGUMENT, and the socket still works
    assert all(r["err"]["code"] == "INVALID_ARGUMENT" for r in replies), replies
    assert sorted(r["id"] for r in replies) == sorted(c.req_id for c in cases)
    assert_usable(raw, state["snapshot"])


def test_frame_just_under_8_mib_is_answered_too_large(shared, raw):
    _, state = shared
    # Given an enqueue whose frame is just under the 8 MiB frame cap (payload far over the 1 MiB default)
    frame = pack({"id": 11, "op": "enqueue", "args": {"queue": PROBE_QUEUE, "payload": b"x" * (FRAME_BYTES_MAX - 4096)}})
    assert FRAME_BYTES_MAX - 8192 < len(frame) < FRAME_BYTES_MAX
    # When it is sent
    reply = raw.roundtrip([frame], timeout=10.0)
    state["sent"] += 1
    # Then it is read and answered (not dropped): payload too large
    assert_invalid(reply, 11, "payload", "too_large")
    assert_usable(raw, state["snapshot"])


def test_frame_over_8_mib_is_answered_and_counted(shared, raw):
    node, state = shared
    oversize_before = node.status()["gateway"]["oversize"]
    # Given a 9 MiB enqueue whose id comes after its args (other clients' encoders order keys freely)
    frame = pack({"op": "enqueue", "args": {"queue": PROBE_QUEUE, "payload": b"x" * (FRAME_BYTES_MAX + 2**20)},
                  "id": 12})
    assert FRAME_BYTES_MAX < len(frame) < FRAME_CUT_BYTES
    # When it is sent
    reply = raw.roundtrip([frame], timeout=10.0)
    state["sent"] += 1
    # Then it is refused in one line naming its size and the limit, under its own id, and counted
    assert_invalid(reply, 12, reason="too_large")
    assert f"{len(frame)} bytes" in reply["err"]["message"] and "8 MiB" in reply["err"]["message"]
    assert "field" not in reply["err"] or reply["err"]["field"] is None
    assert node.status()["gateway"]["oversize"] == oversize_before + 1
    assert_usable(raw, state["snapshot"])


def test_frame_over_the_socket_cut_does_not_break_the_node(shared, raw):
    _, state = shared
    # Given a frame over 16 MiB, which ZeroMQ cuts at the socket: no reply, the connection is reset
    frame = pack({"id": 13, "op": "enqueue", "args": {"queue": PROBE_QUEUE, "payload": b"x" * (FRAME_CUT_BYTES + 1024)}})
    raw.send([frame])
    assert raw.recv(timeout=2.0) is None
    # Then the same socket (reconnected by ZeroMQ) gets normal answers
    assert_usable(raw, state["snapshot"])


def test_req_socket_with_empty_delimiter(shared):
    node, state = shared
    # Given a REQ socket, which puts an empty delimiter frame before each request
    sock = RawSocket(node.endpoint, zmq.REQ)
    try:
        # When it sends bytes that are not msgpack, then a request with a bad arg
        reply = sock.roundtrip([b"\xc1"])
        assert_invalid(reply, -1, reason="malformed")
        reply = sock.roundtrip([request("enqueue", {"queue": PROBE_QUEUE, "payload": 1, "priorty": 1}, req_id=21)])
        assert_invalid(reply, 21, "priorty", "unknown_field")
        state["sent"] += 2
        # Then both are answered through the envelope, and a valid request works on the same socket
        assert_usable(sock, state["snapshot"])
    finally:
        sock.close()


def test_dealer_with_explicit_empty_delimiter(shared, raw):
    _, state = shared
    # Given a DEALER that sends [b"", frame], as a REQ socket would
    raw.send([b"", b"\xc1"])
    # Then the reply comes back in the same envelope
    frames = raw.recv()
    assert frames is not None and len(frames) == 2 and frames[0] == b""
    assert_invalid(msgpack.unpackb(frames[1], raw=False), -1, reason="malformed")
    raw.send([b"", pack({"id": VALID_ID, "op": "list_queues", "args": {}})])
    frames = raw.recv()
    assert frames is not None and frames[0] == b""
    assert msgpack.unpackb(frames[1], raw=False) == {"id": VALID_ID, "ok": {"queues": state["snapshot"]}}
    state["sent"] += 1


def test_timestamp_ext_is_refused(node):
    # Runs on its own node, so a regression (the frame creating a job) cannot spoil the shared snapshot.
    sock = RawSocket(node.endpoint)
    try:
        before = node.client().queues()
        # Given an enqueue whose payload holds a msgpack Timestamp (ext type -1)
        frame = request("enqueue", {"queue": PROBE_QUEUE, "payload": {"at": msgpack.Timestamp(1, 0)}}, req_id=41)
        # When it is sent
        reply = sock.roundtrip([frame])
        # Then it is refused like any other ext type, and nothing is stored
        assert_invalid(reply, 41)
        assert_usable(sock, before)
    finally:
        sock.close()


def test_payload_over_configured_cap(node_factory):
    # Given a node whose payload cap is 1024 bytes
    node = node_factory("capped", extra_args=["--payload-max-bytes", "1024"])
    sock = RawSocket(node.endpoint)
    try:
        before = node.client().queues()
        # When a 2 KiB payload is enqueued
        reply = sock.roundtrip([request("enqueue", {"queue": "capped", "payload": b"x" * 2048}, req_id=31)])
        # Then it is refused: field payload, reason too_large; nothing is stored
        assert_invalid(reply, 31, "payload", "too_large")
        assert_usable(sock, before)
        # And a payload under the cap is accepted on the same socket
        reply = sock.roundtrip([request("enqueue", {"queue": "capped", "payload": b"x" * 512}, req_id=32)])
        assert reply["id"] == 32 and reply["ok"]["state"] == "pending", reply
        # And a batch holding one oversized payload is refused as a whole
        reply = sock.roundtrip([request("enqueue_batch", {"jobs": [{"queue": "capped", "payload": 1},
                                                                   {"queue": "capped", "payload": b"y" * 2048}]},
                                        req_id=33)])
        assert_invalid(reply, 33, "jobs[1].payload", "too_large")
        (row,) = node.client().queues()
        assert row["name"] == "capped" and row["pending"] == 1
    finally:
        sock.close()


def test_zz_node_still_serving_and_unchanged(shared):
    """Runs last in this module: after every bad frame above, the node is healthy and unchanged."""
    node, state = shared
    status = node.status()
    # The node still leads and serves
    assert status["role"] == "leader"
    # Every actor is alive, none restarted, and they are the same processes as before
    assert status["actors"] and all(a["alive"] and a["restarts"] == 0 for a in status["actors"]), status["actors"]
    assert {a["name"]: a["pid"] for a in status["actors"]} == state["pids"]
    # The gateway counted the bad frames it refused
    assert status["gateway"]["invalid"] >= state["invalid_before"] + state["sent"]
    # No state changed
    with node.client() as client:
        assert client.queues() == state["snapshot"]
    assert node.proc.poll() is None
