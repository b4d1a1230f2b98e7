"""The gateway's rules: from client frames to ops, and from results to replies.

It owns:
- decoding and validating every request (transport/ops.py rows) before it can
  reach the pipeline; bad input gets one INVALID_ARGUMENT naming the field;
- stamping writes with the node's time and fresh ids (the state machine
  reads no clock and makes no ids), and a tag `[origin, incarnation, seq]` so
  results find their request even across a gateway restart;
- point reads (get_job, list_queues) through an injected reader, and
  cluster_status from the latest raft and supervisor reports;
- long-poll fetches: a fetch that found nothing is parked per queue and sent
  again when raft reports that one of its queues gained pending jobs (no
  polling loop), or answered with an empty list when `wait_ms` runs out;
- time-outs: a write whose outcome has not come back within the write
  time-out is answered UNAVAILABLE ("outcome unknown, retry with the same
  request_id"), so no client hangs on a restarting actor;
- mirror ops (search_jobs, bulk, bulk_status, rebuild_mirror): forwarded to
  the mirror actor with a tag and `min_index`, the newest raft index whose
  results this gateway has seen (the mirror answers once it holds the
  changes up to there), answered when its result comes back on the same
  path as raft's; refused at once (UNAVAILABLE) while the mirror has
  not reported for a while.

Pure: no sockets, no clock (`now` is passed in, in seconds), ids come from an
injected generator.
"""
from __future__ import annotations

import heapq
import logging
from collections import OrderedDict

from jobbie.transport import codec, ops as opsdef
from jobbie.transport.errors import InvalidArgument, JobbieError, NotFound

from .auth import secret_hash

GW = "gw"
log = logging.getLogger("jobbie.gateway")
#: How long a mirror op may take before it is answered UNAVAILABLE / timeout (seconds).
MIRROR_TIMEOUT_S = {"search_jobs": 10.0, "bulk_status": 10.0, "bulk": 120.0, "rebuild_mirror": 600.0,
                    "usage_summary": 10.0, "rebuild_usage": 600.0}
#: Writes whose op carries the request's client key as `who`, for the audit trail.
AUDITED = frozenset({"approve_job", "reject_job", "set_budget", "delete_budget", "set_price", "delete_price",
                     "cancel_job", "delete_job", "create_token", "revoke_token"})
#: Writes taken even while the disk is low: they free space (or let a person decide what to free).
FREEING_OPS = frozenset({"delete_job", "clear_queue", "drain_queue", "delete_queue", "cancel_job"})
#: How often the gateway of an --auth node proposes the first admin token until it exists.
BOOTSTRAP_EVERY_S = 2.0
#: Reads that show figures at the gateway's time (a budget's spend in its current window).
READS_AT_NOW = frozenset({"get_budget", "list_budgets"})
#: The mirror reports every 0.5 s; after this long without a report its ops are refused at once.
MIRROR_STALE_S = 3.0


class Pending:
    __slots__ = ("ident", "envelope", "req_id", "op", "client", "deadline", "args", "wait_until", "who")

    def __init__(self, ident, envelope, req_id, op, client, deadline, args=None, wait_until=0.0, who=None):
        self.ident = ident
        self.envelope = envelope
        self.req_id = req_id
        self.op = op
        self.client = client
        self.deadline = deadline
        self.args = args
        self.wait_until = wait_until
        #: For the audit trail: `token:NAME` when the request carried a token, else the client key.
        self.who = who


