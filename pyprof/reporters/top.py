"""`top`: functions by self (flat) and total (cumulative) samples, the numbers `go tool pprof -top` prints.

Self counts a sample for the innermost logical frame of its leaf (pprof: the first Line of the first
Location); total counts it once for every function on its stack, however often it recurses. A function is
its display name: with tiers, `phaseA [C1]` and `phaseA [C2]` are two rows; without, one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from pyprof.model import FrameKind, ProfileData
from pyprof.reporters.aggregate import FrameTable, ProfileSummary, summarize, thread_label

SORTS = ("self", "total")


@dataclass
class TopRow:
    name: str
    kind: FrameKind
    self: int
    total: int
    thread: Optional[str] = None     # set when rows are per thread

    def percent(self, samples: int, which: str = "self") -> float:
        return 100.0 * getattr(self, which) / samples if samples else 0.0


@dataclass
class TopReport:
    summary: ProfileSummary
    rows: list[TopRow]               # sorted, all of them (renderers cut to a limit)
    sort: str = "self"

    @property
    def samples(self) -> int:
        return self.summary.samples


def _sort_key(sort: str):
    if sort == "total":
        return lambda r: (-r.total, -r.self, r.name, r.thread or "")
    return lambda r: (-r.self, -r.total, r.name, r.thread or "")


def aggregate(profile: ProfileData, tiers: bool = True, sort: str = "self", per_thread: bool = False,
              frames: Optional[FrameTable] = None) -> TopReport:
    """Self and total samples of every function (per thread and function when `per_thread`)."""
    table = frames if frames is not None else FrameTable(tiers)
    self_counts: Counter = Counter()
    total_counts: Counter = Counter()
    for key, count in profile.counts.items():
        if count <= 0:
            continue
        stack = table.stack(key)
        if not stack:
            continue
        group = thread_label(key) if per_thread else None
        self_counts[(group, stack[0])] += count
        for frame in set(stack):
            total_counts[(group, frame)] += count
    rows = [TopRow(table[frame].name, table[frame].kind, self_counts.get((group, frame), 0), total, group)
            for (group, frame), total in total_counts.items()]
    rows.sort(key=_sort_key(sort))
    return TopReport(summarize(profile, table), rows, sort)


# ---- rendering -------------------------------------------------------------------------------------

def render_text(report: TopReport, limit: Optional[int] = 20) -> str:
    rows = report.rows if limit is None or limit <= 0 else report.rows[:limit]
    n = report.samples
    lines = [report.summary.line(),
             f"Showing {len(rows)} of {len(report.rows)} functions, sorted by {report.sort}"]
    per_thread = any(r.thread is not None for r in rows)
    header = f"{'self':>9} {'self%':>7} {'sum%':>7} {'total':>9} {'total%':>7}  {'kind':<11} "
    header += "thread: function" if per_thread else "function"
    lines.append(header)
    running = 0
    for r in rows:
        running += r.self
        name = f"{r.thread}: {r.name}" if per_thread else r.name
        lines.append(f"{r.self:>9} {r.percent(n, 'self'):>6.2f}% {100.0 * running / n if n else 0:>6.2f}% "
                     f"{r.total:>9} {r.percent(n, 'total'):>6.2f}%  {r.kind.value:<11} {name}")
    return "\n".join(lines) + "\n"


def to_json(report: TopReport, limit: Optional[int] = None) -> dict:
    rows = report.rows if limit is None or limit <= 0 else report.rows[:limit]
    n = report.samples
    out = []
    for r in rows:
        row = {"function": r.name, "kind": r.kind.value, "self": r.self,
               "self_percent": round(r.percent(n, "self"), 4), "total": r.total,
               "total_percent": round(r.percent(n, "total"), 4)}
        if r.thread is not None:
            row["thread"] = r.thread
        out.append(row)
    return {"view": "top", "sort": report.sort, **report.summary.to_json(), "functions": len(report.rows),
            "rows": out}
