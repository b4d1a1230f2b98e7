"""jobbie: a replicated, language-agnostic job queue server.

The Python API in one import:

    from jobbie import App, Client, Worker

`Client` talks to a node (or several) over the wire protocol; `Worker` runs handlers for queues;
`App` is a registry of tasks (`@app.task("queue")`) run by `app.run()` or `jobbie worker module:app`;
`AsyncClient` has the methods of `Client` as coroutines.
The server itself is `jobbie server` (the `jobbie.actors` package); everything else lives in
`jobbie.transport`, `jobbie.storage` and `jobbie.cli`.
"""
from __future__ import annotations

import importlib as _importlib

#: Where each public name lives. They are imported on first use (PEP 562), so that the server's
#: actor processes, which import `jobbie.actors...` and so this package first, do not pay for the
#: client, the worker and asyncio at every start (about 0.1 s of CPU each).
_EXPORTS = {
    "App": "jobbie.transport.app",
    "Client": "jobbie.transport.client",
    "AsyncClient": "jobbie.transport.aio",
    "Worker": "jobbie.transport.worker",
    "JobFailed": "jobbie.transport.methods",
    "Job": "jobbie.transport.worker",
    "Cancelled": "jobbie.transport.worker",
    "TimedOut": "jobbie.transport.worker",
    "BudgetExceeded": "jobbie.transport.worker",
    "Continue": "jobbie.transport.worker",
    "Done": "jobbie.transport.worker",
    "Hold": "jobbie.transport.worker",
    "JobbieError": "jobbie.transport.errors",
    "InvalidArgument": "jobbie.transport.errors",
    "NotFound": "jobbie.transport.errors",
    "FailedPrecondition": "jobbie.transport.errors",
    "AlreadyExists": "jobbie.transport.errors",
    "ResourceExhausted": "jobbie.transport.errors",
    "Unavailable": "jobbie.transport.errors",
    "Internal": "jobbie.transport.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name == "__version__":
        from importlib import metadata
        try:
            value = metadata.version("jobbie")
        except metadata.PackageNotFoundError:  # running from a tree that was never installed
            value = "0+unknown"
    elif name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'jobbie' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
