"""Usage accounting: what each attempt of a job used and cost, and the price table.

It owns these rules (see docs/ai.md):

- One entry per metered attempt. A report (ack, fail, heartbeat) replaces the
  entry of the job's current attempt: heartbeat figures are cumulative for the
  attempt, ack and fail give its final figures and close the entry (`final`).
  An attempt is known by (attempt, started_at), so the attempts of a job run
  again by retry_job (attempt numbers start over) get entries of their own.
- The cost. When a report carries tokens and the price table knows its model
  (the report's provider first, then the provider-less row), the server prices
  it and records `cost_source: price_table`, keeping the worker's own figure
  as `reported_cost_usd`: the table is the server's truth. Otherwise a
  reported `cost_usd` is taken as it is (`reported`). A report with neither is
  `unmetered`: cost 0, counted apart. `input_tokens` excludes cache reads and
  writes, which are priced at their own rates.
- Sums never overflow: token totals saturate at INT64_MAX (msgpack and LMDB
  readers take int64), so a runaway report cannot wedge a job.
- After `record_usage`, `job["usage"]` lists the entries and
  `job["usage_total"]` their sums (input/output/cache tokens, cost_usd,
  attempts, unmetered). Budget code reads `usage_total.cost_usd` around the
  call to charge the difference.
- Each entry is also written to the `usage` db (keyed job id + entry number)
  with the job's queue, namespace and tags, and indexed in `usage_seq` at a
  sequence number that grows with every write. These records outlive the job
  (retention and delete_job leave them), so the usage actor can rebuild its
  rollups from LMDB alone. Times are the op's `now`; nothing reads a clock.
"""
from __future__ import annotations

from jobbie.transport.errors import error_result

from . import audit
from . import keys as K

INT64_MAX = 2**63 - 1
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
#: Price fields of a price record: USD per million tokens of each kind.
PRICE_FIELDS = ("input_usd_per_mtok", "output_usd_per_mtok", "cache_read_usd_per_mtok", "cache_write_usd_per_mtok")
#: Entries kept in a job record; older ones are folded into `usage_earlier` (their LMDB records stay).
USAGE_KEPT = 100
PRICE_TABLE, REPORTED, UNMETERED = "price_table", "reported", "unmetered"


def saturating_add(a: int, b: int) -> int:
    return min(INT64_MAX, a + b)


def namespace(queue: str) -> str:
    """A queue's namespace: its name up to the first `.` (the whole name when it has none)."""
    return queue.partition(".")[0]


def _ok(**fields):
    return {"ok": fields}


# ------------------------------------------------------------------ prices

def find_price(a, provider: str | None, model: str | None) -> dict | None:
    """The price row for a report: (provider, model), else the provider-less ("", model) row."""
    if not model:
        return None
    if provider:
        price = a.get("prices", K.price_key(provider, model))
        if price is not None:
            return price
    return a.get("prices", K.price_key("", model))


def cost_from_price(price: dict, tokens: dict) -> float:
    per_mtok = sum(tokens.get(t, 0) * price[p] for t, p in zip(TOKEN_FIELDS, PRICE_FIELDS))
    return per_mtok / 1_000_000


def meter(a, usage: dict) -> dict:
    """The entry's figures for one report: tokens as given, cost and its source."""
    entry = {k: v for k, v in usage.items() if v is not None}
    tokens = {t: usage[t] for t in TOKEN_FIELDS if usage.get(t) is not None}
    reported = usage.get("cost_usd")
    price = find_price(a, usage.get("provider"), usage.get("model")) if tokens else None
    if price is not None:
        entry["cost_usd"] = cost_from_price(price, tokens)
        entry["cost_source"] = PRICE_TABLE
        entry["price"] = {"provider": price["provider"], "model": price["model"]}
        if reported is not None:
            entry["reported_cost_usd"] = reported
    elif reported is not None:
        entry["cost_usd"] = reported
        entry["cost_source"] = REPORTED
    else:
        entry["cost_usd"] = 0.0
        entry["cost_source"] = UNMETERED
    return entry


# ------------------------------------------------------------------ recording

def _totals(entries: list, earlier: dict | None) -> dict:
    total = dict(earlier) if earlier else {t: 0 for t in TOKEN_FIELDS}
    total.setdefault("cost_usd", 0.0)
    total.setdefault("attempts", 0)
    total.setdefault("unmetered", 0)
    for t in TOKEN_FIELDS:
        total.setdefault(t, 0)
    for e in entries:
        for t in TOKEN_FIELDS:
            total[t] = saturating_add(total[t], e.get(t) or 0)
        total["cost_usd"] += e.get("cost_usd") or 0.0
        total["attempts"] += 1
        if e.get("cost_source") == UNMETERED:
            total["unmetered"] += 1
    return total


