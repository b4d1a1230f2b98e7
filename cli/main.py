"""The `jobbie` command line (fire): parse, call the client, print.

Every command takes `--server ENDPOINT` (or the JOBBIE_SERVER environment
variable; default tcp://127.0.0.1:7700) and `--output json` for scripts.
Errors print one line on stderr and exit non-zero.
"""
from __future__ import annotations

import difflib
import inspect
import os
import sys

import fire

from . import render
from .common import _duration, _fail, _flag, _json_arg, _run, _warn_if_unknown_queue
from .search import _tags
from .manage import ManageCommands
from .search import SearchCommands
from .agents import AgentCommands
from .budgets import BudgetCommands
from .chaos import ChaosCommands
from .curve import CurveCommands
from .tokens import TokenCommands
from .usage import UsageCommands
from .worker import WorkerCommands


class ClusterCli:
    """Raft cluster: status, and adding or removing a voter at runtime."""

    def status(self, server: str = None, output: str = "text"):
        """Role, term, leader, commit/applied index, last snapshot, durability, peers and actor processes."""
        return _run(server, output, "cluster_status", {}, render.cluster)

    def add(self, address: str, server: str = None, output: str = "text"):
        """Add the voter at raft ADDRESS (host:port); then start that node with --peers and --rejoin.

        One change at a time: wait until `jobbie cluster status` shows the new peer before the next one.
        """
        return _run(server, output, "cluster_add", {"address": str(address)}, lambda r: f"added {address}")

    def remove(self, address: str, server: str = None, output: str = "text"):
        """Remove the voter at raft ADDRESS (host:port) from the cluster; stop that node afterwards."""
        return _run(server, output, "cluster_remove", {"address": str(address)}, lambda r: f"removed {address}")


