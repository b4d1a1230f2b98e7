"""The supervisor: `jobbie server` itself.

It takes the data directory (an exclusive flock, so two servers can never
share one), starts each actor as its own OS process (raft first, since it
creates the store), restarts a process that dies with exponential backoff,
and stops the whole node with a clear message when one actor keeps dying
(restart intensity). On SIGTERM/SIGINT it stops the node in order — admission,
which holds the client socket, first (it stops taking requests and answers
what is in flight), raft last (it closes its journal cleanly) — so nothing
acknowledged is lost.

It publishes the actor table (name, pid, restarts, alive) on an IPC PUB
socket; the gateway shows it in cluster_status.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket as pysocket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import zmq

from jobbie.transport import codec

from .config import NodeConfig, pick_run_dir

log = logging.getLogger("jobbie.supervisor")

# Admission holds the client socket: it stops taking requests first and waits for the answers in
# flight, which need raft (writes) and the mirror and usage actors (searches, summaries).
#: Stop order, in steps: the mirror, usage and lifecycle actors depend on none of each other, so
#: they stop together.
STOP_GROUPS = (("http",), ("admission",), ("mirror", "usage", "lifecycle"), ("raft",))
STOP_ORDER = tuple(name for group in STOP_GROUPS for name in group)
EXIT_GAVE_UP = 3
#: An actor exiting with this code cannot start at all (e.g. an unrecoverable data dir): no restart.
EXIT_CANNOT_START = 78
LOOPBACK = ("127.", "localhost", "::1", "[::1]")
#: How the supervisor hands the raft actor its password (the environment of one process, not a file).
RAFT_PASSWORD_ENV = "JOBBIE_ACTOR_RAFT_PASSWORD"
#: In the data dir once the first admin token of an --auth node was shown (it holds no secret).
AUTH_MARKER = "auth-bootstrap"


def _loopback_endpoint(endpoint: str) -> bool:
    if not endpoint.startswith("tcp://"):
        return True  # ipc:// and inproc:// stay on this machine
    host = endpoint[len("tcp://"):].rpartition(":")[0].strip("[]")
    return host.startswith(LOOPBACK)


class StartupError(Exception):
    """The node cannot start; the message says why in one line."""


def check_bind(flag: str, host: str, port: int, form: str = "HOST:PORT"):
    """Refuse, before any actor starts, an address this node cannot listen on.

    A taken port used to show up only as an admission (or raft) crash loop, its cause in a log file.
    The check binds and closes a plain socket, with SO_REUSEADDR as ZeroMQ and pysyncobj use it, so
    a port in TIME_WAIT passes and one another program listens on does not.
    """
    try:
        infos = pysocket.getaddrinfo(host, port, type=pysocket.SOCK_STREAM)
    except (pysocket.gaierror, UnicodeError) as exc:
        raise StartupError(f"{flag} {host}:{port}: cannot resolve {host!r} ({exc})") from None
    family, _, _, _, address = infos[0]
    probe = pysocket.socket(family, pysocket.SOCK_STREAM)
    try:
        probe.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as exc:
        why = "the port is taken (another jobbie node or program listens there)" \
            if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(f"{flag} {host}:{port}: {why}; pick another with {flag} {form}") from None
    finally:
        probe.close()


def check_client_bind(endpoint: str):
    """--bind must be a ZeroMQ endpoint this node can listen on (tcp:// is checked for a free port)."""
    match = re.fullmatch(r"tcp://(\[[0-9a-fA-F:]+\]|[^\s:/]+):([0-9]{1,5})", endpoint)
    if match is None:
        if re.fullmatch(r"(ipc|inproc)://\S+", endpoint):
            return
        hint = f" (did you mean tcp://{endpoint}?)" if re.fullmatch(r"[^\s:/]+:[0-9]{1,5}", endpoint) else ""
        raise StartupError(f"--bind {endpoint!r} is not a ZeroMQ endpoint{hint}; write tcp://HOST:PORT, "
                           "e.g. tcp://127.0.0.1:7700")
    host, port = match.group(1).strip("[]"), int(match.group(2))
    if host == "*":
        host = "0.0.0.0"
    if not 0 < port < 65536:
        raise StartupError(f"--bind {endpoint}: port {port} is out of range (1-65535)")
    check_bind("--bind", host, port, form="tcp://HOST:PORT")


def check_http_bind(address: str):
    """--http-bind must be HOST:PORT this node can listen on."""
    match = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^\s:/\[\]]+):([0-9]{1,5})", address)
    if match is None:
        raise StartupError(f"--http-bind {address!r} is not HOST:PORT, e.g. 127.0.0.1:7780 (or --http=false)")
    host, port = match.group(1).strip("[]"), int(match.group(2))
    if not 0 < port < 65536:
        raise StartupError(f"--http-bind {address}: port {port} is out of range (1-65535)")
    check_bind("--http-bind", host, port, form="HOST:PORT (or --http=false)")


