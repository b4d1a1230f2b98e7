"""The actor processes' logs: written to DATA_DIR/logs/NAME.log and rotated by size."""
from __future__ import annotations

import logging

from jobbie.actors import launch


def test_actor_logs_rotate_by_size_and_keep_a_bounded_number_of_files(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "LOG_BYTES_MAX", 2000)
    monkeypatch.setattr(launch, "LOG_BACKUPS", 2)
    root = logging.getLogger()
    before = list(root.handlers)
    path = tmp_path / "gateway.log"
    try:
        launch._log_to(str(path), "gateway")
        # When much more than the cap is logged
        for i in range(200):
            logging.getLogger("jobbie.gateway").warning("line %d %s", i, "x" * 40)
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
                handler.close()
    # Then the live file and two old ones exist, none far over the cap, and the newest line is in the live file
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["gateway.log", "gateway.log.1", "gateway.log.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    text = path.read_text()
    assert "line 199" in text and text.split(" ")[2].startswith("gateway[")


def test_last_error_line_takes_a_tracebacks_last_line_or_the_last_error_record(tmp_path):
    from jobbie.actors.supervisor import last_error_line
    log = tmp_path / "raft.log"
    log.write_text("2026-01-01 raft[1] INFO x: started\nTraceback (most recent call last):\n  File \"a.py\", line 1\n"
                   "lmdb.MapFullError: mdb_put: MDB_MAP_FULL: Environment mapsize limit reached\n"
                   "2026-01-01 raft[2] INFO x: started again\n")
    assert last_error_line(str(log)).startswith("lmdb.MapFullError: mdb_put")
    log.write_text("2026-01-01 gateway[1] INFO x: ok\n2026-01-01 gateway[1] ERROR x: cannot bind\n2026-01-01 gateway[1] INFO y\n")
    assert last_error_line(str(log)) == "2026-01-01 gateway[1] ERROR x: cannot bind"
    log.write_text("all fine\n")
    assert last_error_line(str(log)) is None
    assert last_error_line(str(tmp_path / "missing.log")) is None


def test_pysyncobjs_resend_alarm_becomes_one_warning_a_minute():
    import logging
    from jobbie.actors.raft.actor import ResendFilter
    clock = [100.0]
    f = ResendFilter(every_s=60.0, clock=lambda: clock[0])

    def record(msg, *args):
        return logging.LogRecord("pysyncobj.syncobj", logging.CRITICAL, "x", 1, msg, args, None)
    alarm = ("truncating already-applied log entries from index %d (last applied: %d) - state machine may have "
             "diverged from other cluster members")
    first = record(alarm, 5, 7)
    assert f.filter(first) and first.levelname == "WARNING" and "not a divergence" in first.getMessage()
    assert "index 5 (last applied: 7)" in first.getMessage()
    assert not f.filter(record(alarm, 6, 8)) and not f.filter(record(alarm, 7, 9))
    clock[0] += 61
    later = record(alarm, 8, 10)
    assert f.filter(later) and "(2 more since the last note)" in later.getMessage()
    other = record("something else %s", "x")
    assert f.filter(other) and other.levelname == "CRITICAL"


def test_disk_watch_stops_writes_under_the_reserve_and_resumes_past_a_margin():
    from types import SimpleNamespace
    from jobbie.actors.raft.disk import MIB, RESUME_MARGIN_BYTES, DiskWatch
    free = [500 * MIB]
    watch = DiskWatch("/data", 100 * MIB, statvfs=lambda _: SimpleNamespace(f_bavail=free[0], f_frsize=1))
    assert watch.check() == {"free_bytes": 500 * MIB, "min_free_bytes": 100 * MIB, "low": False}
    free[0] = 99 * MIB
    assert watch.check()["low"] is True
    free[0] = 100 * MIB + RESUME_MARGIN_BYTES - 1  # past the reserve, not past the margin: still low
    assert watch.check()["low"] is True
    free[0] = 100 * MIB + RESUME_MARGIN_BYTES
    assert watch.check()["low"] is False

    def broken(_):
        raise OSError("gone")
    assert DiskWatch("/x", 1, statvfs=broken).check() == {"free_bytes": None, "min_free_bytes": 1, "low": False}
