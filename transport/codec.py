"""The only place that calls msgpack.

Decoding is strict: map keys must be str or bin (msgpack's strict_map_key;
a frame that breaks only this rule is refused as `wrong_type` naming where,
with its id; the op validator then accepts only str keys where it reads a map), no ext
types (the timestamp extension is refused by the op validator), no duplicate
map keys, no trailing bytes, no invalid UTF-8, bounded nesting. Anything else is a `DecodeError` that keeps the cause, and the gateway
answers it with INVALID_ARGUMENT instead of crashing.
"""
from __future__ import annotations

import msgpack

#: Request frames up to this are always read and answered as requests (protocol v1 promises 8 MiB).
FRAME_BYTES_MAX = 8 * 1024 * 1024
#: The gateway's ZMQ_MAXMSGSIZE: frames above FRAME_BYTES_MAX and up to this are read only to be
#: refused (INVALID_ARGUMENT too_large, counted); larger ones are cut by ZeroMQ, which resets the
#: connection and reports nothing that tells the cut from a client going away.
FRAME_CUT_BYTES = 16 * 1024 * 1024


class DecodeError(ValueError):
    """A frame that is not valid msgpack for us; `raw` keeps the bytes.

    `reason` is the protocol reason (`malformed`, or `wrong_type` for a map key that is neither str
    nor bin, when `field` names where and `value` holds the frame decoded without that rule, so the
    request's id can still be answered).
    """

    def __init__(self, message: str, raw: bytes = b"", cause: Exception | None = None,
                 reason: str = "malformed", field: str | None = None, value=None):
        super().__init__(message)
        self.raw = raw
        self.cause = cause
        self.reason = reason
        self.field = field
        self.value = value


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


def _key_type_error(data: bytes, exc: Exception) -> DecodeError | None:
    """The frame decoded without the str-key rule: a `wrong_type` DecodeError naming the first map
    whose key is neither str nor bin, or None when the frame is broken in another way."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_no_ext, use_list=True,
                                object_pairs_hook=_map_without_duplicates)
    except Exception:
        return None
    stack = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                if type(key) not in (str, bytes):
                    where = path.removeprefix("args.") if path != "args" else "args"
                    return DecodeError(f"map keys must be strings; {where or 'the request'} has a key of type "
                                       f"{type(key).__name__}", data, exc, reason="wrong_type",
                                       field=where or None, value=value)
                if type(key) is str:
                    stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(node, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node))
    return None


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
        key_error = _key_type_error(data, exc)
        if key_error is not None:
            raise key_error from exc
        raise DecodeError(f"frame is not valid msgpack: {exc}", data, exc) from exc


def decode_trusted(data: bytes):
    """Decode a frame written by another jobbie process (no untrusted-input checks)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
