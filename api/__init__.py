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

from importlib import metadata as _metadata

from jobbie.transport.aio import AsyncClient
from jobbie.transport.app import App
from jobbie.transport.client import Client
from jobbie.transport.methods import JobFailed
from jobbie.transport.errors import (AlreadyExists, FailedPrecondition, Internal, InvalidArgument, JobbieError,
                                     NotFound, ResourceExhausted, Unavailable)
from jobbie.transport.worker import BudgetExceeded, Cancelled, Continue, Done, Hold, Job, TimedOut, Worker

try:
    __version__ = _metadata.version("jobbie")
except _metadata.PackageNotFoundError:  # running from a tree that was never installed
    __version__ = "0+unknown"

__all__ = ["App", "Client", "AsyncClient", "Worker", "JobFailed", "Job", "Cancelled", "TimedOut", "BudgetExceeded", "Continue", "Done", "Hold", "JobbieError", "InvalidArgument", "NotFound",
           "FailedPrecondition", "AlreadyExists", "ResourceExhausted", "Unavailable", "Internal",
           "__version__"]
