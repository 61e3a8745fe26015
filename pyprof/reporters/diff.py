"""Differential views of two profiles (BASE, NEW): what got slower.

Shares are compared, not sample counts, so two runs of different lengths or rates compare fairly: a
function's change is its share of NEW minus its share of BASE, in percentage points. The differential
flame graph lives in pyprof.reporters.flamegraph (build_diff); this module is the differential top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pyprof.model import FrameKind, ProfileData
from pyprof.reporters.aggregate import FrameTable, ProfileSummary
from pyprof.reporters.top import aggregate as top_aggregate

SORTS = ("self", "total")
SHRANK_ROWS = 5     # text: rows of "what got faster" under the growth rows


@dataclass
class DiffRow:
    name: str
    kind: FrameKind
    base_self: float       # percent of BASE's samples
    new_self: float
    base_total: float
    new_total: float

    @property
    def delta_self(self) -> float:
        return self.new_self - self.base_self

    @property
    def delta_total(self) -> float:
        return self.new_total - self.base_total


@dataclass
class DiffReport:
    base: ProfileSummary
    new: ProfileSummary
    rows: list[DiffRow]
    sort: str = "self"


def aggregate(base: ProfileData, new: ProfileData, tiers: bool = True, sort: str = "self") -> DiffReport:
    table = FrameTable(tiers)
    b = top_aggregate(base, tiers=tiers, frames=table)
    n = top_aggregate(new, tiers=tiers, frames=table)
    rows: dict[str, DiffRow] = {}
    for report, is_new in ((b, False), (n, True)):
        total = report.samples or 1
        for r in report.rows:
            row = rows.get(r.name)
            if row is None:
                row = rows[r.name] = DiffRow(r.name, r.kind, 0.0, 0.0, 0.0, 0.0)
            if is_new:
                row.new_self, row.new_total = 100.0 * r.self / total, 100.0 * r.total / total
            else:
                row.base_self, row.base_total = 100.0 * r.self / total, 100.0 * r.total / total
    ordered = sorted(rows.values(), key=_sort_key(sort))
    return DiffReport(b.summary, n.summary, ordered, sort)


def _sort_key(sort: str):
    if sort == "total":
        return lambda r: (-r.delta_total, -r.delta_self, r.name)
    return lambda r: (-r.delta_self, -r.delta_total, r.name)


def render_text(report: DiffReport, limit: Optional[int] = 20) -> str:
    rows = report.rows if limit is None or limit <= 0 else report.rows[:limit]
    lines = [f"base: {report.base.line()}", f"new:  {report.new.line()}",
             f"Showing {len(rows)} of {len(report.rows)} functions, "
             f"biggest growth of {report.sort} share first "
             f"(change in percentage points, new minus base)",
             f"{'base self%':>10} {'new self%':>10} {'change':>8}  {'base total%':>11} {'new total%':>10} "
             f"{'change':>8}  function"]
    lines += [_line(r) for r in rows]
    # and what got faster: the biggest shrinkage, when the rows above do not show it already
    delta = (lambda r: r.delta_total) if report.sort == "total" else (lambda r: r.delta_self)
    shown = {id(r) for r in rows}
    shrank = sorted((r for r in report.rows if delta(r) < 0 and id(r) not in shown), key=delta)[:SHRANK_ROWS]
    if shrank:
        lines.append(f"… and the biggest shrinkage of {report.sort} share:")
        lines += [_line(r) for r in shrank]
    return "\n".join(lines) + "\n"


def _line(r: DiffRow) -> str:
    return (f"{r.base_self:>9.2f}% {r.new_self:>9.2f}% {r.delta_self:>+8.2f}  "
            f"{r.base_total:>10.2f}% {r.new_total:>9.2f}% {r.delta_total:>+8.2f}  {r.name}")


def to_json(report: DiffReport, limit: Optional[int] = None) -> dict:
    rows = report.rows if limit is None or limit <= 0 else report.rows[:limit]
    return {"view": "diff-top", "sort": report.sort, "base": report.base.to_json(),
            "new": report.new.to_json(), "functions": len(report.rows),
            "rows": [{"function": r.name, "kind": r.kind.value,
                      "base_self_percent": round(r.base_self, 4), "new_self_percent": round(r.new_self, 4),
                      "delta_self": round(r.delta_self, 4), "base_total_percent": round(r.base_total, 4),
                      "new_total_percent": round(r.new_total, 4), "delta_total": round(r.delta_total, 4)}
                     for r in rows]}
