"""From an LMDB job record to the mirror's SQLite row, and back to what search answers.

The row keeps the columns the search filters need, the payload as JSON text
(for `payload_contains` and `payload_jq`), and the LMDB record itself as a
blob, so search answers carry the record exactly as get_job would (payload
types intact) and a reconcile can compare rows with LMDB byte for byte
(`rev` is the record's CRC-32).

Payload JSON: msgpack values map to JSON the obvious way, except
- bin (bytes) becomes a base64 string (standard alphabet, with padding);
- map keys that are not strings become strings: an integer key its decimal
  text, a bin key its base64 text, anything else its `str()`;
- NaN and the infinities become the strings "NaN", "Infinity", "-Infinity"
  (SQLite's JSON functions refuse them as numbers).
"""
from __future__ import annotations

import base64
import json
import math
import zlib

from jobbie.transport.codec import decode_trusted

#: Fields the state machine keeps for itself (storage/reads.py hides them from get_job too).
PRIVATE = ("seq", "batch_counted")
PRIORITY_LEVEL = {"critical": 3, "high": 2, "normal": 1, "low": 0}
#: Error text kept per job for `error_contains` (every kept attempt's message, joined by newlines).
ERRORS_TEXT_MAX = 256 * 1024

COLUMNS = ("id", "rev", "queue", "state", "priority", "priority_level", "attempt", "max_retries", "created_at",
           "scheduled_at", "started_at", "completed_at", "failed_at", "expire_at", "updated_at", "worker_id",
           "batch_id", "unique_key", "has_errors", "error_count", "errors", "payload", "record")


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
    return str(key)


def _bytes_default(value):
    """json.dumps' `default`: bytes values as _jsonable spells them; anything else is refused."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _b64(value)
    raise TypeError(type(value).__name__)


def payload_json(payload) -> str:
    """The payload as compact JSON text (see the module docstring for non-JSON values).

    Most payloads are plain JSON values (bytes values at most): json encodes those in one C pass.
    A NaN or a bin map key makes it refuse, and the payload is then converted value by value. (A map
    with an integer key and a string key that spell the same, {1: .., "1": ..}, keeps both in the
    text; JSON readers take the last.)
    """
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                          default=_bytes_default)
    except (ValueError, TypeError):
        return json.dumps(_jsonable(payload), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def rev(raw: bytes) -> int:
    return zlib.crc32(raw)


def job_row(raw: bytes, errors: list) -> tuple[tuple, list]:
    """The SQLite row (in COLUMNS order) of one LMDB job record and its error records, and its tags."""
    raw = bytes(raw)
    job = decode_trusted(raw)
    messages = [str(e.get("error") or "") for e in errors]
    last = job.get("last_error")
    if last and last not in messages:
        messages.append(str(last))
    text = "\n".join(messages)
    if len(text) > ERRORS_TEXT_MAX:
        text = text[:ERRORS_TEXT_MAX]
    priority = job.get("priority") or "normal"
    return (
        job["id"], rev(raw), job.get("queue") or "", job.get("state") or "", priority,
        PRIORITY_LEVEL.get(priority, 1), int(job.get("attempt") or 0), job.get("max_retries"),
        int(job.get("created_at") or 0), job.get("run_at"), job.get("started_at"), job.get("completed_at"),
        job.get("failed_at"), job.get("expire_at"), job.get("updated_at"), job.get("worker_id"),
        job.get("batch_id"), job.get("unique_key"), 1 if (errors or last) else 0, len(errors),
        text or None, payload_json(job.get("payload")), raw,
    ), [(job["id"], str(k), str(v)) for k, v in (job.get("tags") or {}).items()]


def public_job(record: bytes) -> dict:
    """What search answers for one job: the record as get_job shows it, without `errors`."""
    job = decode_trusted(record)
    for name in PRIVATE:
        job.pop(name, None)
    return job
