"""Times and time ranges as `pyprof report DIR` takes them.

A TIME is one of:
- `now`;
- a duration back from now: a number and a unit, `90s`, `10m`, `2h`, `1d` (several: `1h30m`);
- an absolute time in ISO 8601: `2026-11-30T03:10`, `2026-11-30 03:10:05`, `2026-11-30`; with a
  `Z` or `+02:00` offset it means that zone, without one it is UTC (a daemon's host may be in any
  zone; the store keeps UTC);
- `@` and Unix seconds: `@1764471000`.

A RANGE is `FROM..UNTIL`, each end a TIME; an empty end means "open" (`2h..` = from two hours ago to
now, `..2026-11-30` = everything before that day). Examples: `2h..1h`, `2026-11-30T03:00..2026-11-30T03:20`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from pyprof.errors import UsageError

NS = 1_000_000_000
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in `90s`, `10m`, `1h30m`; UsageError otherwise."""
    t = text.strip().lower()
    if not _DURATION.fullmatch(t):
        raise UsageError(f"invalid duration {text!r}: expected e.g. 30s, 10m, 2h, 1d, 1h30m")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(t))


def parse_time(text: str, now_ns: Optional[int] = None) -> int:
    """A TIME (see the module's docstring) as nanoseconds since the epoch."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    t = text.strip()
    if t.lower() == "now":
        return now_ns
    if t.startswith("@"):
        try:
            return int(float(t[1:]) * NS)
        except ValueError:
            raise UsageError(f"invalid time {text!r}: expected @UNIX_SECONDS") from None
    if _DURATION.fullmatch(t.lower()):
        return now_ns - int(parse_duration(t) * NS)
    try:
        moment = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"invalid time {text!r}: expected now, a duration back (10m, 2h), an ISO time "
                         "(2026-11-30T03:10, UTC unless it has an offset) or @UNIX_SECONDS") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp()) * NS + moment.microsecond * 1000


@dataclass(frozen=True)
class TimeRange:
    start_ns: Optional[int]   # None: open
    end_ns: Optional[int]

    def describe(self) -> str:
        return f"{format_time(self.start_ns) if self.start_ns else '…'} .. " \
               f"{format_time(self.end_ns) if self.end_ns else 'now'}"


def parse_range(text: str, now_ns: Optional[int] = None) -> TimeRange:
    """A RANGE `FROM..UNTIL` (see the module's docstring)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    start, sep, end = text.partition("..")
    if not sep:
        raise UsageError(f"invalid range {text!r}: expected FROM..UNTIL, e.g. 2h..1h or "
                         "2026-11-30T03:00..2026-11-30T03:20")
    start_ns = parse_time(start, now_ns) if start.strip() else None
    end_ns = parse_time(end, now_ns) if end.strip() else None
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        raise UsageError(f"invalid range {text!r}: it ends before it starts")
    return TimeRange(start_ns, end_ns)


def format_time(ns: int) -> str:
    """UTC, to the second: 2026-11-30T03:10:05Z."""
    return datetime.fromtimestamp(ns / NS, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