@dataclass
class RestartPolicy:
    """Exponential backoff between restarts, and a limit on how often one actor may die."""

    #: First restart delay; doubles per consecutive crash up to backoff_max_s.
    backoff_base_s: float = 0.05
    backoff_max_s: float = 5.0
    #: More than `intensity_max` crashes within `intensity_window_s` stops the node.
    intensity_max: int = 10
    intensity_window_s: float = 60.0
    #: A process that ran this long resets its backoff.
    healthy_after_s: float = 30.0
    crashes: list = field(default_factory=list)
    streak: int = 0

    def on_crash(self, now: float, ran_for_s: float) -> float | None:
        """Delay before the restart, or None when the restart intensity is exceeded."""
        self.crashes = [t for t in self.crashes if now - t < self.intensity_window_s] + [now]
        if len(self.crashes) > self.intensity_max:
            return None
        self.streak = 1 if ran_for_s >= self.healthy_after_s else self.streak + 1
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** (self.streak - 1))


class Child:
    def __init__(self, name: str):
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.restart_at: float | None = None
        self.policy = RestartPolicy()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def row(self) -> dict:
        return {"name": self.name, "pid": self.proc.pid if self.proc else None,
                "restarts": self.restarts, "alive": self.alive}


#: The open-file limit the supervisor raises its own (and so its actors') soft limit to, at most.
OPEN_FILES_WANTED = 65_536
#: Below this many open files, a warning: each client connection of the gateway takes one.
OPEN_FILES_WARN = 4096


def check_limits():
    """Raise the soft open-file limit as far as the hard one lets (the actors inherit it), and say so
    when it stays low; refuse an address-space limit that LMDB's map cannot fit in."""
    import resource
    from jobbie.storage.env import MAP_SIZE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES_WARN:
        print(f"jobbie: WARNING: open files are limited to {soft} (ulimit -n, hard limit {hard}); each client "
              f"connection takes one, so past about {max(0, soft - 200)} connections new ones wait; raise the hard "
              "limit (e.g. LimitNOFILE=65536 in the systemd unit)", file=sys.stderr, flush=True)
    space = resource.getrlimit(resource.RLIMIT_AS)[0]
    if space != resource.RLIM_INFINITY and space < MAP_SIZE + 8 * 1024**3:
        raise StartupError(f"the address space is limited to {space / 1024**3:.0f} GiB (ulimit -v); the store maps "
                           f"{MAP_SIZE // 1024**3} GiB of it (sparse: that much is reserved, not used), and each "
                           "actor needs some more: raise it (ulimit -v unlimited)")


