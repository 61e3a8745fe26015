"""Agent data shaped for a profiling session: per-thread labels and a pause timeline.

For `pyprof attach --agent` (the session and the pprof writer live elsewhere): a sample taken on host
thread TID at CLOCK_MONOTONIC time T (what bpf_ktime_get_ns() returns) gets
- ThreadLabels.get(TID): {"java_thread": name, "java_thread_id": "17", "thread_state": "RUNNABLE"};
- PauseTimeline.at(T): {"pause": "gc", "pause_name": "G1New Pause Young (G1 Evacuation Pause)"} when the
  sample fell inside a stop-the-world GC pause, {"pause": "safepoint", ...} inside another safepoint.
JFR stamps events with the wall clock; they are moved onto CLOCK_MONOTONIC with the offset between the
two clocks measured when the pauses are fetched (same host clock, so the error is the clocks' drift).
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ThreadLabels:
    by_tid: dict[int, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> ThreadLabels:
        """Rows of AgentClient.threads() (host tid in "tid")."""
        out: dict[int, dict[str, str]] = {}
        for r in rows:
            if r.get("tid") is None:
                continue
            labels = {"java_thread": str(r.get("name"))}
            if r.get("java_id") is not None:
                labels["java_thread_id"] = str(r["java_id"])
            if r.get("state"):
                labels["thread_state"] = str(r["state"])
            out[int(r["tid"])] = labels
        return cls(out)

    def get(self, tid: int) -> dict[str, str]:
        return self.by_tid.get(tid, {})


@dataclass
class PauseTimeline:
    """Stop-the-world intervals on CLOCK_MONOTONIC; GC pauses win over the safepoint that holds them."""

    starts: list[int] = field(default_factory=list)
    intervals: list[tuple[int, int, dict[str, str]]] = field(default_factory=list)

    @classmethod
    def from_pauses(cls, pauses: list[dict[str, Any]], wall_minus_mono_ns: Optional[int] = None
                    ) -> PauseTimeline:
        offset = wall_minus_mono_ns if wall_minus_mono_ns is not None else \
            time.time_ns() - time.monotonic_ns()
        rows = []
        for p in pauses:
            start = int(p["start_ns"]) - offset
            end = start + max(0, int(p.get("duration_ns", 0)))
            if p.get("kind") == "gc":
                name = " ".join(str(x) for x in (p.get("name"), p.get("phase")) if x)
                if p.get("cause"):
                    name += f" ({p['cause']})"
                rows.append((start, end, {"pause": "gc", "pause_name": name or "gc"}))
            else:
                rows.append((start, end, {"pause": "safepoint",
                                          "pause_name": str(p.get("operation") or "safepoint")}))
        # GC pauses after safepoints at equal starts, so the later (more specific) match wins in at()
        rows.sort(key=lambda r: (r[0], r[2]["pause"] == "gc"))
        return cls([r[0] for r in rows], rows)

    def at(self, monotonic_ns: int) -> dict[str, str]:
        """Labels of the pause that holds this instant (the innermost GC pause first), or {}."""
        i = bisect.bisect_right(self.starts, monotonic_ns)
        best: dict[str, str] = {}
        # intervals are short and rarely overlap more than two deep: look back a few
        for j in range(i - 1, max(-1, i - 9), -1):
            start, end, labels = self.intervals[j]
            if start <= monotonic_ns <= end:
                if labels["pause"] == "gc":
                    return labels
                best = best or labels
        return best

    def total_ns(self, kind: str = "gc") -> int:
        return sum(end - start for start, end, labels in self.intervals if labels["pause"] == kind)
