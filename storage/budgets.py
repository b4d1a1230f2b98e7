"""Budgets: replicated spend limits, checked and charged inside the state machine.

The rules (docs/ai.md has the user's view):

- A budget has a scope: `global`, `namespace` (a queue name up to its first
  `.`), `queue`, or `tag` (`key=value`); every budget whose scope matches a
  job applies to it (layers). A job may also carry its own cap (`budget_usd`
  on enqueue, or `agent.max_cost_usd`): the `job` layer.
- Limits in USD and/or tokens, over a window: `total`, `day` or `month` (UTC
  calendar), or rolling `hours` (hourly buckets). Money is counted in integer
  micro-dollars, so sums are exact and the same on every node.
- Spend is charged from the job's usage records (storage/usage.py): each
  report changes `usage_total`, and the change is charged to every layer that
  matches the job then, in the window of the op's `now`.
- Reservation at dispatch. A fetch leases a job only if its estimated cost
  fits every layer: spent + reserved + estimate <= limit. The estimate is the
  job's remaining cap, else its `estimate_usd`, else the layer's recent cost
  per attempt; a layer that has seen no finished attempt yet lets one job of
  unknown cost run at a time. A job that cannot fit even with nothing else
  reserved (spent + estimate > limit) is exhausted for it: `hold` moves it to
  `held` (hold_reason `budget:<id>`), `reject` leaves it pending (fetch will
  not lease it; enqueue of that scope is refused). Spend charged while the
  job runs uses up its reservation first; the attempt's end (ack, fail, lease
  expiry, delete) releases what is left.
- Pause, not kill: a heartbeat after which a `hold`/`reject` layer is spent
  answers `budget_exceeded: true` and marks the job (`pause`); its next fail
  (or lease expiry) moves it to `held`, its checkpoint kept, and that attempt
  does not count against `max_retries`. An ack still completes it.
- Crossing: the first charge that spends a layer in a window writes an audit
  event, and enqueues a job on the budget's `alert_queue` when it names one.
  `alert` budgets only do that; they never stop a job.
- Held by a budget: the job is listed under its budget and released to
  `pending` by approval, by its hold time-out, or when the budget's window
  rolls over (the lifecycle's tick).

Everything here reads the op's `now`, never a clock.
"""
from __future__ import annotations

import calendar
import hashlib
import time

from jobbie.transport.codec import decode_trusted, encode
from jobbie.transport.errors import error_result

from . import audit
from . import keys as K
from .usage import namespace

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MUSD = 1_000_000
#: Jobs a fetch looks at beyond what it asked for, when budgets turn jobs away.
FETCH_EXTRA_LOOKS = 256
#: Weight of the newest attempt in a layer's recent cost per attempt (1/4).
AVG_WEIGHT = 4
#: meta key: how many budgets exist (0: every budget path is skipped).
COUNT = b"budgets"


def to_musd(usd: float | None) -> int:
    return 0 if not usd else int(round(usd * MUSD))


def usd(musd: int | None) -> float | None:
    return None if musd is None else musd / MUSD


# ------------------------------------------------------------------ windows

