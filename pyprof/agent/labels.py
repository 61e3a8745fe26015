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
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional


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


class AgentLabeler:
    """Labels a profiling session's samples with what the agent knows (`pyprof attach --agent`): the
    Java thread id and state, and the GC or safepoint pause a sample fell in.

    JFR hands pause events over up to ~1 s after they end, so samples wait HOLD_NS before they are
    labelled (finish() labels the rest after one last fetch). Agent failures never end the session:
    they are counted, and the samples keep their other labels.
    """

    HOLD_NS = 2_000_000_000
    REFRESH_S = 1.0

    def __init__(self, client: Any) -> None:
        self.client = client
        self.threads = ThreadLabels()
        self.pauses: list[dict[str, Any]] = []
        self.timeline = PauseTimeline()
        self.failures = 0
        self._since = 0
        self._refreshed = 0.0
        self._held: deque[tuple[int, Any]] = deque()   # (sample time_ns, StackKey)

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._refreshed < self.REFRESH_S:
            return
        self._refreshed = time.monotonic()
        try:
            self.threads = ThreadLabels.from_rows(self.client.threads())
            rows, self._since, _dropped = self.client.pauses(self._since)
        except Exception:  # noqa: BLE001 - the agent is optional: a failure costs labels, not samples
            self.failures += 1
            return
        if rows:
            self.pauses += rows
            self.timeline = PauseTimeline.from_pauses(self.pauses)

    def hold(self, time_ns: int, key: Any) -> None:
        self._held.append((time_ns, key))

    def release(self, now_ns: Optional[int] = None) -> Iterator[Any]:
        """Labelled StackKeys of the samples old enough (all of them when now_ns is None)."""
        cutoff = None if now_ns is None else now_ns - self.HOLD_NS
        while self._held and (cutoff is None or self._held[0][0] < cutoff):
            time_ns, key = self._held.popleft()
            labels = {**self.threads.get(key.tid), **self.timeline.at(time_ns), **dict(key.labels)}
            labels.pop("java_thread", None)   # the session names threads already (current Java names)
            yield replace(key, labels=tuple(sorted(labels.items())))

    def summary(self) -> dict[str, Any]:
        gc = [p for p in self.pauses if p.get("kind") == "gc"]
        return {"gc_pauses": len(gc), "gc_pause_ms": round(self.timeline.total_ns("gc") / 1e6, 3),
                "safepoints": len(self.pauses) - len(gc), "agent_failures": self.failures}
