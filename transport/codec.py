"""The only place that calls msgpack.

Decoding is strict: map keys must be str or bin (msgpack's strict_map_key;
the op validator then accepts only str keys where it reads a map), no ext
types (the timestamp extension is refused by the op validator), no duplicate
map keys, no trailing bytes, no invalid UTF-8, bounded nesting. Anything else is a `DecodeError` that keeps the cause, and the gateway
answers it with INVALID_ARGUMENT instead of crashing.
"""
from __future__ import annotations

import msgpack

#: Request frames up to this are read and answered as requests (PROTOCOL.md).
FRAME_BYTES_MAX = 8 * 1024 * 1024
#: The gateway's ZMQ_MAXMSGSIZE: frames above FRAME_BYTES_MAX and up to this are read only to be
#: refused (INVALID_ARGUMENT too_large, counted); larger ones are cut by ZeroMQ, which resets the
#: connection and reports nothing that tells the cut from a client going away.
FRAME_CUT_BYTES = 16 * 1024 * 1024


class DecodeError(ValueError):
    """A frame that is not valid msgpack for us; `raw` keeps the bytes."""

    def __init__(self, message: str, raw: bytes = b"", cause: Exception | None = None):
        super().__init__(message)
        self.raw = raw
        self.cause = cause


def _no_ext(code, data):
    raise DecodeError(f"msgpack extension type {code} is not accepted")


def _map_without_duplicates(pairs):
    # msgpack would keep the last of two equal keys silently; a frame that says
    # two things for one field is refused instead (about 1 us per request).
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DecodeError(f"map has the key {str(key)[:64]!r} twice")
            seen.add(key)
    return out


def is_request_id(value) -> bool:
    """A request `id` is an integer msgpack can carry (a bool is not one)."""
    return type(value) is int and -2**63 <= value < 2**64


def peek_request_id(data: bytes) -> int:
    """The `id` of a request frame too large to decode (-1 when it cannot be found cheaply).

    Reads the top map key by key and skips every value but the id's without building it.
    """
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data) or 1)
        unpacker.feed(data)
        for _ in range(min(unpacker.read_map_header(), 8)):
            if unpacker.unpack() == "id":
                value = unpacker.unpack()
                return value if is_request_id(value) else -1
            unpacker.skip()
    except Exception:  # not a map, truncated, anything: no id
        pass
    return -1


def encode(obj) -> bytes:
    """Encode one value (str as str, bytes as bin)."""
    return msgpack.packb(obj, use_bin_type=True)


def decode(data: bytes):
    """Decode a frame from an untrusted peer."""
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=_no_ext, use_list=True,
            object_pairs_hook=_map_without_duplicates)
    except DecodeError as exc:
        raise DecodeError(str(exc), data, exc.cause) from exc
    except msgpack.ExtraData as exc:
        raise DecodeError("frame has bytes after the msgpack value", data, exc) from exc
    except UnicodeDecodeError as exc:
        raise DecodeError("a msgpack str is not valid UTF-8", data, exc) from exc
    except msgpack.StackError as exc:
        raise DecodeError("frame nests too deeply", data, exc) from exc
    except (ValueError, TypeError) as exc:
        # FormatError, "incomplete input", non-str map keys, unhashable keys...
        raise DecodeError(f"frame is not valid msgpack: {exc}", data, exc) from exc


def decode_trusted(data: bytes):
    """Decode a frame written by another jobbie process (no untrusted-input checks)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