class Cli(ManageCommands, SearchCommands, UsageCommands, BudgetCommands, AgentCommands, TokenCommands, CurveCommands,
          WorkerCommands, ChaosCommands):
    """jobbie: a replicated job queue. Start a node with `jobbie server`; every other command talks to one.

    Common flags: --server ENDPOINT (default $JOBBIE_SERVER or tcp://127.0.0.1:7700), --output text|json.
    """

    cluster = ClusterCli()

    def server(self, data_dir: str = "./jobbie-data", bind: str = "tcp://127.0.0.1:7700", durable: bool = False,
               node_id: str = "n1", raft_bind: str = "", peers: str = "", payload_max_bytes: int = 1024 * 1024,
               inflight_max: int = 50_000, inflight_per_client_max: int = 10_000, snapshot_every: int = 20_000,
               raft_password: str = None, bootstrap: bool = False, rejoin: bool = False, mirror: bool = True,
               completed_retention_ms: int = 7 * 86_400_000, worker_retention_ms: int = 86_400_000,
               usage: bool = True, http: bool = True, http_bind: str = "127.0.0.1:7780", log_level: str = "info",
               log_format: str = "text", auth: bool = False, disk_free_min_mb: int = 128, curve: bool = False,
               curve_clients: str = None, raft_password_file: str = None, config: str = None):
        """Start a jobbie node in the foreground (Ctrl-C or SIGTERM stops it cleanly).

        Every flag can also come from a JOBBIE_* variable (--http-bind: JOBBIE_HTTP_BIND) or a key of the
        --config TOML file (http-bind = "..."); a flag wins over the variable, the variable over the file.

        Args:
          data_dir: Where the node keeps its LMDB store, raft journal and logs (created if missing).
          bind: ZeroMQ endpoint for clients (the protocol's ROUTER socket).
          durable: false (default) = fast: acknowledged writes survive a crash of jobbie's processes but
            not a power loss or OS crash. true = the raft journal is fsynced before a write is acknowledged.
          node_id: This node's name in a cluster.
          raft_bind: host:port for raft traffic (default: a free loopback port, remembered in the data dir).
          peers: Comma-separated host:port raft addresses of the other voters (empty: a single node).
          payload_max_bytes: Largest accepted job payload (and ack result), encoded (default and hard cap 1 MiB).
          inflight_max: Requests admitted (waiting or being applied) at once for the whole node; more are
            answered RESOURCE_EXHAUSTED with a retry_after_ms hint.
          inflight_per_client_max: The same limit for one client (one connection, or one `client` key).
          snapshot_every: Raft entries between snapshots (log compaction; each entry is a batch of ops).
          raft_password: Shared secret encrypting and authenticating raft traffic between nodes (default
            $JOBBIE_RAFT_PASSWORD); required for a cluster (any --peers), the same on every node.
          raft_password_file: Read the raft password from this file (its first line) instead; keep it
            readable by the server's user only.
          mirror: Run the mirror actor (SQLite view for search and bulk); --mirror=false saves its CPU,
            and search/bulk then answer UNAVAILABLE.
          usage: Run the usage actor (usage rollups for `jobbie usage`); --usage=false saves its CPU, and
            usage_summary then answers UNAVAILABLE. Usage is recorded in LMDB either way.
          http: Run the http actor: JSON API under /v1, the web UI at /, Prometheus /metrics
            (--http=false: none of them; the ZeroMQ port is unaffected).
          http_bind: HOST:PORT of the JSON API, web UI and /metrics (default 127.0.0.1:7780).
          auth: Every request needs an API token whose role covers its op (health excepted); the first start
            prints the first admin token once. See docs/security.md.
          curve: Encrypt and authenticate the client port (--bind) with ZeroMQ CURVE. The first start makes the
            node's key pair in DATA_DIR/curve and every start prints its public key; clients need it
            (JOBBIE_CURVE_SERVER_KEY; jobbie curve show prints it again). See docs/security.md.
          curve_clients: With --curve: a folder of client public keys (NAME.key files from jobbie curve keygen);
            only those clients may connect (files added or removed count from the next connection). Default:
            any client that knows the server's public key.
          disk_free_min_mb: Free space (MiB) the data dir's disk keeps for the node: under it, writes are
            refused (RESOURCE_EXHAUSTED / disk_full) until space is freed; reads and deletes go on. Default 128.
          log_level: debug, info (default), warning or error: the supervisor's and every actor's logs.
          log_format: text (default) or json (one JSON object per line: ts, level, actor, pid, logger, msg).
          bootstrap: First start of a new cluster on an empty data dir (with --peers).
          rejoin: This node lost its data dir; start empty and catch up from the leader (with --peers).
          completed_retention_ms: Delete completed and cancelled jobs this long after they finished
            (default 7 days; 0 keeps them). The leader's value applies to the whole cluster.
          worker_retention_ms: Forget workers (list_workers) not seen by fetch or heartbeat for this long
            (default 1 day; 0 keeps them). The leader's value applies to the whole cluster.
        """
        from jobbie.actors.config import NodeConfig
        from jobbie.actors.supervisor import run_server

        peer_list = [p.strip() for p in str(peers).split(",") if p.strip()] if peers else []
        if str(log_level).lower() not in LOG_LEVELS:
            _fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}", 2)
        if str(log_format).lower() not in ("text", "json"):
            _fail(f"--log-format must be text or json, got {log_format!r}", 2)
        from jobbie.transport.ops import Limits
        if not 1 <= int(payload_max_bytes) <= Limits.payload_bytes_max:
            _fail(f"--payload-max-bytes must be between 1 and {Limits.payload_bytes_max} (1 MiB, the hard cap: "
                  "larger values would make raft entries that stall the cluster)", 2)
        config = NodeConfig(data_dir=str(data_dir), bind=bind, node_id=str(node_id), raft_bind=str(raft_bind),
                            peers=peer_list, durable=_flag(durable), payload_bytes_max=int(payload_max_bytes),
                            inflight_max=int(inflight_max), inflight_per_client_max=int(inflight_per_client_max),
                            snapshot_every_entries=max(100, int(snapshot_every)),
                            completed_retention_ms=max(0, int(completed_retention_ms)),
                            worker_retention_ms=max(0, int(worker_retention_ms)),
                            raft_password=raft_password or os.environ.get("JOBBIE_RAFT_PASSWORD", "")
                            or _password_from(raft_password_file),
                            mirror=_flag(mirror), usage=_flag(usage), http=_flag(http), http_bind=str(http_bind),
                            log_level=str(log_level).lower(), log_format=str(log_format).lower(), auth=_flag(auth),
                            disk_free_min_mb=max(0, int(disk_free_min_mb)), curve=_flag(curve),
                            curve_clients=str(curve_clients) if curve_clients else "")
        sys.exit(run_server(config, bootstrap=_flag(bootstrap), rejoin=_flag(rejoin)))

    def enqueue(self, queue: str, payload: str = "null", priority: str = "normal", delay: str = None,
                delay_ms: int = None, max_retries: int = None, unique_key: str = None, tag: str = None,
                tags: str = None, payload_file: str = None, server: str = None, output: str = "text"):
        # (str parameters reach us verbatim: see protect_strings)
        """Add a job. PAYLOAD is JSON, e.g. jobbie enqueue emails '{"to": "a@b.c"}' (- reads it from stdin).

        Args:
          queue: Queue name.
          payload: The job's payload as JSON (default null); - reads it from stdin.
          priority: critical, high, normal (default) or low.
          delay: Do not run before now + this long: 500ms, 30s, 5m, 2h, 7d.
          delay_ms: The same in milliseconds.
          max_retries: Retries after the first attempt (default 3).
          unique_key: At most one live job per (queue, key).
          tag: Tags as key=value pairs separated by commas, as for jobbie search, e.g. tenant=acme,tier=gold.
          tags: The same, or a JSON object of string tags, e.g. '{"tenant": "acme"}'.
          payload_file: Read the payload (JSON) from this file; - is stdin.
        """
        if payload_file is not None and payload != "null":
            _fail("give PAYLOAD or --payload-file, not both", 2)
        source = payload_file if payload_file is not None else (payload if payload == "-" else None)
        if source is not None:
            try:
                text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
            except OSError as exc:
                _fail(f"--payload-file {source}: {exc.strerror}", 2)
            payload = text
        if delay is not None and delay_ms is not None:
            _fail("give --delay or --delay-ms, not both", 2)
        tag_map = None
        for given in (tags, tag):
            if given is None:
                continue
            more = _json_arg(given, "--tags") if str(given).lstrip().startswith("{") else _tags(given)
            tag_map = {**(tag_map or {}), **more}
        args = {"queue": str(queue), "payload": _json_arg(payload, "payload"), "priority": priority,
                "delay_ms": _duration(delay, "--delay") if delay is not None else delay_ms,
                "max_retries": max_retries, "unique_key": unique_key, "tags": tag_map}
        return _run(server, output, "enqueue", args, render.enqueued)

    def inspect(self, job_id: str, server: str = None, output: str = "text"):
        """Show one job: state, attempts, errors, timestamps."""
        return _run(server, output, "get_job", {"job_id": str(job_id)}, render.job)

    def cancel(self, job_id: str, server: str = None, output: str = "text"):
        """Cancel a job (an active job is told on its next heartbeat)."""
        return _run(server, output, "cancel_job", {"job_id": str(job_id)}, render.state)

    def retry(self, job_id: str, server: str = None, output: str = "text"):
        """Run a dead, cancelled, completed, retrying or scheduled job again now."""
        return _run(server, output, "retry_job", {"job_id": str(job_id)}, render.state)

    def delete(self, job_id: str, server: str = None, output: str = "text"):
        """Delete a job and everything recorded about it."""
        return _run(server, output, "delete_job", {"job_id": str(job_id)}, lambda r: "deleted")

    def queues(self, server: str = None, output: str = "text"):
        """List queues with their job counts per state."""
        return _run(server, output, "list_queues", {}, render.queues)

    def pause(self, queue: str, server: str = None, output: str = "text"):
        """Stop handing out jobs of QUEUE (enqueue still works)."""
        _warn_if_unknown_queue(server, str(queue))
        return _run(server, output, "pause_queue", {"queue": str(queue)}, lambda r: f"paused {queue}")

    def resume(self, queue: str, server: str = None, output: str = "text"):
        """Hand out jobs of QUEUE again."""
        return _run(server, output, "resume_queue", {"queue": str(queue)}, lambda r: f"resumed {queue}")

    def bench(self, scenarios: str = "unary,batch,lifecycle", concurrency: str = "10", duration: float = 5.0,
              repeats: int = 3, batch_size: int = 1000, work_ms: float = 0.0, durable: bool = False,
              server: str = None, ceiling: bool = True, output: str = "text", json_out: str = None,
              markdown_out: str = None, mirror: str = "true", usage: bool = False, budgets: bool = False,
              agent: bool = False, http: str = "false", auth: str = "false", curve: str = "false"):
        """Load-test a node over the wire protocol (closed loop); medians of repeated runs, with the ZeroMQ ceiling.

        Starts a fresh node (and a bare ROUTER echo for the ceiling) per run unless --server is given.
        Scenarios: unary, batch, lifecycle, mixed, fairness, http-unary (enqueue over the JSON API), worker (the real Python Worker library, --concurrency handler slots, on a pre-filled queue). --mirror
        both runs each scenario with the mirror on and off, alternating, and reports on/off; --http both does
        the same with the http actor (idle: what it costs the ZeroMQ path to have it running). --usage true makes every lifecycle ack carry a
        usage map (compare with a run without it); --budgets true sets two budgets every job falls under
        (global and namespace, never spent) before each run; --agent true runs agent jobs (every lifecycle
        ack continues: an iteration recorded, the job re-queued). See bench/README.md.

        Args:
          scenarios: Comma-separated scenario names (above).
          concurrency: Comma-separated client counts to sweep, e.g. 10,50,200.
          duration: Seconds per run.
          repeats: Runs per scenario and client count; the median is reported.
          batch_size: Jobs per enqueue_batch frame (scenario batch).
          work_ms: Simulated work between fetch and ack (lifecycle, mixed).
          durable: Start the node with --durable.
          ceiling: Also measure the bare ZeroMQ echo at each client count, for the ratio.
          json_out: Also append every run as JSON lines to this file.
          markdown_out: Also write the median table (markdown) to this file.
          mirror: true, false, or both (on/off pairs).
          usage: Every lifecycle ack carries a usage map.
          budgets: Two never-spent budgets cover every job.
          agent: Agent jobs instead of plain ones.
          http: true (the http actor runs, idle), false, or both (on/off pairs).
          auth: true (--auth, every request carries a token), false, or both (on/off pairs).
          curve: true (--curve, every client speaks CURVE; the ceiling stays plaintext), false, or both
            (on/off pairs).
        """
        from jobbie.bench.run import main as bench_main

        bench_main(scenarios=scenarios, concurrency=concurrency, duration=duration, repeats=repeats,
                   batch_size=batch_size, work_ms=work_ms, durable=_flag(durable), server=server,
                   ceiling=_flag(ceiling), output=output, json_out=json_out, markdown_out=markdown_out,
                   mirror="both" if str(mirror).lower() == "both" else _flag(mirror), usage=_flag(usage),
                   budgets=_flag(budgets), agent=_flag(agent),
                   http="both" if str(http).lower() == "both" else _flag(http),
                   auth="both" if str(auth).lower() == "both" else _flag(auth),
                   curve="both" if str(curve).lower() == "both" else _flag(curve))

    def status(self, server: str = None, output: str = "text"):
        """Show the node: raft role, indexes, durability mode, actor processes."""
        return _run(server, output, "cluster_status", {}, render.status)


