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
