"""A task registry for workers: `App`, run by `app.run()` or `jobbie worker module:app`.

    from jobbie import App

    app = App(concurrency=4)

    @app.task("emails", timeout="30s")
    def send_email(job):
        return {"sent": True}

    if __name__ == "__main__":
        app.run()

One handler per queue per app; `@app.task("a", "b")` gives one function
several queues. A second handler for a queue already taken is a ValueError
naming the queue. Per-task options: `timeout` (seconds, or a duration string
such as "30s" or "500ms": how long the handler may run before the worker fails
the attempt) and `lease_ms` (the lease its jobs are fetched with).
"""
from __future__ import annotations

import re

from .ops import QUEUE_NAME
from .worker import Worker

_SPAN = re.compile(r"(\d+)\s*(ms|s|m|h|d|w)?\Z")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def duration_ms(value, name: str, bare_unit: str = "ms") -> int:
    """`500ms`, `30s`, `15m`, `2h`, `7d`, `1w` as milliseconds; a bare number counts in `bare_unit`
    (None: a bare number is refused). Raises ValueError naming `name`."""
    m = _SPAN.match(str(value).strip().lower())
    if not m or (m.group(2) is None and bare_unit is None):
        raise ValueError(f"{name} must be a duration such as 500ms, 30s, 15m, 2h or 7d; got {value!r}")
    return int(m.group(1)) * _UNIT_MS[m.group(2) or bare_unit]


def _seconds(value, name: str) -> float:
    """A number of seconds, or a duration string with its unit, as seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number of seconds or a duration such as '30s'; got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = duration_ms(value, name, bare_unit=None) / 1000.0
    else:
        raise ValueError(f"{name} must be a number of seconds or a duration such as '30s'; got {value!r}")
    if not seconds > 0:
        raise ValueError(f"{name} must be more than 0 seconds; got {value!r}")
    return seconds


class Task:
    """One registered handler and its options."""

    def __init__(self, func, queues: tuple, timeout: float | None, lease_ms: int | None):
        self.func = func
        self.queues = queues
        self.timeout = timeout
        self.lease_ms = lease_ms

    def __call__(self, job):
        return self.func(job)

    def __repr__(self):
        return f"<Task {getattr(self.func, '__qualname__', self.func)} for {', '.join(self.queues)}>"


class App:
    """A set of tasks (queue -> handler) and the worker settings to run them with.

    Args:
      server: Endpoint(s) of the node (default $JOBBIE_SERVER or tcp://127.0.0.1:7700).
      concurrency: Handlers running at once.
      lease_ms: Default lease of fetched jobs (a task's own `lease_ms` wins).
      heartbeat_ms: Heartbeat interval (default: a third of the lease, at most 2 s).
      wait_ms: Long-poll length of one fetch.
      drain_timeout: Seconds running jobs get to finish on SIGTERM / Ctrl-C.
    """

    def __init__(self, server: str | None = None, concurrency: int = 4, lease_ms: int = 30_000,
                 heartbeat_ms: int | None = None, wait_ms: int = 2000, drain_timeout: float = 30.0):
        if type(concurrency) is not int or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number of at least 1; got {concurrency!r}")
        self.server = server
        self.concurrency = concurrency
        self.lease_ms = lease_ms
        self.heartbeat_ms = heartbeat_ms
        self.wait_ms = wait_ms
        self.drain_timeout = drain_timeout
        self.tasks: dict[str, Task] = {}

    def task(self, *queues: str, timeout=None, lease_ms: int | None = None):
        """Register the decorated function as the handler of `queues` (one or more)."""
        if len(queues) == 1 and callable(queues[0]):
            raise TypeError("app.task needs the queue name: write @app.task(\"emails\"), not @app.task")
        if not queues:
            raise ValueError("app.task needs at least one queue name, e.g. @app.task(\"emails\")")
        for queue in queues:
            if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
                raise ValueError(f"queue {queue!r} is not a valid queue name (ASCII letters, digits and ._:-, "
                                 "1-128 chars, starting with a letter or digit)")
        seconds = None if timeout is None else _seconds(timeout, "timeout")
        if lease_ms is not None and (type(lease_ms) is not int or not 1000 <= lease_ms <= 12 * 3_600_000):
            raise ValueError(f"lease_ms must be a whole number of milliseconds from 1000 to 43200000; got "
                             f"{lease_ms!r}")

        def register(func):
            if not callable(func):
                raise TypeError(f"app.task decorates a function; got {func!r}")
            for queue in queues:
                if queue in self.tasks:
                    raise ValueError(f"queue {queue} already has a handler in this app "
                                     f"({self.tasks[queue]!r}); one handler per queue")
            task = Task(func, tuple(queues), seconds, lease_ms)
            for queue in queues:
                self.tasks[queue] = task
            return func

        return register

    @property
    def queues(self) -> list[str]:
        """The queues this app has handlers for, in registration order."""
        return list(self.tasks)

    def worker(self, queues=None, concurrency: int | None = None, server: str | None = None,
               heartbeat_ms: int | None = None, **options) -> Worker:
        """A Worker for this app's tasks (all of them, or the given subset of queues)."""
        wanted = self.queues if queues is None else ([queues] if isinstance(queues, str) else list(queues))
        if not self.tasks:
            raise ValueError("this app has no tasks: register one with @app.task(\"queue\")")
        unknown = [q for q in wanted if q not in self.tasks]
        if unknown:
            raise ValueError(f"this app has no task for queue {unknown[0]} (its queues: {', '.join(self.queues)})")
        if not wanted:
            raise ValueError("no queues given")
        options.setdefault("lease_ms", self.lease_ms)
        options.setdefault("wait_ms", self.wait_ms)
        options.setdefault("drain_timeout", self.drain_timeout)
        return Worker({q: self.tasks[q].func for q in wanted}, server=server or self.server,
                      concurrency=concurrency or self.concurrency,
                      heartbeat_ms=heartbeat_ms or self.heartbeat_ms,
                      leases={q: self.tasks[q].lease_ms for q in wanted if self.tasks[q].lease_ms},
                      timeouts={q: self.tasks[q].timeout for q in wanted if self.tasks[q].timeout},
                      **options)

    def run(self, queues=None, concurrency: int | None = None, server: str | None = None,
            heartbeat_ms: int | None = None):
        """Run a Worker for this app's tasks until SIGTERM / Ctrl-C (then drain)."""
        self.worker(queues, concurrency=concurrency, server=server, heartbeat_ms=heartbeat_ms).run()
