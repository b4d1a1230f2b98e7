"""The msgpack codec (transport/codec.py): strict decoding of untrusted frames, and round-trips."""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobbie.transport.codec import DecodeError, decode, decode_trusted, encode, peek_request_id


def _deep(levels: int, container: bytes) -> bytes:
    """`levels` nested one-element arrays (0x91) or maps {"k": ...} (0x81 0xa1 'k'), around nil."""
    return container * levels + b"\xc0"


BAD_FRAMES = [
    ("empty", b""),
    ("reserved-byte-c1", b"\xc1"),
    ("truncated-map", encode({"id": 1, "op": "enqueue", "args": {"queue": "q"}})[:-3]),
    ("truncated-str", b"\xa5abc"),
    ("truncated-int", b"\xcd\x01"),
    ("trailing-bytes", encode({"id": 1}) + b"\x00"),
    ("two-values", encode(1) + encode(2)),
    ("invalid-utf8-str", b"\xa2\xff\xfe"),
    ("invalid-utf8-map-key", b"\x81\xa2\xc3\x28\x01"),
    ("int-map-key", encode({1: 2})),
    ("nil-map-key", b"\x81\xc0\x01"),
    ("list-map-key", b"\x81\x91\x01\x01"),
    ("map-map-key", b"\x81\x80\x01"),
    ("ext-type-5", msgpack.packb(msgpack.ExtType(5, b"x"))),
    ("ext-type-127", msgpack.packb(msgpack.ExtType(127, b"\x00" * 8))),
    ("deep-arrays-2000", _deep(2000, b"\x91")),
    ("deep-maps-2000", _deep(2000, b"\x81\xa1k")),
    ("huge-array-header", b"\xdd\xff\xff\xff\xff"),
    ("huge-map-header", b"\xdf\xff\xff\xff\xff"),
    ("huge-str-header", b"\xdb\xff\xff\xff\xff"),
]


@pytest.mark.parametrize("data", [d for _, d in BAD_FRAMES], ids=[n for n, _ in BAD_FRAMES])
def test_bad_frames_raise_decode_error(data):
    # Given a frame that is not one valid msgpack value for us
    # When it is decoded / Then DecodeError (a ValueError), never another exception
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert isinstance(info.value, ValueError)
    assert str(info.value)


def test_decode_error_keeps_the_raw_bytes_and_the_cause():
    # Given trailing bytes / When decoded / Then DecodeError keeps the frame and msgpack's error
    data = encode({"id": 1}) + b"\x00"
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.raw == data
    assert isinstance(info.value.cause, msgpack.ExtraData)


@pytest.mark.parametrize("data", [d for _, d in BAD_FRAMES], ids=[n for n, _ in BAD_FRAMES])
def test_every_decode_error_keeps_the_raw_frame(data):
    # (regression: the ext-type error used to carry an empty `raw`)
    # Given a bad frame / When decoded / Then DecodeError.raw is the frame
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.raw == data


def test_bin_map_keys_decode_and_are_left_to_the_validator():
    # Given a map with a bin key: msgpack's strict_map_key allows str and bin keys
    # When decoded / Then the bytes key comes through (ops.validate refuses it where it reads a map)
    assert decode(msgpack.packb({b"k": 1}, use_bin_type=True)) == {b"k": 1}


def test_timestamp_ext_is_the_one_ext_type_that_decodes():
    # Given the msgpack timestamp extension (type -1), which docs/protocol.md exempts from the
    # no-ext rule (msgpack decodes it without calling ext_hook)
    data = msgpack.packb(msgpack.Timestamp(1, 500))
    # When decoded / Then a Timestamp comes back
    assert decode(data) == msgpack.Timestamp(1, 500)


def test_nesting_just_inside_the_unpacker_stack_decodes():
    # Given nesting well below msgpack's stack limit / Then it decodes
    assert decode(_deep(500, b"\x91")) is not None


