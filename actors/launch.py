"""Entry point of one actor process: `python -m jobbie.actors.launch NAME CONFIG_PATH`."""
from __future__ import annotations

import ctypes
import importlib
import logging
import logging.handlers
import os
import signal
import sys

from .config import ACTORS, NodeConfig

#: Each actor's log is rotated at this size; this many older files are kept (NAME.log.1 ...).
LOG_BYTES_MAX = 64 * 1024 * 1024
LOG_BACKUPS = 4


def _die_with_parent():
    """Ask Linux to SIGKILL this process when the supervisor dies, so no actor outlives its node."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    name, config_path = argv
    if name not in ACTORS:
        raise SystemExit(f"unknown actor {name!r}")
    _die_with_parent()
    parent = os.getppid()
    config = NodeConfig.load(config_path)
    # The raft password is not in the config file: the supervisor hands it to the raft actor alone.
    config.raft_password = os.environ.pop("JOBBIE_ACTOR_RAFT_PASSWORD", "")
    try:
        import setproctitle
        setproctitle.setproctitle(f"jobbie-{name} [{config.node_id}]")
    except ImportError:
        pass
    _log_to(os.path.join(config.log_dir, f"{name}.log"), name, config.log_level, config.log_format)
    if os.getppid() != parent or parent == 1:
        return 1
    module = importlib.import_module(f"jobbie.actors.{name}.actor")
    return module.run(config) or 0


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, actor, pid, logger, msg (and exc)."""

    def __init__(self, actor: str):
        super().__init__()
        self.actor = actor

    def format(self, record: logging.LogRecord) -> str:
        import datetime
        import json
        line = {"ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": record.levelname.lower(), "actor": self.actor, "pid": record.process,
                "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(actor: str, log_format: str = "text") -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(actor)
    return logging.Formatter(f"%(asctime)s {actor}[%(process)d] %(levelname)s %(name)s: %(message)s")


def _log_to(path: str, name: str, level: str = "info", log_format: str = "text"):
    """Log to DATA_DIR/logs/NAME.log, rotated at LOG_BYTES_MAX with LOG_BACKUPS old files kept.

    stderr (the same file, opened by the supervisor) still takes what bypasses logging, such as
    an interpreter crash; after a rotation those rare lines land in NAME.log.1.
    """
    fmt = formatter(name, log_format)
    try:
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_BYTES_MAX, backupCount=LOG_BACKUPS)
    except OSError:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(fmt)
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.addHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