def _month_start(now: int) -> int:
    t = time.gmtime(now // 1000)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)) * 1000


def _next_month(start: int) -> int:
    t = time.gmtime(start // 1000)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


def window_start(b: dict, now: int) -> int:
    """Where the budget's current window starts (rolling windows: the current hour)."""
    w = b["window"]
    if w == "total":
        return 0
    if w == "day":
        return now - now % DAY_MS
    if w == "month":
        return _month_start(now)
    return now - now % HOUR_MS


def reset_at(b: dict, now: int) -> int | None:
    """When the current window's spend stops counting (None: never, for `total`).

    Rolling windows: when the oldest hour with spend drops out."""
    w = b["window"]
    if w == "total":
        return None
    if w == "day":
        return window_start(b, now) + DAY_MS
    if w == "month":
        return _next_month(window_start(b, now))
    live = _live_buckets(b, now)
    return (live[0][0] if live else window_start(b, now)) + b["hours"] * HOUR_MS


def _live_buckets(b: dict, now: int) -> list:
    oldest = now - now % HOUR_MS - (b["hours"] - 1) * HOUR_MS
    return [x for x in b.get("buckets") or () if x[0] >= oldest]


def spent(b: dict, now: int) -> tuple[int, int]:
    """(micro-USD, tokens) spent in the window of `now`."""
    w = b["window"]
    if w == "hours":
        oldest = now - now % HOUR_MS - (b["hours"] - 1) * HOUR_MS
        m = t = 0
        for hour, bm, bt in reversed(b["buckets"]):  # oldest first, so stop at the first one out
            if hour < oldest:
                break
            m += bm
            t += bt
        return m, t
    if w == "total":
        return b["spent_musd"], b["spent_tokens"]
    end = b.get("window_end")
    if end is not None and b["window_start"] <= now < end:
        return b["spent_musd"], b["spent_tokens"]
    return 0, 0


def _charge(b: dict, now: int, musd: int, tokens: int):
    w = b["window"]
    if w == "hours":
        hour = now - now % HOUR_MS
        live = _live_buckets(b, now)
        if live and live[-1][0] == hour:
            live[-1] = [hour, max(0, live[-1][1] + musd), max(0, live[-1][2] + tokens)]
        else:
            live.append([hour, max(0, musd), max(0, tokens)])
        b["buckets"] = live
        return
    if w != "total":
        end = b.get("window_end")
        if end is None or not b["window_start"] <= now < end:  # a new window: its spend starts at 0
            b["window_start"], b["window_end"] = window_start(b, now), reset_at(b, now)
            b["spent_musd"] = b["spent_tokens"] = 0
    b["spent_musd"] = max(0, b["spent_musd"] + musd)
    b["spent_tokens"] = max(0, b["spent_tokens"] + tokens)


def over(b: dict, s_musd: int, s_tokens: int, extra_musd: int = 0) -> bool:
    """With this spend (and `extra_musd` more), is the budget spent?"""
    limit = b["limit_musd"]
    if limit is not None and (s_musd + extra_musd > limit or (extra_musd == 0 and s_musd >= limit)):
        return True
    return b["limit_tokens"] is not None and s_tokens >= b["limit_tokens"]


def exhausted(b: dict, now: int, extra_musd: int = 0) -> bool:
    """Is the budget spent (with `extra_musd` more)? `alert` budgets count too; callers decide."""
    s_musd, s_tokens = spent(b, now)
    return over(b, s_musd, s_tokens, extra_musd)


def view(b: dict, now: int) -> dict:
    """The budget as list_budgets / get_budget show it at `now`."""
    s_musd, s_tokens = spent(b, now)
    out = {k: b.get(k) for k in ("id", "scope", "target", "window", "hours", "on_exceed", "alert_queue",
                                 "hold_timeout_ms", "timeout_action", "note", "created_at", "updated_at")}
    limit_musd, limit_tokens = b.get("limit_musd"), b.get("limit_tokens")
    out.update(
        limit_usd=usd(limit_musd), limit_tokens=limit_tokens,
        spent_usd=usd(s_musd), spent_tokens=s_tokens, reserved_usd=usd(b["reserved_musd"]),
        running=b["inflight"],
        remaining_usd=None if limit_musd is None else usd(max(0, limit_musd - s_musd - b["reserved_musd"])),
        remaining_tokens=None if limit_tokens is None else max(0, limit_tokens - s_tokens),
        exceeded=exhausted(b, now), window_start=window_start(b, now) if b["window"] != "hours"
        else window_start(b, now) - (b["hours"] - 1) * HOUR_MS,
        reset_at=reset_at(b, now), held=b["held"], avg_attempt_usd=usd(b.get("avg_attempt_musd")))
    return out


# ------------------------------------------------------------------ records and scopes

def scope_key(scope: str, target: str) -> bytes:
    return scope.encode() + b"\x00" + target.encode()


def scopes_of(queue: str, tags: dict | None) -> list[bytes]:
    out = [scope_key("global", ""), scope_key("namespace", namespace(queue)), scope_key("queue", queue)]
    for k, v in sorted((tags or {}).items()):
        out.append(scope_key("tag", f"{k}={v}"))
    return out


class Book:
    """The budget records, decoded once and written once per raft entry.

    Every budgeted op reads the same few budget records; decoding and re-encoding them per op was
    most of what budgets cost. So `get` decodes a record the first time it is needed and hands
    each op a copy of its own (`Apply.budget_work`); the op's copies replace the book's records
    when the op commits (`commit`) and vanish with it when it is refused; `flush` writes the
    changed records once, at the end of the entry, in the entry's own transaction. The state
    machine is the only writer of these records, so the book stays valid from entry to entry
    for as long as its store is open (apply_batch keeps it on the store, and drops it if an
    entry fails). The scope index and the budget count are cached the same way, and dropped
    after an op that changes them (set_budget, delete_budget), which reads them from LMDB.
    """

    __slots__ = ("base", "dirty", "scopes", "by_queue", "count")

    def __init__(self):
        self.base: dict[str, dict | None] = {}
        self.dirty: set[str] = set()
        self.scopes: dict[bytes, tuple] = {}
        self.by_queue: dict[str, list] = {}  # budget ids of an untagged job of that queue
        self.count: int | None = None

    def commit(self, work: dict):
        if work:
            self.base.update(work)
            self.dirty.update(work)

    def forget_index(self):
        self.scopes.clear()
        self.by_queue.clear()
        self.count = None

    def flush(self, txn, dbs):
        for budget_id in sorted(self.dirty):
            rec = self.base[budget_id]
            if rec is None:
                txn.delete(budget_id.encode(), db=dbs["budgets"])
            else:
                txn.put(budget_id.encode(), encode(rec), db=dbs["budgets"])
        self.dirty.clear()


#: Ops that change the scope index and the budget count (they bypass the Book's caches of them).
ADMIN_OPS = frozenset({"set_budget", "delete_budget"})


def get(a, budget_id: str) -> dict | None:
    """The budget record as this op sees it (its own copy: change it, then `save`)."""
    work = a.budget_work
    if budget_id in work:
        return work[budget_id]
    book = a.book
    if book is None:  # an Apply outside apply_batch: straight to LMDB
        return a.get("budgets", budget_id.encode())
    if budget_id in book.base:
        base = book.base[budget_id]
    else:
        base = book.base[budget_id] = a.get("budgets", budget_id.encode())
    rec = None
    if base is not None:
        rec = dict(base)
        rec["buckets"] = list(base.get("buckets") or ())
    work[budget_id] = rec
    return rec


def save(a, b: dict):
    if a.book is None:
        a.put("budgets", b["id"].encode(), b)
    else:
        a.budget_work[b["id"]] = b


def drop(a, budget_id: str):
    if a.book is None:
        a.txn.delete(budget_id.encode(), db=a.db["budgets"])
    else:
        a.budget_work[budget_id] = None


def any_budgets(a) -> bool:
    book = a.book
    if book is not None and not a.budget_admin:
        if book.count is None:
            book.count = a.meta_int(COUNT)
        return book.count > 0
    return a.meta_int(COUNT) > 0


def _scope_ids(a, key: bytes):
    book = a.book
    if book is None or a.budget_admin:
        return a.get("budget_scope", key) or ()
    ids = book.scopes.get(key)
    if ids is None:
        ids = book.scopes[key] = tuple(a.get("budget_scope", key) or ())
    return ids


def layer_ids(a, queue: str, tags: dict | None) -> list[str]:
    """Ids of the budgets whose scope matches a job of `queue` with `tags`, in id order."""
    book = a.book
    cached = not tags and book is not None and not a.budget_admin
    if cached and queue in book.by_queue:
        return book.by_queue[queue]
    ids = []
    for key in scopes_of(queue, tags):
        ids.extend(_scope_ids(a, key))
    if len(ids) > 1:
        ids = sorted(set(ids))
    if cached:
        book.by_queue[queue] = ids
    return ids


def layers(a, queue: str, tags: dict | None) -> list[dict]:
    """Every budget record whose scope matches a job of `queue` with `tags`, in id order."""
    if not any_budgets(a):
        return []
    out = []
    for budget_id in layer_ids(a, queue, tags):
        b = get(a, budget_id)
        if b is not None:
            out.append(b)
    return out


def job_cap_musd(job: dict) -> int | None:
    cap = job.get("budget_usd")
    if cap is None:
        cap = (job.get("agent") or {}).get("max_cost_usd")
    return None if cap is None else to_musd(cap)


def cap_reason(job: dict) -> str:
    """The hold reason of a job's own cap: `max_cost` for an agent's guardrail, else `budget:job`."""
    if job.get("budget_usd") is None and (job.get("agent") or {}).get("max_cost_usd") is not None:
        return "max_cost"
    return "budget:job"


def job_spent(job: dict) -> tuple[int, int]:
    total = job.get("usage_total")
    if not total:
        return 0, 0
    return (to_musd(total.get("cost_usd")), total.get("input_tokens", 0) + total.get("output_tokens", 0)
            + total.get("cache_read_tokens", 0) + total.get("cache_write_tokens", 0))


def is_budgeted(a, job: dict) -> bool:
    return job_cap_musd(job) is not None or any_budgets(a)


# ------------------------------------------------------------------ enqueue

def check_enqueue(a, args: dict) -> tuple[dict | None, str | None]:
    """(refusal, hold_reason) for a job about to be created: a `reject` layer that is spent
    refuses it; a spent `hold` layer makes it start `held`."""
    hold = None
    for b in layers(a, args["queue"], args.get("tags")):
        if b["on_exceed"] == "alert" or not exhausted(b, a.now):
            continue
        if b["on_exceed"] == "reject":
            at = reset_at(b, a.now)
            return error_result(
                "RESOURCE_EXHAUSTED", f"budget {b['id']} ({b['scope']} {b['target'] or ''}".rstrip()
                + f") is spent for this {b['window']} window; "
                + ("it resets at the time in retry_after_ms" if at else "raise its limit with set_budget"),
                "queue", "budget_exceeded", None if at is None else max(1, at - a.now)), None
        if hold is None:
            hold = f"budget:{b['id']}"
    return None, hold


# ------------------------------------------------------------------ fetch

def admit(a, job: dict) -> tuple[str, str | None, bool]:
    """Decide whether fetch may lease `job` now: ("ok", None, _) after reserving its estimate
    on every layer; ("hold", reason, _) when a `hold` layer (or its own cap) is spent for it;
    ("wait", budget_id, whole_queue) when it must stay pending for now (`whole_queue`: the
    layer covers its whole queue, so the queue's other jobs need not be looked at)."""
    override = set(job.get("budget_override") or ())
    cap = job_cap_musd(job)
    spent_musd, _ = job_spent(job)
    if cap is not None and "job" not in override and spent_musd >= cap:
        return "hold", cap_reason(job), False
    own = max(0, cap - spent_musd) if cap is not None else None
    if own is None and job.get("estimate_usd") is not None:
        own = to_musd(job["estimate_usd"])
    plan = []
    for b in layers(a, job["queue"], job.get("tags")):
        if b["on_exceed"] == "alert" or b["id"] in override:
            continue
        estimate = own if own is not None else b.get("avg_attempt_musd")
        e = estimate or 0
        s_musd, s_tokens = spent(b, a.now)
        if over(b, s_musd, s_tokens, e):
            if b["on_exceed"] == "hold":
                return "hold", f"budget:{b['id']}", False
            return "wait", b["id"], b["scope"] != "tag"
        if b["limit_musd"] is not None and (s_musd + b["reserved_musd"] + e > b["limit_musd"]
                                            or (estimate is None and b["inflight"] > 0)):
            return "wait", b["id"], b["scope"] != "tag"
        plan.append((b, e))
    reserved = {}
    for b, e in plan:
        b["reserved_musd"] += e
        b["inflight"] += 1
        save(a, b)
        reserved[b["id"]] = e
    if reserved:
        job["reservation"] = reserved
    return "ok", None, False


def release(a, job: dict, final_musd: int | None = None):
    """The attempt ended: give back what is left of its reservations; learn its cost."""
    job.pop("budget_override", None)
    reserved = job.pop("reservation", None)
    if not reserved:
        return
    attempt_musd = final_musd
    for budget_id, left in sorted(reserved.items()):
        b = get(a, budget_id)
        if b is None:
            continue
        b["reserved_musd"] = max(0, b["reserved_musd"] - left)
        b["inflight"] = max(0, b["inflight"] - 1)
        if attempt_musd is not None:
            avg = b.get("avg_attempt_musd")
            b["avg_attempt_musd"] = attempt_musd if avg is None else \
                (avg * (AVG_WEIGHT - 1) + attempt_musd) // AVG_WEIGHT
        save(a, b)
    a.changes.wake(job["queue"])  # fetches parked behind the reservation may fit now


# ------------------------------------------------------------------ charging

def charge(a, job: dict, before: tuple[int, int]):
    """Charge the change in the job's usage since `before` (job_spent before the report) to every
    layer that matches it; returns the ids of hold/reject layers now spent (for the pause rule)."""
    after = job_spent(job)
    d_musd, d_tokens = after[0] - before[0], after[1] - before[1]
    spent_layers = []
    if d_musd == 0 and d_tokens == 0:
        return spent_layers
    reserved = job.get("reservation") or {}
    override = set(job.get("budget_override") or ())
    for b in layers(a, job["queue"], job.get("tags")):
        was = exhausted(b, a.now)
        _charge(b, a.now, d_musd, d_tokens)
        left = reserved.get(b["id"])
        if left and d_musd > 0:
            used = min(left, d_musd)
            reserved[b["id"]] = left - used
            b["reserved_musd"] = max(0, b["reserved_musd"] - used)
        now_spent = exhausted(b, a.now)
        if now_spent and not was:
            crossed(a, b, job)
        save(a, b)
        if now_spent and b["on_exceed"] != "alert" and b["id"] not in override:
            spent_layers.append(b["id"])
    if reserved:
        job["reservation"] = reserved
    cap = job_cap_musd(job)
    if cap is not None and after[0] >= cap and "job" not in override:
        spent_layers.append("job")
    return spent_layers


def crossed(a, b: dict, job: dict | None):
    """The budget just got spent in this window: an audit event, and the alert job if it has a queue."""
    s_musd, s_tokens = spent(b, a.now)
    figures = {"budget_id": b["id"], "scope": b["scope"], "target": b["target"], "window": b["window"],
               "limit_usd": usd(b.get("limit_musd")), "limit_tokens": b.get("limit_tokens"),
               "spent_usd": usd(s_musd), "spent_tokens": s_tokens, "on_exceed": b["on_exceed"],
               "reset_at": reset_at(b, a.now), "at": a.now, "job_id": job["id"] if job else None}
    audit.record(a, "budget_exceeded", budget_id=b["id"], job_id=job["id"] if job else None,
                 queue=job["queue"] if job else None, who="server",
                 reason=f"{b['scope']} {b['target']}".rstrip() + f" {b['window']} limit reached",
                 details=figures)
    if b.get("alert_queue"):
        b["alerts"] = b.get("alerts", 0) + 1
        seed = f"{b['id']}\x00{b['created_at']}\x00{b['alerts']}".encode()
        job_id = "job_alert_" + hashlib.blake2b(seed, digest_size=10).hexdigest()
        if a.job(job_id) is None:
            a.create_job(job_id, {"queue": b["alert_queue"], "payload": figures, "priority": "high",
                                  "max_retries": 3, "tags": {"budget_id": b["id"]}})


# ------------------------------------------------------------------ held by a budget

def budget_of(hold_reason: str | None) -> str | None:
    if hold_reason and hold_reason.startswith("budget:"):
        return hold_reason[len("budget:"):]
    return None


def note_held(a, job: dict):
    """A job entered `held` with a budget hold reason: list it under its budget."""
    budget_id = budget_of(job.get("hold_reason"))
    if budget_id is None or budget_id == "job":
        return
    b = get(a, budget_id)
    if b is None:
        return
    a.txn.put(K.budget_held_key(budget_id, job["id"]), b"", db=a.db["budget_held"])
    b["held"] += 1
    at = reset_at(b, a.now)
    if at is not None:
        a.txn.put(K.time_key(at, budget_id), b"", db=a.db["budget_resume"])
    save(a, b)


def note_released(a, job: dict):
    budget_id = budget_of(job.get("hold_reason"))
    if budget_id is None or budget_id == "job":
        return
    if not a.txn.delete(K.budget_held_key(budget_id, job["id"]), db=a.db["budget_held"]):
        return
    b = get(a, budget_id)
    if b is not None:
        b["held"] = max(0, b["held"] - 1)
        save(a, b)


def held_jobs(a, budget_id: str, limit: int) -> list[str]:
    prefix = K.budget_held_prefix(budget_id)
    cur = a.txn.cursor(db=a.db["budget_held"])
    out = []
    if cur.set_range(prefix):
        for key in cur.iternext(keys=True, values=False):
            if not bytes(key).startswith(prefix) or len(out) >= limit:
                break
            out.append(bytes(key)[len(prefix):].decode())
    return out


# ------------------------------------------------------------------ ops

#: Counter fields a replaced budget keeps (its window's spend only when the window is unchanged).
_KEPT = ("reserved_musd", "inflight", "held", "avg_attempt_musd", "alerts", "created_at")
_WINDOW_KEPT = ("window_start", "window_end", "spent_musd", "spent_tokens", "buckets")


def _index(a, b: dict, add: bool):
    key = scope_key(b["scope"], b["target"])
    ids = [i for i in (a.get("budget_scope", key) or ()) if i != b["id"]]
    if add:
        ids.append(b["id"])
        ids.sort()
    if ids:
        a.put("budget_scope", key, ids)
    else:
        a.txn.delete(key, db=a.db["budget_scope"])


def handle_set_budget(a, args: dict, ids: list) -> dict:
    budget_id = args["budget_id"]
    old = get(a, budget_id)
    b = {"id": budget_id, "scope": args["scope"], "target": args.get("target") or "",
         "limit_musd": None if args.get("limit_usd") is None else to_musd(args["limit_usd"]),
         "limit_tokens": args.get("limit_tokens"), "window": args["window"], "hours": args.get("hours"),
         "on_exceed": args["on_exceed"], "alert_queue": args.get("alert_queue"),
         "hold_timeout_ms": args.get("hold_timeout_ms"), "timeout_action": args.get("timeout_action"),
         "note": args.get("note"), "created_at": a.now, "updated_at": a.now,
         "window_start": None, "window_end": None, "spent_musd": 0, "spent_tokens": 0, "buckets": [],
         "reserved_musd": 0, "inflight": 0, "held": 0, "avg_attempt_musd": None, "alerts": 0}
    if old is not None:
        for k in _KEPT:
            b[k] = old.get(k, b[k])
        if (old["window"], old.get("hours")) == (b["window"], b["hours"]):
            for k in _WINDOW_KEPT:
                b[k] = old.get(k, b[k])
        _index(a, old, add=False)
    else:
        a.set_meta_int(COUNT, a.meta_int(COUNT) + 1)
    _index(a, b, add=True)
    was = old is not None and exhausted(old, a.now)
    save(a, b)
    audit.record(a, "budget_set", budget_id=budget_id, note=args.get("note"),
                 details={k: v for k, v in view(b, a.now).items()
                          if k in ("scope", "target", "limit_usd", "limit_tokens", "window", "hours",
                                   "on_exceed", "alert_queue")} | {"replaced": old is not None})
    if b["held"] and was and not exhausted(b, a.now):
        a.txn.put(K.time_key(a.now, budget_id), b"", db=a.db["budget_resume"])  # raised: release its held jobs
    return {"ok": dict(view(b, a.now), replaced=old is not None)}


def handle_delete_budget(a, args: dict, ids: list) -> dict:
    budget_id = args["budget_id"]
    b = get(a, budget_id)
    if b is None:
        return error_result("NOT_FOUND", f"budget {budget_id} not found", "budget_id")
    _index(a, b, add=False)
    drop(a, budget_id)
    a.set_meta_int(COUNT, max(0, a.meta_int(COUNT) - 1))
    audit.record(a, "budget_deleted", budget_id=budget_id, note=args.get("note"),
                 details={"held": b["held"], "spent_usd": usd(spent(b, a.now)[0])})
    return {"ok": {"held": b["held"]}}


HANDLERS = {"set_budget": handle_set_budget, "delete_budget": handle_delete_budget}


# ------------------------------------------------------------------ reads (the gateway passes `now`)

def read_get_budget(txn, dbs, args):
    raw = txn.get(args["budget_id"].encode(), db=dbs["budgets"])
    if raw is None:
        return None
    return {"budget": view(decode_trusted(raw), args["now"])}


def read_list_budgets(txn, dbs, args):
    out = [view(decode_trusted(raw), args["now"]) for _, raw in txn.cursor(db=dbs["budgets"])]
    if args.get("scope"):
        out = [b for b in out if b["scope"] == args["scope"]]
    return {"budgets": out}


READERS = {"get_budget": read_get_budget, "list_budgets": read_list_budgets}
