"""Shared plumbing of the CLI commands: run one op, print its answer, fail in one line."""
from __future__ import annotations

import difflib
import getpass
import json
import sys

from jobbie.transport.app import _SPAN, _UNIT_MS, duration_ms  # noqa: F401 (the CLI's duration grammar)
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


def _duration(value, name):
    """`500ms`, `30s`, `15m`, `2h`, `7d`, `1w` or plain milliseconds, as milliseconds."""
    if value is None:
        return None
    try:
        return duration_ms(value, name)
    except ValueError as exc:
        _fail(str(exc), 2)


def _warn_if_unknown_queue(server, queue: str):
    """Pausing or configuring a queue that has never had a job is most often a typo: say so (and do it)."""
    try:
        with _client(server, timeout=5.0, retry_for=5.0) as client:
            known = {q["name"] for q in client.call("list_queues")["queues"]}
    except JobbieError:
        return  # the command itself will say what is wrong
    if queue not in known:
        near = difflib.get_close_matches(queue, sorted(known), n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        print(f"jobbie: warning: queue {queue} has never had a job{hint} (doing it anyway)", file=sys.stderr)


def _who(actor):
    """Who a person at this terminal is, for the audit trail: --actor, else the login name."""
    if actor:
        return str(actor)
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (a container without a passwd entry)
        return "cli"


def _run(server, output, op, args, to_text):
    if output not in ("text", "json"):
        _fail(f"--output must be text or json, not {output!r}", 2)
    args = {k: v for k, v in args.items() if v is not None or k == "payload"}
    with _client(server, timeout=5.0, retry_for=10.0) as client:
        try:
            result = client.call(op, **args)
        except JobbieError as exc:
            _fail_with(exc, server)
    _print(output, result, to_text)


def _print(output, result, to_text):
    """Print an answer: as JSON for scripts, else as `to_text` makes it for people."""
    if output == "json":
        print(json.dumps(result, default=_json_default, sort_keys=True))
    else:
        print(to_text(result))


def _fail_with(exc: JobbieError, server=None):
    """One line for a refused or failed call, naming the field and the server."""
    if exc.reason in ("unreachable", "handshake_failed"):
        _fail(exc.message)  # it names the address and the hint itself
    field = f" (field {exc.field})" if exc.field else ""
    _fail(f"{exc.code}: {exc.message}{field} [server {server_endpoint(server)}]")


def _client(server=None, **kwargs) -> Client:
    """A Client for a CLI command; a malformed --server (or CURVE key) is one line and exit code 2."""
    try:
        return Client(server, **kwargs)
    except JobbieError as exc:
        _fail(exc.message if exc.reason == "invalid_key" else f"--server: {exc.message}", 2)


def _json_default(value):
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