def record_usage(a, job: dict, usage: dict | None, final: bool = False):
    """Keep one report for the job's current attempt (see the module docstring).

    With `final` (ack, fail) and no report, the attempt's entry, if any, is closed as it stands.
    """
    entries = list(job.get("usage") or [])
    current = None
    for i, e in enumerate(entries):
        if e.get("attempt") == job["attempt"] and e.get("started_at") == job.get("started_at") \
                and not e.get("final"):
            current = i
    if not usage:
        if not final or current is None:
            return
        entry = dict(entries[current], final=True, at=a.now)
    else:
        entry = meter(a, usage)
        if current is not None:
            entry["n"] = entries[current]["n"]
            entry["first_at"] = entries[current].get("first_at", a.now)
        else:
            entry["n"] = max([e.get("n", 0) for e in entries] + [job.get("usage_n", 0)]) + 1
            entry["first_at"] = a.now
        entry.update(attempt=job["attempt"], started_at=job.get("started_at"), at=a.now, final=final)
    if current is not None:
        entries[current] = entry
    else:
        entries.append(entry)
    earlier = job.get("usage_earlier")
    while len(entries) > USAGE_KEPT:
        earlier = _totals(entries[:1], earlier)
        job["usage_n"] = max(job.get("usage_n", 0), entries[0]["n"])
        entries = entries[1:]
    if earlier is not None:
        job["usage_earlier"] = earlier
    job["usage"] = entries
    job["usage_total"] = _totals(entries, earlier)
    _store(a, job, entry)


def attempt_entry(job: dict) -> dict | None:
    """The usage entry of the job's current attempt, or None when it reported nothing."""
    for e in reversed(job.get("usage") or ()):
        if e.get("attempt") == job["attempt"] and e.get("started_at") == job.get("started_at"):
            return e
    return None


def attempt_musd(job: dict) -> int:
    """Micro-USD the job's current attempt cost (0 when it reported nothing)."""
    e = attempt_entry(job)
    return 0 if e is None else int(round((e.get("cost_usd") or 0.0) * 1_000_000))


def _store(a, job: dict, entry: dict):
    """Write the entry's LMDB record and move it to a new place in `usage_seq`."""
    key = K.usage_key(job["id"], entry["n"])
    old = a.get("usage", key)
    if old is not None:
        a.txn.delete(K.u64(old["seq"]), db=a.db["usage_seq"])
    seq = a.meta_int(b"usage_seq") + 1
    a.set_meta_int(b"usage_seq", seq)
    record = dict(entry, job_id=job["id"], queue=job["queue"], namespace=namespace(job["queue"]),
                  tags=job.get("tags") or {}, seq=seq)
    a.put("usage", key, record)
    a.txn.put(K.u64(seq), key, db=a.db["usage_seq"])


# ------------------------------------------------------------------ price ops

def handle_set_price(a, args: dict, ids: list) -> dict:
    provider, model = args.get("provider") or "", args["model"]
    key = K.price_key(provider, model)
    old = a.get("prices", key)
    rec = {"provider": provider, "model": model, "input_usd_per_mtok": args["input_usd_per_mtok"],
           "output_usd_per_mtok": args["output_usd_per_mtok"],
           "cache_read_usd_per_mtok": args.get("cache_read_usd_per_mtok", args["input_usd_per_mtok"]),
           "cache_write_usd_per_mtok": args.get("cache_write_usd_per_mtok", args["input_usd_per_mtok"]),
           "created_at": old["created_at"] if old else a.now, "updated_at": a.now}
    a.put("prices", key, rec)
    audit.record(a, "price_set", reason=f"{provider or '*'}/{model}", note=args.get("note"),
                 details={k: rec[k] for k in PRICE_FIELDS} | {"replaced": old is not None})
    return _ok(**rec, replaced=old is not None)


def handle_delete_price(a, args: dict, ids: list) -> dict:
    provider, model = args.get("provider") or "", args["model"]
    key = K.price_key(provider, model)
    if a.txn.get(key, db=a.db["prices"]) is None:
        return error_result("NOT_FOUND", f"no price for model {model!r}"
                            + (f" of provider {provider!r}" if provider else " without a provider"), "model")
    a.txn.delete(key, db=a.db["prices"])
    audit.record(a, "price_deleted", reason=f"{provider or '*'}/{model}", note=args.get("note"))
    return _ok()


HANDLERS = {
    "set_price": handle_set_price,
    "delete_price": handle_delete_price,
}


# ------------------------------------------------------------------ reads

def read_list_prices(txn, dbs, args):
    from jobbie.transport.codec import decode_trusted
    return {"prices": [decode_trusted(raw) for _, raw in txn.cursor(db=dbs["prices"])]}


READERS = {"list_prices": read_list_prices}