# Every flag of every command gets a line in --help (the shared ones are described once).
from .helptext import document_all  # noqa: E402

UNDOCUMENTED_FLAGS = document_all(Cli)


def command_of(argv: list[str]):
    """(the method the leading words of `argv` name, how many words that took), or (None, 0)."""
    target, depth = Cli, 0
    while depth < len(argv) and not argv[depth].startswith("-"):
        attr = getattr(target, argv[depth].replace("-", "_"), None)
        if attr is None:
            return None, 0
        depth += 1
        if inspect.isfunction(attr):
            return attr, depth
        target = type(attr)
    return None, 0


def protect_strings(argv: list[str]) -> list[str]:
    """Quote the values of str parameters so fire passes them through untouched.

    fire reads every argument as a Python literal: `{"a": true}` would lose its
    JSON meaning and a queue named `1e3` would become 1000.0. A str parameter's
    value is handed over as a Python string literal instead; our code parses
    JSON itself.
    """
    target, depth = command_of(argv)
    if target is None:
        return argv
    params = inspect.signature(target).parameters
    names = [n for n in params if n != "self"]
    is_str = {n: params[n].annotation in (str, "str") for n in names}
    out, positional, i = list(argv[:depth]), 0, depth
    flagged = set()
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            key = name.replace("-", "_")
            flagged.add(key)
            if eq:
                out.append(f"--{name}={repr(value)}" if is_str.get(key) else arg)
            elif is_str.get(key) and i + 1 < len(argv):
                out.extend([arg, repr(argv[i + 1])])
                i += 1
            elif key in params and params[key].annotation not in (bool, "bool") and i + 1 < len(argv):
                # A typed flag's value goes to fire as it is (`--max-retries 0` is the int 0); it must
                # not be taken for a positional argument and quoted as a string.
                out.extend([arg, argv[i + 1]])
                i += 1
            else:
                out.append(arg)
        elif arg.startswith("-") and len(arg) > 1 and not arg[1].isdigit():
            out.append(arg)
        else:
            free = [n for n in names if n not in flagged]
            name = free[positional] if positional < len(free) else None
            positional += 1
            out.append(repr(arg) if name and is_str.get(name) else arg)
        i += 1
    return out


