"""Shared plumbing of the CLI commands: run one op, print its answer, fail in one line."""
from __future__ import annotations

import json
import sys

from jobbie.transport.client import Client, server_endpoint
from jobbie.transport.errors import JobbieError


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes", "on")


def _json_arg(text, name):
    if not isinstance(text, str):
        return text  # fire already parsed it (a number, a list, a dict)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"{name} is not valid JSON: {exc}")


def _fail(message: str, code: int = 1):
    print(f"jobbie: {message}", file=sys.stderr)
    sys.exit(code)


def _run(server, output, op, args, to_text):
    if output not in ("text", "json"):
        _fail(f"--output must be text or json, not {output!r}", 2)
    args = {k: v for k, v in args.items() if v is not None or k == "payload"}
    with Client(server, timeout=5.0, retry_for=10.0) as client:
        try:
            result = client.call(op, **args)
        except JobbieError as exc:
            field = f" (field {exc.field})" if exc.field else ""
            _fail(f"{exc.code}: {exc.message}{field} [server {server_endpoint(server)}]")
    if output == "json":
        print(json.dumps(result, default=_json_default, sort_keys=True))
    else:
        print(to_text(result))


def _json_default(value):
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


