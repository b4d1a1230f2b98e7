"""CLI commands for usage summaries and the price table (mixed into cli.main.Cli)."""
from __future__ import annotations

import time

from . import render
from .common import _SPAN, _UNIT_MS, _fail, _run, _who



def time_arg(value, name: str, now_ms: int):
    """`24h`, `7d`, `90m` (that long before now) or a time in ms since the epoch."""
    if value is None:
        return None
    text = str(value).strip().lower()
    m = _SPAN.match(text)
    if not m:
        _fail(f"{name} must be a span before now (e.g. 24h, 7d, 90m) or ms since the epoch; got {value!r}", 2)
    n, unit = int(m.group(1)), m.group(2)
    if unit is None and n > 10**11:  # a bare big number is an absolute time
        return n
    return max(0, now_ms - n * _UNIT_MS[unit or "ms"])


def _price(value, name):
    try:
        return float(str(value))
    except ValueError:
        _fail(f"{name} must be a number (USD per million tokens); got {value!r}", 2)


def usage_table(r) -> str:
    def row(key, g):
        return key + [f"{g['cost_usd']:.6f}", g["input_tokens"], g["output_tokens"],
                      g["cache_read_tokens"] + g["cache_write_tokens"], g["attempts"], g["jobs"], g["unmetered"]]
    dims = [d.upper() for d in r["group_by"]]
    rows = [row([("-" if g["key"][d] is None else str(g["key"][d])) if d not in ("day", "hour")
                 else render._stamp(g["key"][d]) for d in r["group_by"]], g) for g in r["groups"]]
    rows.append(row(["TOTAL"] + [""] * (len(dims) - 1) if dims else ["TOTAL"], r["totals"]))
    head = dims or ["-"]
    out = render.table(rows, head + ["COST_USD", "INPUT", "OUTPUT", "CACHE", "ATTEMPTS", "JOBS", "UNMETERED"])
    out += f"\nwindow {render._stamp(r['since'])} .. {render._stamp(r['until'])}"
    if r.get("truncated"):
        out += " (more groups than shown: narrow the filters or raise --limit)"
    if r.get("lag"):
        out += f"; the usage actor is {r['lag']} raft entries behind"
    return out


def prices_table(r) -> str:
    rows = [[p["provider"] or "*", p["model"], p["input_usd_per_mtok"], p["output_usd_per_mtok"],
             p["cache_read_usd_per_mtok"], p["cache_write_usd_per_mtok"], render._stamp(p["updated_at"])]
            for p in r["prices"]]
    if not rows:
        return "no prices set (usage is taken at the cost workers report)"
    return render.table(rows, ["PROVIDER", "MODEL", "INPUT", "OUTPUT", "CACHE_READ", "CACHE_WRITE", "UPDATED"])


class PriceCli:
    """The server's price table: USD per million tokens per (provider, model)."""

    def set(self, model: str, input_usd: str, output_usd: str, provider: str = None, cache_read: str = None,
            cache_write: str = None, note: str = None, actor: str = None, server: str = None, output: str = "text"):
        """Set MODEL's price: INPUT_USD and OUTPUT_USD per million tokens (cache prices default to INPUT_USD).

        Example: jobbie price set claude-sonnet 3 15 --provider anthropic --cache-read 0.3 --cache-write 3.75

        Args:
          model: Model name, exactly as workers report it.
          input_usd: USD per million input tokens.
          output_usd: USD per million output tokens.
          provider: Provider name (absent: this price applies whatever the provider).
          cache_read: USD per million cache-read tokens (default: the input price).
          cache_write: USD per million cache-write tokens (default: the input price).
          note: Kept in the audit trail.
          actor: Who you are, for the audit trail (default: cli:LOGIN).
        """
        args = {"model": str(model), "provider": provider, "input_usd_per_mtok": _price(input_usd, "INPUT_USD"),
                "output_usd_per_mtok": _price(output_usd, "OUTPUT_USD"),
                "cache_read_usd_per_mtok": None if cache_read is None else _price(cache_read, "--cache-read"),
                "cache_write_usd_per_mtok": None if cache_write is None else _price(cache_write, "--cache-write"),
                "note": note, "actor": _who(actor)}
        return _run(server, output, "set_price", args, _price_set_line)

    def list(self, server: str = None, output: str = "text"):  # noqa: A003
        """List the price table."""
        return _run(server, output, "list_prices", {}, prices_table)

    def delete(self, model: str, provider: str = None, note: str = None, actor: str = None, server: str = None,
               output: str = "text"):
        """Delete MODEL's price (of --provider, or the provider-less one).

        Args:
          model: Model name.
          provider: Provider name (absent: the provider-less price).
          note: Kept in the audit trail.
          actor: Who you are, for the audit trail (default: cli:LOGIN).
        """
        return _run(server, output, "delete_price", {"model": str(model), "provider": provider, "note": note,
                                                     "actor": _who(actor)},
                    lambda r: f"deleted price of {model}")


class UsageCommands:
    price = PriceCli()

    def usage(self, by: str = None, since: str = "24h", until: str = None, queue: str = None, model: str = None,
              provider: str = None, namespace: str = None, tag: str = None, limit: int = 1000,
              server: str = None, output: str = "text"):
        """Token usage and cost, grouped: e.g. jobbie usage --by model,queue --since 7d.

        Args:
          by: Comma-separated groups: queue, namespace, model, provider, day, hour, tag:KEY (none: totals).
          since: Window start: a span before now (24h default, 7d, 90m) or ms since the epoch.
          until: Window end, the same way (default: now). The window is widened to whole hours.
          queue: Only this queue.
          model: Only this model.
          provider: Only this provider.
          namespace: Only queues of this namespace (a queue name up to its first '.').
          tag: Only jobs with these tags: KEY=VALUE[,KEY=VALUE...].
          limit: Groups shown at most, the most expensive first.
        """
        now = int(time.time() * 1000)
        tags = None
        if tag is not None:
            tags = {}
            for part in str(tag).split(","):
                key, eq, value = part.partition("=")
                if not eq or not key:
                    _fail(f"--tag takes KEY=VALUE pairs separated by commas; got {tag!r}", 2)
                tags[key.strip()] = value.strip()
        args = {"since": time_arg(since, "--since", now), "until": time_arg(until, "--until", now),
                "group_by": [d.strip() for d in str(by).split(",") if d.strip()] if by else None,
                "queue": queue, "model": model, "provider": provider, "namespace": namespace, "tags": tags,
                "limit": int(limit)}
        return _run(server, output, "usage_summary", args, usage_table)

    def usage_rebuild(self, server: str = None, output: str = "text"):
        """Rebuild the usage actor's rollups from the usage records in LMDB."""
        return _run(server, output, "rebuild_usage", {},
                    lambda r: f"usage rebuilt: {r['records']} records, applied index {r['applied_index']} "
                              f"({r['duration_ms']} ms)")


def _price_set_line(r) -> str:
    who = f" ({r['provider']})" if r["provider"] else ""
    return (f"{'replaced' if r['replaced'] else 'set'} price of {r['model']}{who}: in {r['input_usd_per_mtok']:g}, "
            f"out {r['output_usd_per_mtok']:g}, cache read {r['cache_read_usd_per_mtok']:g}, "
            f"cache write {r['cache_write_usd_per_mtok']:g} USD per million tokens")
