"""The wire protocol: codec, op registry and validation, the client, the worker, the socket pump.

The op registry (`ops`) is imported first, whatever module of this package is asked for: it
declares its ops and then imports the modules that declare the rest (`ops_search`, `ops_manage`,
...), which import names from it. Entering through one of those would run that cycle from its
middle.
"""
from . import ops as _ops  # noqa: F401