ROUND_TRIP = [
    None, True, False, 0, 1, -1, 127, 128, -32, -33, 2**31, 2**64 - 1, -(2**63), 1.5, -0.0, 1e308,
    "", "a", "é漢字🙂", "x" * 70_000, b"", b"\x00\xff", b"y" * 70_000, [], {}, [1, "a", None],
    {"id": 7, "op": "enqueue", "args": {"queue": "q", "payload": {"nested": [1, {"x": [True, None]}]}}},
]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=[repr(v)[:30] for v in ROUND_TRIP])
def test_round_trip(value):
    # Given a normal value / When encoded and decoded (strict and trusted) / Then it comes back equal
    data = encode(value)
    assert decode(data) == value
    assert decode_trusted(data) == value
    assert type(decode(data)) is type(value)


def test_str_is_encoded_as_str_and_bytes_as_bin():
    # Given str and bytes / When encoded / Then msgpack str and bin
    assert encode("a") == b"\xa1a"
    assert encode(b"a") == b"\xc4\x01a"
    assert decode(b"\xc4\x01a") == b"a"


def test_tuples_decode_as_lists():
    # Given a tuple / When round-tripped / Then it comes back as a list
    assert decode(encode((1, (2, 3)))) == [1, [2, 3]]


def test_decode_trusted_allows_non_str_keys_for_internal_records():
    # Given an int key / When decoded as trusted / Then it is kept
    assert decode_trusted(encode({1: "a"})) == {1: "a"}


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None, database=None)
@given(msgpack_values)
def test_round_trip_property(value):
    # Given any msgpack value / When encoded and decoded / Then it comes back equal
    assert decode(encode(value)) == value


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    # Given any bytes / When decoded / Then a value or DecodeError, nothing else
    try:
        decode(data)
    except DecodeError:
        pass


@pytest.mark.parametrize("frame,want", [
    (encode({"id": 7, "op": "enqueue", "args": {"payload": b"x" * 100}}), 7),
    (encode({"op": "enqueue", "args": {"payload": [1] * 100}, "id": 2**64 - 1}), 2**64 - 1),
    (encode({"op": "enqueue", "args": {}}), -1),  # no id
    (encode({"id": True, "op": "x"}), -1),  # a bool is not an id
    (encode({"id": "7", "op": "x"}), -1),
    (encode([7, "enqueue"]), -1),  # not a map
    (encode({"op": "enqueue", "args": {"payload": b"x" * 100}, "id": 7})[:20], -1),  # cut before the id
    (b"\xc1", -1),
    (b"", -1),
])
def test_peek_request_id_reads_only_the_top_map(frame, want):
    # Given a frame too large to decode / Then its id (wherever it sits in the map) or -1
    assert peek_request_id(frame) == want


@pytest.mark.parametrize("value, field", [
    ({"id": 1, "op": "x", 5: 1}, None),
    ({"id": 1, "op": "x", "args": {5: 1}}, "args"),
    ({"id": 1, "op": "x", "args": {"payload": {"a": [1, {None: 2}]}}}, "payload.a[1]"),
    ({"id": 1, "op": "x", "args": {"jobs": [{"payload": {True: 1}}]}}, "jobs[0].payload"),
])
def test_a_key_that_is_neither_str_nor_bin_is_wrong_type_naming_where(value, field):
    # Given a frame whose only fault is one map key's type
    data = msgpack.packb(value, use_bin_type=True, strict_types=False)
    # When decoded / Then the error is wrong_type, names the place, and keeps the frame for its id
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert (info.value.reason, info.value.field) == ("wrong_type", field)
    assert info.value.value["id"] == 1


def test_a_frame_broken_otherwise_stays_malformed():
    with pytest.raises(DecodeError) as info:
        decode(msgpack.packb({"id": 1, 5: 1})[:-1])
    assert info.value.reason == "malformed" and info.value.value is None
