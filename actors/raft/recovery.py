"""Start-up checks of the raft journal, and jobbie's snapshots of LMDB.

pysyncobj trusts its journal's bytes (no checksum, no length check): a torn tail loads
as garbage and wedges the apply loop. So before pysyncobj opens the journal,
`scan_journal` walks every record (length fields, consecutive indices,
terms, and a command that unpickles) and `cut_journal` cuts the file back
to the last good record, clamping the stored commit index with it.

A snapshot is one file: a 4-byte length, a msgpack header
`{magic, version, lmdb_engine, index, internal, sha256, body_bytes}` and the
body, a compacted copy of LMDB taken in one read transaction at exactly
`index` (the raft entry LMDB had applied). `internal` is pysyncobj's own
tuple (last two entries and the cluster), pickled with pysyncobj's pickle.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import struct
from dataclasses import dataclass

import pysyncobj.pickle as ps_pickle

from jobbie.transport import codec

log = logging.getLogger("jobbie.raft")

# pysyncobj 0.3.17 FileJournal layout: name(24) version(8) format(4) last_record_offset(4), then
# records: size(4) idx(8) term(8) command(size-16) size(4).
_HEADER = 40
_LAST_OFFSET_AT = 36
_COMMAND_REGULAR = 0
_COMMAND_TYPES = (0, 1, 2, 3)

SNAPSHOT_MAGIC = "jobbie-snapshot"
SNAPSHOT_VERSION = 1


@dataclass
class JournalScan:
    entries: int = 0
    first_index: int = 0
    last_index: int = 0
    good_offset: int = _HEADER
    recorded_offset: int = _HEADER
    problem: str | None = None

    @property
    def torn(self) -> bool:
        return self.problem is not None


def scan_journal(path: str) -> JournalScan:
    """Walk every record of a pysyncobj FileJournal; stop at the first one that is not sound."""
    scan = JournalScan()
    if not os.path.exists(path):
        return scan
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER:
        scan.problem = "journal shorter than its header"
        scan.good_offset = 0
        return scan
    recorded = struct.unpack_from("<I", data, _LAST_OFFSET_AT)[0]
    scan.recorded_offset = recorded
    if recorded > len(data):
        scan.problem = f"last-record offset {recorded} is past the end of the file ({len(data)} bytes)"
        recorded = len(data)
    offset, prev_index, prev_term = _HEADER, None, 0
    while offset < recorded:
        problem = None
        if offset + 4 > recorded:
            problem = "record length cut off"
        else:
            size = struct.unpack_from("<I", data, offset)[0]
            end = offset + 4 + size + 4
            if size < 17 or end > recorded:
                problem = f"record at {offset} claims {size} bytes"
            elif struct.unpack_from("<I", data, offset + 4 + size)[0] != size:
                problem = f"record at {offset} has mismatched length fields"
            else:
                idx, term = struct.unpack_from("<QQ", data, offset + 4)
                command = data[offset + 20:offset + 4 + size]
                if prev_index is not None and idx != prev_index + 1:
                    problem = f"record at {offset} has index {idx} after {prev_index}"
                elif term < prev_term:
                    problem = f"record at {offset} has term {term} after {prev_term}"
                elif not command or command[0] not in _COMMAND_TYPES:
                    problem = f"record at {offset} has an unknown command type"
                elif command[0] == _COMMAND_REGULAR:
                    try:
                        ps_pickle.loads(command[1:])
                    except Exception as exc:  # noqa: BLE001 - any failure means garbage
                        problem = f"record {idx} does not unpickle ({type(exc).__name__})"
        if problem:
            scan.problem = problem
            break
        if prev_index is None:
            scan.first_index = idx
        prev_index, prev_term = idx, term
        scan.last_index = idx
        scan.entries += 1
        offset = end
    scan.good_offset = offset
    if not scan.problem and recorded != scan.recorded_offset:
        scan.problem = "last-record offset past the end of the file"
    return scan


def cut_journal(path: str, scan: JournalScan):
    """Make the journal end after its last good record, and clamp the stored commit index."""
    with open(path, "r+b") as f:
        f.seek(_LAST_OFFSET_AT)
        f.write(struct.pack("<I", scan.good_offset))
        f.flush()
        os.fsync(f.fileno())
    meta_path = path + ".meta"
    if os.path.exists(meta_path):
        try:
            with open(meta_path, "rb") as f:
                meta = ps_pickle.loads(f.read())
        except Exception:  # noqa: BLE001
            meta = {}
        commit = meta.get("raftCommitIndex", 1)
        if commit > max(scan.last_index, 1):
            meta["raftCommitIndex"] = max(scan.last_index, 1)
            with open(meta_path + ".tmp", "wb") as f:
                f.write(ps_pickle.dumps(meta))
                f.flush()
                os.fsync(f.fileno())
            os.replace(meta_path + ".tmp", meta_path)


# ---------------------------------------------------------------------------- snapshots

def write_snapshot(path: str, env, txn, index: int, internal, engine: int = 0):
    """Write a snapshot of `env` as seen by `txn` (at raft `index`) to `path`, fsynced."""
    body_path = path + ".body"
    with open(body_path, "wb") as body:
        env.copyfd(body.fileno(), compact=True, txn=txn)
        body.flush()
        os.fsync(body.fileno())
    digest = hashlib.sha256()
    size = 0
    with open(body_path, "rb") as body:
        while chunk := body.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    header = codec.encode({"magic": SNAPSHOT_MAGIC, "version": SNAPSHOT_VERSION, "lmdb_engine": engine,
                           "index": index, "internal": ps_pickle.dumps(internal),
                           "sha256": digest.hexdigest(), "body_bytes": size})
    with open(path, "wb") as out, open(body_path, "rb") as body:
        out.write(struct.pack("<I", len(header)))
        out.write(header)
        shutil.copyfileobj(body, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    os.unlink(body_path)


def read_snapshot_header(path: str) -> dict | None:
    """The header of a snapshot file, or None if there is none or it is not ours."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4)
            if len(raw) < 4:
                return None
            (length,) = struct.unpack("<I", raw)
            if length > 1 << 24:
                return None
            header = codec.decode_trusted(f.read(length))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("magic") != SNAPSHOT_MAGIC:
        return None
    header["body_offset"] = 4 + length
    return header


def verify_snapshot(path: str) -> dict:
    """The header of a snapshot whose body checks out; raises ValueError otherwise."""
    header = read_snapshot_header(path)
    if header is None:
        raise ValueError(f"{path} is not a jobbie snapshot")
    if header.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"snapshot version {header.get('version')} is not supported")
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        f.seek(header["body_offset"])
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    if size != header["body_bytes"] or digest.hexdigest() != header["sha256"]:
        raise ValueError(f"snapshot {path} is damaged (size or sha256 mismatch)")
    return header


def unpack_snapshot(path: str, header: dict, lmdb_dir: str):
    """Write the snapshot's LMDB copy as `lmdb_dir`/data.mdb (the directory must not exist)."""
    os.makedirs(lmdb_dir)
    with open(path, "rb") as src, open(os.path.join(lmdb_dir, "data.mdb"), "wb") as dst:
        src.seek(header["body_offset"])
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
    fsync_dir(lmdb_dir)


def fsync_dir(path: str):
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def snapshot_internal(header: dict):
    return ps_pickle.loads(header["internal"])