def last_error_line(path: str, tail_bytes: int = 64 * 1024) -> str | None:
    """The last error an actor logged: the final line of its last traceback, else its last ERROR or
    CRITICAL log line (from the end of its log file), shortened to one line."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        text = line.strip()
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Fault)\b.*", text) or \
                re.search(r"(^| )(ERROR|CRITICAL)[: ]", text):
            return text[:300]
    return None


def free_port() -> int:
    with pysocket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Supervisor:
    def __init__(self, config: NodeConfig, bootstrap: bool = False, rejoin: bool = False):
        self.config = config
        self.bootstrap = bootstrap
        self.rejoin = rejoin
        self.children = {name: Child(name) for name in config.actors()}
        self.stopping = False
        self.lock_file = None
        self.exit_code = EXIT_GAVE_UP
        self.pub = None
        self.config_path = ""
        #: The run dir is a mkdtemp folder (deep data dir), removed when the node stops.
        self.temporary_run_dir = False
        #: With --auth on a first start: the first admin token, printed once it works.
        self.first_token = None
        #: The raft password (given, or made up for a single node); set by prepare().
        self.raft_password = ""
        #: With --curve: the node's public key, and whether its key pair was made at this start.
        self.curve_public = None
        self.curve_created = False

    # ----------------------------------------------------------------- set-up
    def prepare(self):
        cfg = self.config
        check_limits()
        try:
            os.makedirs(cfg.data_dir, mode=0o700, exist_ok=True)
            # The data dir holds every job's payload and the raft log: the owner's only.
            os.chmod(cfg.data_dir, 0o700)
            self.lock_file = open(os.path.join(cfg.data_dir, "LOCK"), "a+")
        except OSError as exc:
            raise StartupError(f"data dir {cfg.data_dir}: cannot use it ({exc.strerror}); pass a --data-dir "
                               "this user can create and write, or fix the folder's owner and mode") from None
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock_file.seek(0)
            holder = self.lock_file.read().strip() or "another process"
            raise StartupError(f"data dir {cfg.data_dir} is in use by {holder}; "
                               "stop that server or pass another --data-dir")
        self.lock_file.seek(0)
        self.lock_file.truncate()
        self.lock_file.write(f"jobbie server pid {os.getpid()}\n")
        self.lock_file.flush()
        identity_path = os.path.join(cfg.data_dir, "node.json")
        identity = {}
        if cfg.peers and not os.path.exists(identity_path) and not (self.bootstrap or self.rejoin):
            raise StartupError(
                f"data dir {cfg.data_dir} has never run a node (no node.json) and --peers names a cluster. For a new cluster, start each "
                "node once with --bootstrap. If this node lost its data, start it with --rejoin: it then "
                "catches up from the leader (start it only while the other nodes have a leader)")
        self.check_raft_security()
        if os.path.exists(identity_path):
            with open(identity_path) as f:
                identity = json.load(f)
            if identity.get("node_id") and identity["node_id"] != cfg.node_id:
                raise StartupError(f"data dir {cfg.data_dir} belongs to node {identity['node_id']!r}, "
                                   f"not {cfg.node_id!r}")
        members = sorted(set(cfg.peers) | ({cfg.raft_bind} if cfg.raft_bind else set()))
        known = identity.get("members") or []
        if cfg.peers and known and not set(known) & set(members):
            raise StartupError(
                f"data dir {cfg.data_dir} belongs to another cluster (its members were {', '.join(known)}; this "
                f"start names {', '.join(members)}); pass that cluster's --peers, or another --data-dir")
        if not cfg.raft_bind:
            cfg.raft_bind = identity.get("raft_bind") or f"127.0.0.1:{free_port()}"
        elif identity.get("raft_bind") and identity["raft_bind"] != cfg.raft_bind:
            log.warning("raft address changed from %s to %s%s", identity["raft_bind"], cfg.raft_bind,
                        "; the other nodes must be told (jobbie cluster remove/add)" if cfg.peers else "")
        identity.update(node_id=cfg.node_id, raft_bind=cfg.raft_bind)
        if cfg.peers:
            identity["members"] = sorted(set(cfg.peers) | {cfg.raft_bind})
        check_client_bind(cfg.bind)
        raft_host, _, raft_port = cfg.raft_bind.rpartition(":")
        if not raft_port.isdigit() or not 0 < int(raft_port) < 65536:
            raise StartupError(f"--raft-bind {cfg.raft_bind!r} is not HOST:PORT")
        check_bind("--raft-bind", raft_host, int(raft_port))
        if cfg.http:
            check_http_bind(cfg.http_bind)
        with open(identity_path + ".tmp", "w") as f:
            json.dump(identity, f)
        os.replace(identity_path + ".tmp", identity_path)
        if not cfg.run_dir:
            cfg.run_dir = pick_run_dir(cfg.data_dir)
            self.temporary_run_dir = not cfg.run_dir.startswith(os.path.abspath(cfg.data_dir) + os.sep)
        os.makedirs(cfg.run_dir, mode=0o700, exist_ok=True)
        os.chmod(cfg.run_dir, 0o700)  # sockets and the node config: the owner's only
        os.makedirs(cfg.log_dir, exist_ok=True)
        self.prepare_curve()
        self.prepare_auth()
        # The raft password reaches the raft actor in its environment, never in a file. A single node
        # gets a fresh random one: it has no peers to share it with, and its raft port (loopback) then
        # drops whatever a local process sends it unauthenticated (pysyncobj unpickles raft messages).
        self.raft_password = cfg.raft_password or ("" if cfg.peers else secrets.token_urlsafe(24))
        cfg.raft_password = ""
        self.config_path = os.path.join(cfg.run_dir, "node.msgpack")
        cfg.save(self.config_path)

    def prepare_curve(self):
        """With --curve: the node's key pair (made on the first start), and a usable --curve-clients folder."""
        cfg = self.config
        if cfg.curve_clients and not cfg.curve:
            raise StartupError("--curve-clients lists the clients of a CURVE port: add --curve")
        if not cfg.curve:
            if cfg.auth and not _loopback_endpoint(cfg.bind):
                print(f"jobbie: WARNING: --bind {cfg.bind} can be reached from other machines and this node runs "
                      "without --curve: tokens and payloads cross the network in the clear", file=sys.stderr,
                      flush=True)
            return
        from .curve import CurveKeyError, check_client_folder, ensure_node_keys
        try:
            if cfg.curve_clients:
                cfg.curve_clients = os.path.abspath(cfg.curve_clients)
                if check_client_folder(cfg.curve_clients) == 0:
                    log.warning("--curve-clients %s lists no client key yet: only this node's own processes can "
                                "connect until a NAME.key file is put there", cfg.curve_clients)
            self.curve_public, self.curve_created = ensure_node_keys(cfg.data_dir)
        except CurveKeyError as exc:
            raise StartupError(str(exc)) from None

    def announce_curve(self):
        """Print the node's public key and how a client uses it (it is public: printed at every start)."""
        cfg = self.config
        from .curve import key_dir
        made = f"a new key pair is in {key_dir(cfg.data_dir)}" if self.curve_created else \
            f"key pair in {key_dir(cfg.data_dir)}"
        key = self.curve_public.decode()
        who = (f"only the client keys in {cfg.curve_clients} may connect (jobbie curve keygen makes a pair; "
               "the client sets JOBBIE_CURVE_CLIENT_KEY to its .key_secret file)" if cfg.curve_clients else
               "any client that has this key may connect" + ("; tokens say what it may do" if cfg.auth else ""))
        print(f"jobbie: the client port uses CURVE ({made}); the server's public key:\n  {key}\n"
              f"jobbie: clients connect with  export JOBBIE_CURVE_SERVER_KEY='{key}'  (Python: "
              f"Client(..., curve_server_key=...)); {who}", file=sys.stderr, flush=True)

    def prepare_auth(self):
        """With --auth on a first start: a first admin token, whose hash the gateway proposes (the
        secret stays in this process and is printed once it works). Without --auth: a loud warning
        when the client or HTTP port is reachable from other machines."""
        cfg = self.config
        if not cfg.auth:
            http_host = cfg.http_bind.rpartition(":")[0].strip("[]")
            # (a CURVE port that lists its clients is closed to everyone else)
            open_to = [f"--bind {cfg.bind}"] if not _loopback_endpoint(cfg.bind) and not cfg.curve_clients else []
            if cfg.http and not http_host.startswith(LOOPBACK):
                open_to.append(f"--http-bind {cfg.http_bind}")
            if open_to:
                print(f"jobbie: WARNING: {' and '.join(open_to)} can be reached from other machines and this node "
                      "runs without --auth: anyone who reaches it can read, change and delete every job",
                      file=sys.stderr, flush=True)
            return
        if os.path.exists(os.path.join(cfg.data_dir, AUTH_MARKER)):
            return
        from .gateway.auth import secret_hash
        secret, token_id = secrets.token_urlsafe(32), "tok_" + secrets.token_hex(13)
        cfg.bootstrap_token = {"id": token_id, "hash": secret_hash(secret)}
        self.first_token = f"{token_id}.{secret}"

    def announce_first_token(self):
        """Print the first admin token once the cluster has it; remember that it was shown."""
        from jobbie.transport.client import Client
        from jobbie.transport.errors import JobbieError, Unauthenticated

        from .curve import node_client_curve
        refused_since = None
        deadline = time.monotonic() + 120.0
        server_key, pair = node_client_curve(self.config)
        # The node's own keys on a --curve node, else plaintext whatever this process's environment says.
        with Client(self.config.client_endpoint, timeout=2.0, retry_for=0, connect_timeout=10.0,
                    token=self.first_token, curve_server_key=server_key or "", curve_client_keys=pair) as client:
            while not self.stopping and time.monotonic() < deadline:
                try:
                    client.call("list_tokens")
                    print("jobbie: auth is on. The first admin token, shown this once (the node keeps only its hash):\n"
                          f"  {self.first_token}\n"
                          "jobbie: give clients a token in JOBBIE_TOKEN; make more with: jobbie token create NAME "
                          "--role worker", file=sys.stderr, flush=True)
                    break
                except Unauthenticated:
                    # Not made yet, or another node's first token won: then ours never will be.
                    refused_since = refused_since or time.monotonic()
                    if time.monotonic() - refused_since > 15.0:
                        print("jobbie: auth is on and this cluster already has tokens; ask an admin for one "
                              "(jobbie token create)", file=sys.stderr, flush=True)
                        break
                except JobbieError:
                    pass
                time.sleep(0.25)
            else:
                return
        with open(os.path.join(self.config.data_dir, AUTH_MARKER), "w") as f:
            f.write(f"the first admin token was shown at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")

    def check_raft_security(self):
        cfg = self.config
        if cfg.peers and not cfg.raft_password:
            # Loopback included: any local user could otherwise talk to the raft port, and pysyncobj
            # unpickles what peers send.
            raise StartupError(
                "a cluster (--peers) needs a raft password, the same on every node, so that only its nodes "
                "can talk to its raft ports: set --raft-password, JOBBIE_RAFT_PASSWORD or --raft-password-file")
        if cfg.raft_password:
            try:
                import cryptography  # noqa: F401
            except ImportError:
                raise StartupError("--raft-password needs the cryptography package: pip install cryptography")

    # -------------------------------------------------------------- processes
    def spawn(self, child: Child):
        log_path = os.path.join(self.config.log_dir, f"{child.name}.log")
        env = dict(os.environ)
        env.pop(RAFT_PASSWORD_ENV, None)
        if child.name == "raft" and self.raft_password:
            env[RAFT_PASSWORD_ENV] = self.raft_password
        with open(log_path, "ab") as logf:
            child.proc = subprocess.Popen(
                [sys.executable, "-m", "jobbie.actors.launch", child.name, self.config_path],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, close_fds=True, env=env,
                # Own session: a terminal's Ctrl-C or a killpg reaches the supervisor
                # alone, which then stops the actors in order. PR_SET_PDEATHSIG
                # (actors/launch.py) takes them down if the supervisor is killed.
                start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_at = None

    def publish(self):
        rows = [c.row() for c in self.children.values()]
        rows.append({"name": "supervisor", "pid": os.getpid(), "restarts": 0, "alive": True})
        try:
            self.pub.send(codec.encode({"k": "actors", "actors": rows}), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def watch_once(self, now: float) -> str | None:
        """Restart what died; returns a reason to stop the node, or None."""
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is not None and child.restart_at is None:
                code = child.proc.returncode
                if code == EXIT_CANNOT_START:
                    self.exit_code = EXIT_CANNOT_START
                    return (f"the {child.name} actor cannot start (see "
                            f"{os.path.join(self.config.log_dir, child.name + '.log')})")
                delay = child.policy.on_crash(now, now - child.started_at)
                if delay is None:
                    log_path = os.path.join(self.config.log_dir, child.name + ".log")
                    last = last_error_line(log_path)
                    return (f"the {child.name} actor died {child.policy.intensity_max + 1} times within "
                            f"{child.policy.intensity_window_s:g}s (last exit code {code}"
                            f"{'; last error: ' + last if last else ''}); see {log_path}")
                log.warning("%s actor (pid %d) exited with code %s; restarting in %.2fs",
                            child.name, child.proc.pid, code, delay)
                child.restart_at = now + delay
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self.spawn(child)
        return None

    def stop_all(self):
        """Stop the actors in STOP_GROUPS order; the actors of one group stop at the same time."""
        for group in STOP_GROUPS:
            children = [self.children[n] for n in group if n in self.children and self.children[n].alive]
            for child in children:
                child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 8.0
            for child in children:
                try:
                    child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s actor did not stop in time; killing it", child.name)
                    child.proc.kill()
                    child.proc.wait()

    # -------------------------------------------------------------------- run
    def run(self) -> int:
        self.prepare()
        ctx = zmq.Context()
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(self.config.endpoint("supervisor"))

        def on_signal(signum, _frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        for name in self.children:
            self.spawn(self.children[name])
        cfg = self.config
        print(f"jobbie: node {cfg.node_id} serving {cfg.bind} (data {os.path.abspath(cfg.data_dir)}, "
              f"raft {cfg.raft_bind}, durable={'true' if cfg.durable else 'false'}); "
              f"logs in {cfg.log_dir}", file=sys.stderr, flush=True)
        if cfg.curve:
            self.announce_curve()
        if cfg.http:
            print(f"jobbie: web UI, JSON API and /metrics at http://{cfg.http_bind}/", file=sys.stderr, flush=True)
        if self.first_token:
            threading.Thread(target=self.announce_first_token, name="first-token", daemon=True).start()
        reason = None
        last_publish = 0.0
        try:
            while not self.stopping:
                now = time.monotonic()
                reason = self.watch_once(now)
                if reason:
                    break
                if now - last_publish >= 0.25:
                    self.publish()
                    last_publish = now
                time.sleep(0.02)
        finally:
            self.stop_all()
            self.pub.close()
            ctx.term()
            if self.temporary_run_dir:
                shutil.rmtree(self.config.run_dir, ignore_errors=True)
        if reason:
            print(f"jobbie: stopping the node: {reason}", file=sys.stderr, flush=True)
            return self.exit_code
        print("jobbie: node stopped cleanly", file=sys.stderr, flush=True)
        return 0


def run_server(config: NodeConfig, bootstrap: bool = False, rejoin: bool = False) -> int:
    # Every file and folder the node and its actors create is the owner's only (0600 / 0700):
    # payloads, the raft log, the node config and the logs are nobody else's business.
    os.umask(0o077)
    from .launch import formatter
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter("supervisor", config.log_format) if config.log_format == "json" else
                         logging.Formatter("%(asctime)s supervisor %(levelname)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, config.log_level.upper(), logging.INFO), handlers=[handler])
    try:
        return Supervisor(config, bootstrap=bootstrap, rejoin=rejoin).run()
    except StartupError as exc:
        print(f"jobbie: cannot start: {exc}", file=sys.stderr)
        return 2
