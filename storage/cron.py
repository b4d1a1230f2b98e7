"""Cron expressions: a small parser and a pure `next_fire`.

Syntax (crontab(5)): five fields `minute hour day-of-month month day-of-week`.
Each field is `*`, a number, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`
(from a to the field's end), or a comma list of those. Months take `JAN`-`DEC`,
days of week `SUN`-`SAT` (case-insensitive); day-of-week 0 and 7 are Sunday.
`@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`) and
`@hourly` stand for their usual expressions.

Day rule (Vixie cron): when both day-of-month and day-of-week are restricted
(neither starts with `*`), a day matches if *either* matches; otherwise both
must (the `*` one matches every day).

jobbie extension: six fields put a seconds field first (`*/2 * * * * *`).

Time zones and DST (`next_fire`, computed by the cronsim library): the fields
are read as wall-clock time in the schedule's IANA zone, with cron's own rules
for daylight-saving changes. A fire time that falls in the hour skipped by a
spring-forward change happens once, at the first valid time after the gap
(`30 2 * * *` in Europe/Berlin fires at 03:00 on the last Sunday of March). In
the hour repeated by a fall-back change, a fixed time fires once, at its first
occurrence, while a schedule that runs every minute or hour keeps running
through both passes (no gap and no double fire at a fixed time).

Pure: no clock. The result depends only on the arguments and on the IANA time
zone database the process loads (zoneinfo), so every node must have the same
tzdata version for replicated schedules to agree (see docs/management.md).
"""
from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

UTC = dt.timezone.utc

MONTHS = {name: i for i, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), start=1)}
WEEKDAYS = {name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}

#: (name, low, high, names) of each field, seconds first.
_FIELDS = (
    ("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None), ("month", 1, 12, MONTHS), ("day-of-week", 0, 7, WEEKDAYS),
)

#: How far ahead next_fire looks: a Feb 29 schedule may wait 8 years (2096 -> 2104).
SEARCH_DAYS = 9 * 366
EXPRESSION_CHARS_MAX = 256
TIMEZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*\Z")
#: Latest instant next_fire answers for (datetime stops at year 9999).
_INSTANT_MAX_MS = 253_000_000_000_000


class CronError(ValueError):
    """A malformed cron expression or an unknown time zone."""


@dataclass(frozen=True)
class CronSpec:
    seconds: tuple
    minutes: tuple
    hours: tuple
    days: frozenset
    months: frozenset
    weekdays: frozenset  # 0 = Sunday
    days_star: bool
    weekdays_star: bool

    def day_matches(self, date: dt.date) -> bool:
        if date.month not in self.months:
            return False
        dom = date.day in self.days
        dow = date.isoweekday() % 7 in self.weekdays
        if self.days_star or self.weekdays_star:
            return dom and dow
        return dom or dow


def _number(text: str, field: str, low: int, high: int, names) -> int:
    upper = text.upper()
    if names and upper in names:
        return names[upper]
    if not text.isdigit():
        raise CronError(f"{field}: {text!r} is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{field}: {value} is out of range {low}-{high}")
    return value


def _parse_field(text: str, field: str, low: int, high: int, names) -> set:
    values: set = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field}: empty list item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"{field}: step {step_text!r} must be a whole number of at least 1")
            step = int(step_text)
            if step > high - low + 1:
                raise CronError(f"{field}: step {step} is larger than the field's range {low}-{high}")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _number(a, field, low, high, names), _number(b, field, low, high, names)
            if start > end:
                raise CronError(f"{field}: range {base!r} runs backwards")
        else:
            start = _number(base, field, low, high, names)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return values


@functools.lru_cache(maxsize=1024)
def parse(expr: str) -> CronSpec:
    """Parse a cron expression. Raises CronError naming the bad field."""
    if type(expr) is not str:
        raise CronError("a cron expression is a string")
    if len(expr) > EXPRESSION_CHARS_MAX:
        raise CronError(f"a cron expression has at most {EXPRESSION_CHARS_MAX} characters")
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise CronError(f"unknown macro {text[:32]!r} (known: {', '.join(MACROS)})")
        text = MACROS[text.lower()]
    parts = text.split()
    if len(parts) == 5:
        parts = ["0"] + parts
    elif len(parts) != 6:
        raise CronError(f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
                        f"or 6 with a leading seconds field; got {len(parts)}")
    sets = [_parse_field(p, name, low, high, names) for p, (name, low, high, names) in zip(parts, _FIELDS)]
    weekdays = frozenset(d % 7 for d in sets[5])
    return CronSpec(seconds=tuple(sorted(sets[0])), minutes=tuple(sorted(sets[1])), hours=tuple(sorted(sets[2])),
                    days=frozenset(sets[3]), months=frozenset(sets[4]), weekdays=weekdays,
                    days_star=parts[3].startswith("*"), weekdays_star=parts[5].startswith("*"))


@functools.lru_cache(maxsize=256)
def zone(name: str) -> dt.tzinfo:
    """The IANA time zone `name`. Raises CronError for an unknown or malformed name."""
    if type(name) is not str or not 1 <= len(name) <= 64 or not TIMEZONE_NAME.match(name) or ".." in name:
        raise CronError(f"{str(name)[:64]!r} is not an IANA time zone name (like UTC or Europe/Berlin)")
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise CronError(f"unknown time zone {name!r}") from exc


def _for_cronsim(expr: str) -> str:
    """`expr` as cronsim should read it: macros expanded, and every field that does not start
    with `*` spelt as the explicit list our parser made of it. So names, `7` for Sunday and
    ranges with steps mean exactly what parse() says (cronsim reads `1-1/4` as `1/4`), while `*`
    and `*/n` stay as written: cron's day rule and its DST rule for interval schedules look at
    whether a field is a wildcard."""
    text = expr.strip()
    if text.startswith("@"):
        text = MACROS[text.lower()]
    parts = text.split()
    fields = _FIELDS if len(parts) == 6 else _FIELDS[1:]
    out = []
    for part, (name, low, high, names) in zip(parts, fields):
        if part.startswith("*"):
            out.append(part)
            continue
        values = _parse_field(part, name, low, high, names)
        if name == "day-of-week":
            values = {v % 7 for v in values}
        out.append(",".join(str(v) for v in sorted(values)))
    return " ".join(out)


def next_fire(expr: str, tz_name: str, after_ms: int) -> int | None:
    """The first fire time of `expr` in zone `tz_name` strictly after `after_ms` (epoch ms), or None.

    None means no fire within SEARCH_DAYS (e.g. `0 0 29 2 1`, a Monday Feb 29, may be decades
    away). Raises CronError for a bad expression or zone. The walk over wall-clock times, DST
    included, is cronsim's (pinned in setup.cfg, so every node computes the same times).
    """
    parse(expr)  # our own check first: its errors name the field
    tz = zone(tz_name)
    if not 0 <= after_ms <= _INSTANT_MAX_MS:
        return None
    start = dt.datetime.fromtimestamp(after_ms // 1000, tz).replace(microsecond=(after_ms % 1000) * 1000)
    try:
        times = CronSim(_for_cronsim(expr), start)
        for _ in range(4):  # a fire within the same second as `start` is not "after" it in ms
            at = next(times)
            at_ms = int(at.timestamp()) * 1000
            if at_ms > after_ms:
                break
        else:
            return None
    except (CronSimError, StopIteration, OverflowError, ValueError):
        # Our parser accepted it, so cronsim refusing it means an impossible date (Feb 30).
        return None  # no fire before datetime's year 9999
    if at_ms - after_ms > SEARCH_DAYS * 86_400_000:
        return None
    return at_ms