class GatewayCore:
    def __init__(self, node_id: str, incarnation: int, ids, reader, limits: opsdef.Limits = opsdef.Limits(),
                 write_timeout_s: float = 5.0, durable: bool = False, mirror: bool = True, usage: bool = True,
                 auth=None, bootstrap_token: dict | None = None, make_secret=None):
        self.node_id = node_id
        #: With --auth: the token check (actors/gateway/auth.py); None lets every request through.
        self.auth = auth
        #: With --auth on a first start: {"id", "hash"} of the first admin token, proposed until it exists.
        self.bootstrap_token = bootstrap_token
        self.bootstrap_at = 0.0
        #: Makes a token's secret (injected: the core itself makes no randomness).
        self.make_secret = make_secret
        self.mirror_enabled = mirror
        self.usage_enabled = usage
        self.durable = durable
        self.incarnation = incarnation
        self.ids = ids
        self.reader = reader
        self.limits = limits
        self.write_timeout_s = write_timeout_s
        self.seq = 0
        self.pending: dict[int, Pending] = {}
        self.parked: dict[int, Pending] = {}  # seq -> parked fetch
        self.parked_by_queue: dict[str, OrderedDict] = {}
        self.deadlines: list = []  # heap of (time, seq): write deadlines and long-poll ends
        self.replies: list = []  # [ident, (b""), bytes]
        self.ops_out: list = []  # [client, size, tag, op bytes]
        self.control_out: list = []  # [tag, op name, args] for the raft actor
        self.mirror_out: list = []  # {"k": "search", "tag", "op", "args"} for the mirror actor
        self.mirror_status: dict = {}
        self.usage_out: list = []  # {"k": "search", "tag", "op", "args", "now"} for the usage actor
        self.usage_status: dict = {}
        self.raft_status: dict = {}
        self.admission_status: dict = {}
        self.actors: list = []
        self.stats = {"requests": 0, "invalid": 0, "oversize": 0, "timeouts": 0}
        #: Answers sent, by (op, code): code is OK or the error code. An op name that is not in the
        #: registry counts as `unknown`, so a client cannot grow this map (cluster_status, /metrics).
        self.answers: dict = {}
        # Newest raft index whose results this gateway has seen: a mirror op carries it, and the
        # mirror answers once it holds the changes up to there (read your acknowledged writes).
        self.seen_index = 0

    # ------------------------------------------------------------------ output
    def take_outputs(self):
        replies, ops = self.replies, self.ops_out
        self.replies, self.ops_out = [], []
        return replies, ops

    def take_control(self):
        control, self.control_out = self.control_out, []
        return control

    def take_mirror(self):
        out, self.mirror_out = self.mirror_out, []
        return out

    def reply(self, ident, envelope, req_id, body_key, body):
        if ident is None:
            return  # the gateway's own op (the first admin token): nobody to answer
        frame = codec.encode({"id": req_id, body_key: body})
        self.replies.append([ident, b"", frame] if envelope else [ident, frame])

    def reply_error(self, ident, envelope, req_id, err: JobbieError):
        self.reply(ident, envelope, req_id, "err", err.to_wire())

    def count(self, op: str, code: str):
        key = (op, code)
        answers = self.answers
        answers[key] = answers.get(key, 0) + 1

    # ----------------------------------------------------------------- intake
    def on_request(self, frames: list, now: float):
        """One multipart message from the ROUTER socket."""
        self.stats["requests"] += 1
        ident = frames[0]
        if len(frames) == 3 and frames[1] == b"":
            envelope, payload = True, frames[2]
        elif len(frames) == 2:
            envelope, payload = False, frames[1]
        else:
            self.stats["invalid"] += 1
            err = InvalidArgument("a request is one frame (or an empty delimiter frame and one frame)",
                                  reason="malformed")
            self.reply_error(ident, len(frames) > 2, -1, err)
            return
        if len(payload) > codec.FRAME_BYTES_MAX:
            self.stats["invalid"] += 1
            self.stats["oversize"] += 1
            self.reply_error(ident, envelope, codec.peek_request_id(payload), InvalidArgument(
                f"the request frame is {len(payload)} bytes, over the {codec.FRAME_BYTES_MAX}-byte (8 MiB) limit; "
                "send fewer jobs per enqueue_batch, or large data by reference", reason="too_large"))
            return
        req_id = -1
        msg = None
        try:
            msg = codec.decode(payload)
            if type(msg) is not dict:
                raise InvalidArgument("a request must be a msgpack map {id, op, args}", reason="malformed")
            req_id = msg.get("id")
            if not codec.is_request_id(req_id):
                # nil means absent, here as for every other field
                absent = req_id is None
                req_id = -1
                raise InvalidArgument("request has no id" if absent else "request id must be an integer",
                                      field="id", reason="missing_field" if absent else "wrong_type")
            if msg.get("op") is None:
                raise InvalidArgument("request has no op", field="op", reason="missing_field")
            extra = set(msg) - {"id", "op", "args", "client", "token"}
            if extra:
                name = sorted(map(str, extra))[0]
                raise InvalidArgument(f"unknown envelope field {name[:64]} (accepted: id, op, args, client, token)",
                                      field=name[:64], reason="unknown_field")
            who = None
            if self.auth is not None:
                # Before the args are read: without the right token, a request learns nothing.
                name = msg["op"] if type(msg["op"]) is str else ""
                who = self.auth.check(msg.get("token"), name, now)
                if who is not None:
                    who = f"token:{who}"
            client = msg.get("client")
            if client is not None and type(client) is not str:
                raise InvalidArgument("client must be a string", field="client", reason="wrong_type")
            if client is not None and not opsdef.PRINTABLE_ID.match(client):
                raise InvalidArgument("client must be 1-128 printable ASCII characters", field="client",
                                      reason="invalid_name")
            op, args = opsdef.validate(msg["op"], msg.get("args"), self.limits, len(payload), int(now * 1000))
        except codec.DecodeError as exc:
            self.stats["invalid"] += 1
            self.count("unknown", "INVALID_ARGUMENT")
            # Answer under the request's own id whenever it can be read.
            found = exc.value.get("id") if isinstance(exc.value, dict) else codec.peek_request_id(payload)
            self.reply_error(ident, envelope, found if codec.is_request_id(found) else -1,
                             InvalidArgument(str(exc), field=exc.field, reason=exc.reason))
            return
        except JobbieError as exc:
            self.stats["invalid"] += 1
            name = msg.get("op") if isinstance(msg, dict) else None
            self.count(name if type(name) is str and name in opsdef.OPS else "unknown", exc.code)
            self.reply_error(ident, envelope, req_id, exc)
            return
        except Exception as exc:  # a validator bug must not take the gateway down
            log.exception("request %s could not be validated", req_id)
            self.reply(ident, envelope, req_id, "err", {"code": "INTERNAL", "reason": "gateway_error",
                                                         "message": f"{type(exc).__name__}: {exc}"})
            return
        client = client or ident.hex()
        try:
            self.dispatch(ident, envelope, req_id, op, args, client, now, who)
        except Exception as exc:  # a bug: answer INTERNAL, keep serving everyone else
            log.exception("request %s (%s) failed in the gateway", req_id, op.name)
            self.reply(ident, envelope, req_id, "err", {"code": "INTERNAL", "reason": "gateway_error",
                                                         "message": f"{type(exc).__name__}: {exc}"})

    def dispatch(self, ident, envelope, req_id, op, args, client, now, who=None):
        if op.path == "local":
            self.count(op.name, "OK")
            self.reply(ident, envelope, req_id, "ok", self.health(now) if op.name == "health" else
                       self.cluster_status(now))
        elif op.path == "read":
            self.read(ident, envelope, req_id, op.name, args, now)
        elif op.path == "control":
            self.seq += 1
            tag = [GW, self.incarnation, self.seq]
            p = Pending(ident, envelope, req_id, op.name, client, now + self.write_timeout_s)
            self.pending[self.seq] = p
            heapq.heappush(self.deadlines, (p.deadline, self.seq))
            self.control_out.append([tag, op.name, args])
        elif op.path == "mirror":
            self.to_mirror(ident, envelope, req_id, op.name, args, client, now, who)
        elif op.path == "usage":
            self.to_usage(ident, envelope, req_id, op.name, args, client, now)
        else:
            disk = self.raft_status.get("disk") or {}
            if disk.get("low") and op.name not in FREEING_OPS:
                free = disk.get("free_bytes") or 0
                self.count(op.name, "RESOURCE_EXHAUSTED")
                self.reply(ident, envelope, req_id, "err", {
                    "code": "RESOURCE_EXHAUSTED", "reason": "disk_full", "retry_after_ms": 5000,
                    "message": f"the node's disk has {free // 1048576} MiB free, under its "
                               f"{disk.get('min_free_bytes', 0) // 1048576} MiB reserve (--disk-free-min-mb): writes "
                               "wait until space is freed; reads and deletes still work"})
                return
            p = Pending(ident, envelope, req_id, op.name, client, now + self.write_timeout_s, who=who)
            if op.name == "create_token":
                secret = self.make_secret()
                p.args = {"token_id": self.ids.new("tok"), "hash": secret_hash(secret), "secret": secret}
            if op.name == "fetch":
                p.args = args
                p.wait_until = now + args["wait_ms"] / 1000.0
                p.deadline = p.wait_until + self.write_timeout_s
            self.submit(p, args, now)

    def to_mirror(self, ident, envelope, req_id, name, args, client, now, who=None):
        if not self.mirror_enabled:
            self.count(name, "UNAVAILABLE")
            self.reply(ident, envelope, req_id, "err", {
                "code": "UNAVAILABLE", "reason": "mirror_disabled",
                "message": f"{name} needs the mirror actor, which this node runs without (--mirror=false); "
                           "ask a node that runs it"})
            return
        seen = self.mirror_status.get("seen_at")
        if seen is None or now - seen > MIRROR_STALE_S:
            self.count(name, "UNAVAILABLE")
            self.reply(ident, envelope, req_id, "err", {
                "code": "UNAVAILABLE", "reason": "mirror_unavailable", "retry_after_ms": 500,
                "message": "the mirror actor (search and bulk) has not reported recently; it may be starting "
                           "or restarting, retry shortly"})
            return
        if name == "bulk" and args["action"] in ("approve", "reject") and not args.get("actor"):
            args = dict(args, actor=who or client)  # who decided, for the audit trail
        self.mirror_out.append(self.pending_view_request(ident, envelope, req_id, name, args, client, now))

    def to_usage(self, ident, envelope, req_id, name, args, client, now):
        """usage_summary and rebuild_usage go to the usage actor, like mirror ops to the mirror."""
        if not self.usage_enabled:
            self.count(name, "UNAVAILABLE")
            self.reply(ident, envelope, req_id, "err", {
                "code": "UNAVAILABLE", "reason": "usage_disabled",
                "message": f"{name} needs the usage actor, which this node runs without (--usage=false); "
                           "ask a node that runs it"})
            return
        seen = self.usage_status.get("seen_at")
        if seen is None or now - seen > MIRROR_STALE_S:
            self.count(name, "UNAVAILABLE")
            self.reply(ident, envelope, req_id, "err", {
                "code": "UNAVAILABLE", "reason": "usage_unavailable", "retry_after_ms": 500,
                "message": "the usage actor has not reported recently; it may be starting or restarting, "
                           "retry shortly"})
            return
        request = self.pending_view_request(ident, envelope, req_id, name, args, client, now)
        self.usage_out.append(dict(request, now=int(now * 1000)))

    def pending_view_request(self, ident, envelope, req_id, name, args, client, now) -> dict:
        """Track a request answered by the mirror or usage actor; returns the frame to send it."""
        self.seq += 1
        p = Pending(ident, envelope, req_id, name, client, now + MIRROR_TIMEOUT_S.get(name, 10.0))
        self.pending[self.seq] = p
        heapq.heappush(self.deadlines, (p.deadline, self.seq))
        return {"k": "search", "tag": [GW, self.incarnation, self.seq], "op": name, "args": args,
                "min_index": self.seen_index}

    def take_usage(self):
        out, self.usage_out = self.usage_out, []
        return out

    def submit(self, p: Pending, args: dict, now: float):
        self.seq += 1
        tag = [GW, self.incarnation, self.seq]
        op = {"op": p.op, "args": args, "now": int(now * 1000), "tag": tag}
        if p.op in AUDITED or (p.op == "enqueue" and args.get("hold")):
            op["who"] = p.who or p.client  # for the audit trail (the `actor` arg, when given, wins)
        ids = self.make_ids(p.op, args)
        if p.op == "create_token":
            ids = [p.args["token_id"], p.args["hash"]]
        if ids:
            op["ids"] = ids
        data = codec.encode(op)
        self.pending[self.seq] = p
        heapq.heappush(self.deadlines, (p.deadline, self.seq))
        self.ops_out.append([p.client, len(data), tag, data])

    def make_ids(self, op_name: str, args: dict):
        if op_name in ("enqueue", "replay_job"):
            return [self.ids.new("job")]
        if op_name == "enqueue_batch":
            ids = [self.ids.new("job") for _ in args["jobs"]]
            if args.get("batch"):
                ids += [self.ids.new("bat"), self.ids.new("job")]
            return ids
        return None

    def read(self, ident, envelope, req_id, name, args, now: float = 0.0):
        try:
            if name in READS_AT_NOW:
                args = dict(args, now=int(now * 1000))
            result = self.reader.read(name, args)
            if result is None:
                field = next((a for a in ("job_id", "queue", "name") if a in args), None)
                raise NotFound(f"{field} {args.get(field)} not found" if field else "not found", field=field)
            self.count(name, "OK")
            self.reply(ident, envelope, req_id, "ok", result)
        except JobbieError as exc:
            self.count(name, exc.code)
            self.reply_error(ident, envelope, req_id, exc)

    # ---------------------------------------------------------------- results
    def on_applied(self, msg: dict, now: float):
        index = msg.get("index")
        if index is not None and index > self.seen_index:
            self.seen_index = index
        for tag, result in msg.get("items") or ():
            if tag[1] != self.incarnation:
                continue  # another node's gateway, or an earlier life of this one
            p = self.pending.pop(tag[2], None)
            if p is None:
                continue
            if (p.op == "fetch" and "ok" in result and not result["ok"]["jobs"] and p.wait_until > now):
                self.park(tag[2], p)
                continue
            if p.ident is None:
                self.on_own_result(p, result)
                continue
            if "ok" in result:
                self.count(p.op, "OK")
                ok = result["ok"]
                if p.op == "create_token" and ok.get("token_id") == p.args["token_id"]:
                    # The secret exists only here and in this answer (a retry of the same request_id,
                    # answered from the dedupe record, made another id and gets no secret).
                    ok = dict(ok, token=f"{ok['token_id']}.{p.args['secret']}")
                self.reply(p.ident, p.envelope, p.req_id, "ok", ok)
            else:
                self.count(p.op, result["err"].get("code", "INTERNAL"))
                self.reply(p.ident, p.envelope, p.req_id, "err", result["err"])
        for queue, count in (msg.get("woken") or {}).items():
            self.wake(queue, count, now)

    def park(self, seq: int, p: Pending):
        self.parked[seq] = p
        heapq.heappush(self.deadlines, (p.wait_until, seq))
        for q in p.args["queues"]:
            self.parked_by_queue.setdefault(q, OrderedDict())[seq] = None

    def unpark(self, seq: int) -> Pending | None:
        p = self.parked.pop(seq, None)
        if p is not None:
            for q in p.args["queues"]:
                waiting = self.parked_by_queue.get(q)
                if waiting is not None:
                    waiting.pop(seq, None)
                    if not waiting:
                        del self.parked_by_queue[q]
        return p

    def wake(self, queue: str, count: int, now: float):
        """Send parked fetches of `queue` again, oldest first, enough to take `count` jobs."""
        waiting = self.parked_by_queue.get(queue)
        while waiting and count > 0:
            seq = next(iter(waiting))
            p = self.unpark(seq)
            count -= p.args["count"]
            self.submit(p, p.args, now)

    # ------------------------------------------------------------ first token
    def maybe_bootstrap(self, now: float):
        """On the leader of an --auth node's first start: propose the first admin token until it exists."""
        if self.bootstrap_token is None or now < self.bootstrap_at:
            return
        if self.raft_status.get("role") != "leader":
            return
        self.bootstrap_at = now + BOOTSTRAP_EVERY_S
        p = Pending(None, False, -1, "create_token", "gateway", now + self.write_timeout_s, who="server:bootstrap",
                    args={"token_id": self.bootstrap_token["id"], "hash": self.bootstrap_token["hash"]})
        self.submit(p, {"name": "admin", "role": "admin", "note": "the first admin token (jobbie server --auth)",
                        "bootstrap": True}, now)

    def on_own_result(self, p: Pending, result: dict):
        if p.op == "create_token" and ("ok" in result or (result.get("err") or {}).get("reason") == "tokens_exist"):
            self.bootstrap_token = None  # made, or another node's first token won

    def raft_fresh(self, now: float) -> bool:
        """The raft actor reported within the last 2 s."""
        raft = self.raft_status
        return bool(raft) and now - raft.get("seen_at", 0) < 2.0

    def health(self, now: float) -> dict:
        raft = self.raft_status
        fresh = self.raft_fresh(now)
        return {"node_id": raft.get("node_id", self.node_id), "role": raft.get("role", "unknown") if fresh else "unknown",
                "leader_known": bool(fresh and raft.get("leader"))}

    # ------------------------------------------------------------------- time
    def on_tick(self, now: float):
        self.maybe_bootstrap(now)
        heap = self.deadlines
        while heap and heap[0][0] <= now:
            _, seq = heapq.heappop(heap)
            p = self.parked.get(seq)
            if p is not None and p.wait_until <= now:
                self.unpark(seq)
                self.count("fetch", "OK")
                self.reply(p.ident, p.envelope, p.req_id, "ok", {"jobs": []})
                continue
            p = self.pending.get(seq)
            if p is not None and p.deadline <= now:
                del self.pending[seq]
                self.stats["timeouts"] += 1
                self.count(p.op, "UNAVAILABLE")
                self.reply(p.ident, p.envelope, p.req_id, "err", {
                    "code": "UNAVAILABLE", "reason": "timeout",
                    "message": f"no outcome for {p.op} in time (a node process may be restarting); "
                               "the outcome is unknown, retry with the same request_id",
                    "retry_after_ms": 100})

    def release_parked(self):
        """Shutting down: answer every parked long-poll with no jobs."""
        for seq in list(self.parked):
            p = self.unpark(seq)
            self.reply(p.ident, p.envelope, p.req_id, "ok", {"jobs": []})

    def in_flight(self) -> int:
        return len(self.pending) + len(self.parked)

    # ----------------------------------------------------------------- status
    def on_status(self, msg: dict, now: float):
        if msg.get("k") == "raft_status":
            self.raft_status = dict(msg, seen_at=now)
            watch = getattr(self.reader, "watch", None)
            if watch is not None:
                watch(msg.get("lmdb_id"))
        elif msg.get("k") == "actors":
            self.actors = msg["actors"]
        elif msg.get("k") == "admission_status":
            self.admission_status = msg
        elif msg.get("k") == "mirror_status":
            self.mirror_status = dict(msg, seen_at=now)
        elif msg.get("k") == "usage_status":
            self.usage_status = dict(msg, seen_at=now)

    def cluster_status(self, now: float) -> dict:
        raft = self.raft_status
        fresh = self.raft_fresh(now)
        out = {
            "node_id": raft.get("node_id", self.node_id),
            "role": raft.get("role", "unknown") if fresh else "unknown",
            "leader": raft.get("leader") if fresh else None,
            "term": raft.get("term", 0),
            "commit_index": raft.get("commit_index", 0),
            "applied_index": raft.get("applied_index", 0),
            "durable": raft.get("durable", self.durable),
            "raft_bind": raft.get("raft_bind"),
            "peers": raft.get("peers", []),
            "snapshot": raft.get("snapshot"),
            "journal_entries": raft.get("journal_entries"),
            "actors": self.actors,
            "gateway": {"pending": len(self.pending), "parked_fetches": len(self.parked), **self.stats,
                        "answers": [[op, code, n] for (op, code), n in sorted(self.answers.items())]},
            "pipeline": {
                "queue_wait_ms": self.admission_status.get("queue_wait_ms"),
                "apply_ms": raft.get("apply_ms"),
                "entry_commit_ms": self.admission_status.get("entry_commit_ms"),
                "entry_ops": self.admission_status.get("entry_ops"),
                "admission": {k: v for k, v in self.admission_status.items()
                              if k not in ("k", "queue_wait_ms", "entry_commit_ms", "entry_ops")},
            },
        }
        out["mirror"] = self.mirror_report(now)
        out["usage"] = self.usage_report(now)
        out["disk"] = raft.get("disk")
        if not fresh:
            out["warning"] = "no recent report from the raft actor (starting or restarting)"
        elif (raft.get("disk") or {}).get("low"):
            out["warning"] = (f"the disk is low ({(raft['disk'].get('free_bytes') or 0) // 1048576} MiB free, under the "
                              f"reserve): writes are refused with disk_full until space is freed")
        return out

    def usage_report(self, now: float) -> dict | None:
        u = self.usage_status
        if not u:
            return None
        report = {k: v for k, v in u.items() if k not in ("k", "seen_at")}
        report["stale"] = now - u["seen_at"] > MIRROR_STALE_S
        return report

    def mirror_report(self, now: float) -> dict | None:
        m = self.mirror_status
        if not m:
            return None
        report = {k: v for k, v in m.items() if k not in ("k", "seen_at")}
        report["stale"] = now - m["seen_at"] > MIRROR_STALE_S
        return report