#: fire's own flags, which every command accepts.
FIRE_FLAGS = {"help", "h", "interactive", "i", "separator", "trace", "t", "verbose", "v", "completion"}


def check_flags(argv: list[str]):
    """Refuse, before anything runs, a flag the command does not take (with "did you mean") or one
    positional argument too many: fire would run the command first and complain afterwards, so a
    typo in `jobbie delete JOB --forse` used to delete the job and then fail."""
    target, depth = command_of(argv)
    if target is None:
        return  # a group, or an unknown command: fire reports it itself, before running anything
    params = inspect.signature(target).parameters
    names = [n for n in params if n != "self"]
    command = " ".join(argv[:depth])
    accepted = sorted(n.replace("_", "-") for n in names)
    positional, flagged, i = 0, set(), depth
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return  # what follows is for fire itself
        if arg.startswith("--") and len(arg) > 2:
            name, eq, _ = arg[2:].partition("=")
            key = name.replace("-", "_")
            boolean_off = key.startswith("no") and key[2:] in names
            if key not in names and not boolean_off and key not in FIRE_FLAGS:
                near = difflib.get_close_matches(name.replace("_", "-"), accepted, n=1)
                hint = f"; did you mean --{near[0]}?" if near else ""
                _refuse(f"jobbie {command}: no such flag --{name}{hint} (it takes: "
                        f"{', '.join('--' + a for a in accepted) or 'no flags'}; see jobbie {command} --help)")
            flagged.add(key)
            if not eq and key in names and params[key].annotation not in (bool, "bool") and i + 1 < len(argv):
                i += 1  # the flag's value
        elif arg.startswith("-") and len(arg) > 1 and not arg[1].isdigit():
            letters = arg[1:].partition("=")[0]
            if letters not in FIRE_FLAGS and not (len(letters) == 1 and sum(
                    n.startswith(letters) for n in names) == 1):
                _refuse(f"jobbie {command}: no such flag {arg.partition('=')[0]} (see jobbie {command} --help)")
        else:
            positional += 1
        i += 1
    free = [n for n in names if n not in flagged]
    varargs = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params.values())
    if positional > len(free) and not varargs:
        _refuse(f"jobbie {command}: too many arguments ({positional} given, it takes at most {len(free)}; "
                f"see jobbie {command} --help)")


