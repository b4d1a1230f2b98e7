"""From an LMDB job record to the mirror's SQLite row, and back to what search answers.

The row keeps the columns the search filters need, the payload as JSON text
(for `payload_contains` and `payload_jq`) and `rev`, the CRC-32 of the LMDB
record it was made from, so a reconcile finds stale rows without comparing
them column by column. It does not keep the record: search answers read the
records of their page from LMDB (one lookup per job), which keeps each row,
and so each write on the mirror's path, small.

Payload JSON: msgpack values map to JSON the obvious way, except
- bin (bytes) becomes a base64 string (standard alphabet, with padding);
- map keys that are not strings become strings: a number key its JSON text,
  a bin key its base64 text, true/false/nil "true"/"false"/"null";
- NaN and the infinities become the strings "NaN", "Infinity", "-Infinity"
  (SQLite's JSON functions refuse them as numbers).

Speed: this is the mirror's per-job work. msgspec decodes only the fields a
row needs (the rest of the record is skipped, not built) and encodes the
payload to JSON in one C pass; the value-by-value conversion runs only for
payloads that pass a NaN, an infinity or a key JSON cannot spell.
"""
from __future__ import annotations

import base64
import json
import math
import re
import zlib
from typing import Any

import msgspec

from jobbie.transport.codec import decode_trusted

#: Fields the state machine keeps for itself (storage/reads.py hides them from get_job too).
PRIVATE = ("seq", "batch_counted")
PRIORITY_LEVEL = {"critical": 3, "high": 2, "normal": 1, "low": 0}
#: Error text kept per job for `error_contains` (every kept attempt's message, joined by newlines).
ERRORS_TEXT_MAX = 256 * 1024

#: Only what searches filter or sort on: each column costs every write. `errors` is NULL for a job
#: without errors, else their text (maybe empty), so it answers `has_errors` too.
COLUMNS = ("id", "rev", "queue", "state", "priority_level", "attempt", "created_at", "scheduled_at", "started_at",
           "completed_at", "expire_at", "updated_at", "worker_id", "batch_id", "unique_key", "errors", "payload")


class _Record(msgspec.Struct):
    """The fields of an LMDB job record (storage/apply.py create_job) that a row is made of."""

    id: str
    queue: Any = None
    state: Any = None
    priority: Any = None
    attempt: Any = None
    created_at: Any = None
    run_at: Any = None
    started_at: Any = None
    completed_at: Any = None
    expire_at: Any = None
    updated_at: Any = None
    worker_id: Any = None
    batch_id: Any = None
    unique_key: Any = None
    last_error: Any = None
    tags: Any = None
    payload: msgspec.Raw = msgspec.Raw(b"\xc0")  # kept encoded: payload_json reads it


_RECORD = msgspec.msgpack.Decoder(_Record)
_VALUE = msgspec.msgpack.Decoder()
_JSON = msgspec.json.Encoder()
#: msgpack float32/float64 heads whose exponent bits are all ones start like these (NaN, the
#: infinities; also finite floats beyond ~1e304, which merely take the slow path).
_NON_FINITE = re.compile(rb"[\xca\xcb][\x7f\xff]")


def _b64(value) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def _jsonable(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _b64(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _key(key) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (bytes, bytearray)):
        return _b64(key)
    if isinstance(key, bool) or key is None:
        return json.dumps(key)
    if isinstance(key, int) or (isinstance(key, float) and math.isfinite(key)):
        return _JSON.encode(key).decode()
    return str(key)


def payload_json(packed) -> str:
    """A payload, given as its msgpack encoding (any buffer), as compact JSON text (see the module docstring)."""
    if _NON_FINITE.search(packed) is None:
        try:
            return _JSON.encode(_VALUE.decode(packed)).decode()
        except (TypeError, ValueError, msgspec.MsgspecError):  # a key JSON cannot spell, and the like
            pass
    return _JSON.encode(_jsonable(decode_trusted(packed))).decode()


def rev(raw: bytes) -> int:
    return zlib.crc32(raw)


def job_row(raw: bytes, errors: list) -> tuple[tuple, list]:
    """The SQLite row (in COLUMNS order) of one LMDB job record and its error records, and its tags."""
    job = _RECORD.decode(raw)
    last = job.last_error
    text = None
    if errors or last:
        messages = [str(e.get("error") or "") for e in errors]
        if last and last not in messages:
            messages.append(str(last))
        text = "\n".join(messages)[:ERRORS_TEXT_MAX]
    tags = job.tags
    return (
        job.id, rev(raw), job.queue or "", job.state or "", PRIORITY_LEVEL.get(job.priority, 1),
        int(job.attempt or 0), int(job.created_at or 0), job.run_at, job.started_at, job.completed_at,
        job.expire_at, job.updated_at, job.worker_id, job.batch_id, job.unique_key, text, payload_json(job.payload),
    ), [(job.id, str(k), str(v)) for k, v in tags.items()] if tags else []


def public_job(record: bytes) -> dict:
    """What search answers for one job: the record as get_job shows it, without `errors`."""
    job = decode_trusted(record)
    for name in PRIVATE:
        job.pop(name, None)
    return job
