"""The one-import Python API: `from jobbie import Client, Worker`."""
from __future__ import annotations

import jobbie
from jobbie import Cancelled, Client, JobbieError, Worker
from jobbie.transport import client as client_module
from jobbie.transport import worker as worker_module


def test_the_top_level_names_are_the_library_classes():
    assert Client is client_module.Client and Worker is worker_module.Worker
    assert Cancelled is worker_module.Cancelled and issubclass(jobbie.Unavailable, JobbieError)
    assert set(jobbie.__all__) <= set(dir(jobbie))
    assert jobbie.__version__