LOG_LEVELS = ("debug", "info", "warning", "error")
#: The boolean flags of `jobbie server`, which fire also takes as --noNAME.
SERVER_SWITCHES = ("durable", "mirror", "usage", "http", "bootstrap", "rejoin", "auth", "curve")


def server_settings(argv: list[str]) -> list[str]:
    """The `jobbie server` flags that JOBBIE_* variables and --config give (one line and exit 2 if bad)."""
    from .settings import SettingsError, server_flags
    given, config, i = set(), None, 1
    while i < len(argv):
        name, eq, value = argv[i].removeprefix("--").partition("=")
        if argv[i].startswith("--"):
            key = name.replace("-", "_")
            given.add(key.removeprefix("no") if key.startswith("no") and key[2:] in SERVER_SWITCHES else key)
            if key == "config":
                config = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        i += 1
    try:
        return server_flags(Cli.server, given, config, os.environ)
    except SettingsError as exc:
        _refuse(f"jobbie server: {exc}")


def _password_from(path) -> str:
    """The first line of a --raft-password-file ("" when no file is given); a bad file stops here."""
    if not path:
        return ""
    try:
        with open(str(path), encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"--raft-password-file {path}: cannot read it ({exc})", 2)
    if not password:
        _fail(f"--raft-password-file {path}: its first line is empty", 2)
    return password


