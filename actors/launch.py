"""Entry point of one actor process: `python -m jobbie.actors.launch NAME CONFIG_PATH`."""
from __future__ import annotations

import ctypes
import importlib
import logging
import os
import signal
import sys

from .config import ACTORS, NodeConfig


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
    try:
        import setproctitle
        setproctitle.setproctitle(f"jobbie-{name} [{config.node_id}]")
    except ImportError:
        pass
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s")
    if os.getppid() != parent or parent == 1:
        return 1
    module = importlib.import_module(f"jobbie.actors.{name}.actor")
    return module.run(config) or 0


if __name__ == "__main__":
    sys.exit(main())
