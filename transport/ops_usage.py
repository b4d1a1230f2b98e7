"""The price table and usage summary ops (their rows join OPS in transport/ops.py).

`set_price` and `delete_price` are writes (storage/usage.py), `list_prices` a
point read of LMDB. `usage_summary` and `rebuild_usage` take the ``usage``
path: the gateway hands them to the usage actor, which answers from its
rollups (actors/usage/). What the Arg rows cannot say is checked here, before
anything leaves the gateway: `group_by` names, the summary window, and price
names that could not be stored in a key.
"""
from __future__ import annotations

from .ops import _EXTRA_CHECKS, ACTOR, INT64_MAX, NOTE, REQUEST_ID, YEAR_MS, Arg, _bad, _op, _type_name

#: Dimensions usage_summary groups by (and `tag:KEY` for any tag key).
GROUP_DIMENSIONS = ("queue", "namespace", "model", "provider", "day", "hour")
GROUP_BY_MAX = 8
#: Longest summary window, and how far from now its ends may lie.
WINDOW_MS_MAX = 10 * YEAR_MS
#: Groups one usage_summary answer lists at most (the most expensive first).
GROUPS_MAX = 10_000
#: USD per million tokens, at most.
PRICE_MAX = 1e6

PROVIDER = Arg("provider", "str", "Provider name (absent or empty: the price of the model whatever the "
               "provider, used when no provider-specific price exists).", length_max=128)
MODEL = Arg("model", "str", "Model name, exactly as workers report it.", required=True, length_max=256)


def _price(name: str, what: str, required: bool = False, default_note: str = ""):
    return Arg(name, "float", f"USD per million {what} tokens.{default_note}", required=required, low=0,
               high=PRICE_MAX)


_op("set_price", "write", "Set (or replace) the price of a model: USD per million input, output, cache-read and "
    "cache-write tokens. Reports with tokens of that model are priced by the server from then on; "
    "earlier reports keep their cost.", (
        PROVIDER, MODEL,
        _price("input_usd_per_mtok", "input", required=True),
        _price("output_usd_per_mtok", "output", required=True),
        _price("cache_read_usd_per_mtok", "cache-read", default_note=" Default: the input price."),
        _price("cache_write_usd_per_mtok", "cache-write", default_note=" Default: the input price."),
        NOTE, ACTOR, REQUEST_ID,
    ), ok=("provider", "model", "input_usd_per_mtok", "output_usd_per_mtok", "cache_read_usd_per_mtok",
           "cache_write_usd_per_mtok", "created_at", "updated_at", "replaced"))
_op("list_prices", "read", "The price table, by provider then model.", (), ok=("prices",))
_op("delete_price", "write", "Delete a model's price; later reports of it are taken at their reported cost "
    "(or counted unmetered).", (PROVIDER, Arg("model", "str", "Model name.", required=True, length_max=256),
                               NOTE, ACTOR, REQUEST_ID), ok=(), errors=("NOT_FOUND",))

_TIME = dict(kind="int", low=0, high=INT64_MAX)

_op("usage_summary", "usage", "Token usage and cost over a window, grouped, from the usage actor's hourly rollups "
    "(exact; the window is widened to whole hours). Waits, up to 0.25 s, for the usage of writes this node "
    "has acknowledged.", (
        Arg("since", doc="Window start, ms since epoch (default: `until` - 24 h); floored to the hour.", **_TIME),
        Arg("until", doc="Window end, ms since epoch (default: now); rounded up to the hour.", **_TIME),
        Arg("group_by", "list", "Dimensions, in order: queue, namespace, model, provider, day, hour, tag:KEY "
            f"(at most {GROUP_BY_MAX}; none: totals only)."),
        Arg("queue", "queue", "Only usage of this queue."),
        Arg("namespace", "str", "Only usage of queues of this namespace (a queue name up to its first `.`).",
            length_max=128),
        Arg("model", "str", "Only usage of this model.", length_max=256),
        Arg("provider", "str", "Only usage of this provider.", length_max=256),
        Arg("tags", "str_map", "Only usage of jobs carrying every one of these tags."),
        Arg("limit", "int", "Groups at most, the most expensive first (then by key).", default=1000, low=1,
            high=GROUPS_MAX),
    ), ok=("since", "until", "group_by", "groups", "totals", "truncated", "applied_index", "lag"),
    errors=("UNAVAILABLE/usage_catching_up", "UNAVAILABLE/usage_disabled"))
_op("rebuild_usage", "usage", "Drop the usage actor's rollups and rebuild them from the usage records in LMDB; "
    "answers once done.", (), ok=("records", "applied_index", "duration_ms"))


def _check_price(args, limits, frame_bytes, now_ms):
    for name in ("provider", "model"):
        value = args.get(name)
        if value is not None and "\x00" in value:
            _bad(f"{name} must not contain NUL characters", name, "invalid_name")
    if not args.get("model"):
        _bad("model must not be empty", "model", "missing_field")


def check_group_by(group_by: list) -> list:
    if len(group_by) > GROUP_BY_MAX:
        _bad(f"group_by names more than {GROUP_BY_MAX} dimensions", "group_by", "too_large")
    for i, dim in enumerate(group_by):
        field = f"group_by[{i}]"
        if type(dim) is not str:
            _bad(f"{field} must be a string, got {_type_name(dim)}", field, "wrong_type")
        if dim.startswith("tag:"):
            if not 1 <= len(dim) - 4 <= 64:
                _bad(f"{field}: a tag key is 1-64 characters (tag:KEY)", field, "invalid_choice")
        elif dim not in GROUP_DIMENSIONS:
            _bad(f"{field} must be one of {', '.join(GROUP_DIMENSIONS)} or tag:KEY; got {dim[:64]!r}", field,
                 "invalid_choice")
    if len(set(group_by)) != len(group_by):
        _bad("group_by names a dimension twice", "group_by", "conflicting_fields")
    return list(group_by)


def _check_summary(args, limits, frame_bytes, now_ms):
    if "group_by" in args:
        args["group_by"] = check_group_by(args["group_by"])
    since, until = args.get("since"), args.get("until")
    for name, value in (("since", since), ("until", until)):
        if value is not None and now_ms and abs(value - now_ms) > WINDOW_MS_MAX:
            _bad(f"{name} is more than 10 years away from now", name, "out_of_range")
    if since is not None and until is not None:
        if since >= until:
            _bad("until must be after since", "until", "out_of_range")
        if until - since > WINDOW_MS_MAX:
            _bad("the window (until - since) is longer than 10 years", "since", "out_of_range")


_EXTRA_CHECKS["set_price"] = _check_price
_EXTRA_CHECKS["delete_price"] = _check_price
_EXTRA_CHECKS["usage_summary"] = _check_summary