def _refuse(message: str):
    print(message, file=sys.stderr)
    sys.exit(2)


def spell_out(argv: list[str]) -> list[str]:
    """`jobbie replay JOB --from 3 --set a=1 --set b=2` as fire can take it: `--from` is a Python
    keyword (the flag is --from-iteration), and repeated --set flags become one comma-separated one."""
    if not argv or argv[0] != "replay":
        return argv
    out, sets, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--from" or arg.startswith("--from="):
            out.append(arg.replace("--from", "--from-iteration", 1))
        elif arg == "--set" and i + 1 < len(argv):
            sets.append(argv[i + 1])
            i += 1
        elif arg.startswith("--set="):
            sets.append(arg[len("--set="):])
        else:
            out.append(arg)
        i += 1
    if sets:
        out += ["--set", ",".join(sets)]
    return out


def help_words(argv: list[str]) -> list[str]:
    """For `--help` / `-h` anywhere: only the words that name the command or group, then fire's
    own `-- --help`. So help never runs the command (fire would run `jobbie delete JOB --help`
    and then show help), and fire's "INFO: Showing help with the command ..." line is not printed."""
    if "--" in argv or not any(a in ("--help", "-h") for a in argv):
        return argv
    target, depth = command_of(argv)
    if target is None:  # a group: its leading words that name groups
        node, depth = Cli, 0
        while depth < len(argv) and not argv[depth].startswith("-"):
            attr = getattr(node, argv[depth].replace("-", "_"), None)
            if attr is None or inspect.isfunction(attr):
                break
            node, depth = type(attr), depth + 1
    return list(argv[:depth]) + ["--", "--help"]


def main(argv=None):
    # fire prints return values; commands print themselves and return None.
    os.environ.setdefault("PAGER", "cat")
    argv = spell_out(sys.argv[1:] if argv is None else list(argv))
    if argv[:1] in (["--version"], ["-V"], ["version"]):
        from jobbie import __version__
        print(f"jobbie {__version__}")
        return
    argv = help_words(argv)
    check_flags(list(argv))
    if argv[:1] == ["server"] and "--" not in argv:
        argv = argv + server_settings(argv)
    try:
        fire.Fire(Cli(), command=protect_strings(list(argv)), name="jobbie")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`jobbie search ... | head`): end quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()
