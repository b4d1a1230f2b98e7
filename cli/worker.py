"""`jobbie worker module:app`: run the tasks of an App (mixed into cli.main.Cli)."""
from __future__ import annotations

import importlib
import logging
import os
import re
import sys

from jobbie.transport.errors import JobbieError

from .common import _duration, _fail

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_SPEC = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def load_app(spec: str):
    """The App that `module:attribute` (or `module`, attribute `app`) names; exits 2 with one line if not."""
    from jobbie.transport.app import App

    module_name, _, attr = str(spec).partition(":")
    attr = attr or "app"
    if not _SPEC.match(module_name) or not _SPEC.match(attr):
        _fail(f"worker: {spec!r} is not MODULE:APP (write e.g. jobbie worker tasks:app for app = App() in "
              "tasks.py; MODULE alone means MODULE:app)", 2)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` would: modules next to where the command runs
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # the module exists; something it imports is missing: its traceback says what
        _fail(f"worker: no module named {exc.name!r} (looked in {cwd} and the installed packages; run "
              f"jobbie worker from the directory that holds {module_name.replace('.', '/')}.py)", 2)
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            names = sorted(n for n, v in vars(module).items() if isinstance(v, App))
            hint = f"; it has {', '.join(names)}" if names else "; define one with app = App() there"
            _fail(f"worker: module {module_name} has no attribute {attr!r}{hint}", 2)
        target = getattr(target, part)
    if not isinstance(target, App):
        _fail(f"worker: {module_name}:{attr} is {type(target).__name__!r}, not a jobbie App (make one with "
              "app = App() and register handlers with @app.task(\"queue\"))", 2)
    return target


class WorkerCommands:
    def worker(self, app: str, queues: str = None, concurrency: int = None, log_level: str = "info",
               server: str = None, heartbeat: str = None):
        """Run the tasks of an App: jobbie worker tasks:app (tasks.py next to where you run it).

        Ctrl-C or SIGTERM stops fetching and lets running jobs finish; a second Ctrl-C stops at once.

        Args:
          app: MODULE:ATTRIBUTE naming the App (MODULE alone means MODULE:app); MODULE is imported from the
            current directory first, then from the installed packages.
          queues: Comma-separated queues to serve, a subset of the app's (default: all of them).
          concurrency: Handlers running at once (default: the app's).
          log_level: info (default: a start line and one line per job), debug, or warning.
          server: Endpoint(s) of the node (default: the app's server, else $JOBBIE_SERVER, else
            tcp://127.0.0.1:7700).
          heartbeat: Heartbeat interval, e.g. 1s or 500ms (default: the app's, else a third of the
            lease and at most 2 s).
        """
        level = LOG_LEVELS.get(str(log_level).lower())
        if level is None:
            _fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}; got {log_level!r}", 2)
        if concurrency is not None and (type(concurrency) is not int or concurrency < 1):
            _fail(f"--concurrency must be a whole number of at least 1; got {concurrency!r}", 2)
        heartbeat_ms = _duration(heartbeat, "--heartbeat")
        if heartbeat_ms is not None and not 100 <= heartbeat_ms <= 3_600_000:
            _fail(f"--heartbeat must be between 100ms and 1h; got {heartbeat!r}", 2)
        chosen = None
        if queues is not None:
            chosen = [q.strip() for q in str(queues).split(",") if q.strip()]
            if not chosen:
                _fail("--queues names no queue; give a comma-separated list such as --queues emails,reports", 2)
        target = load_app(app)
        if chosen is not None:
            unknown = [q for q in chosen if q not in target.tasks]
            if unknown:
                _fail(f"--queues: {app} has no task for queue {unknown[0]} (its queues: "
                      f"{', '.join(target.queues) or 'none'})", 2)
        if not target.tasks:
            _fail(f"worker: {app} has no tasks; register one with @app.task(\"queue\")", 2)
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("jobbie").setLevel(level)
        try:
            worker = target.worker(chosen, concurrency=concurrency, server=server, heartbeat_ms=heartbeat_ms)
        except ValueError as exc:
            _fail(f"worker: {exc}", 2)
        except JobbieError as exc:
            _fail(exc.message if exc.reason == "invalid_key" else f"--server: {exc.message}", 2)
        worker.run()
