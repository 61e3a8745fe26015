"""The daemon's loop: find JVMs, sample them all through one HostProfiler, hand over a window per JVM per
interval (to the local store and the exporters), log one line per event.

What it is given (the CLI wires the real parts):
- `scanner`: pyprof.discovery's JvmScanner: every SCAN_INTERVAL_S it reports the JVMs found (with their
  labels: service, pid, container, jdk, host), gone, and skipped (not HotSpot, not selected, unreadable);
- `sinks`: where a finished window goes (the store first: it is the bounded queue of last resort).
A JVM that cannot be opened is logged once and never tried again; a JVM that exits has its window written
at once; a restarted JVM (a new pid, or a reused pid with a new start time) is a new target. An event
that cannot serve a JVM (`-e alloc` on a libjvm without the probed functions) is logged once for that
JVM (`event-unavailable`), which is profiled for the other events.

A window is one profile per event (HostProfiler's order, the first the default sample type); it is
empty, and not handed over, when no event has a sample in it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence, TextIO

from pyprof.daemon.host import HostProfiler
from pyprof.discovery.scanner import JvmScanner
from pyprof.errors import MemoryReadError, PyprofError
from pyprof.export.metrics import DaemonMetrics
from pyprof.model import ProfileData
from pyprof.session.runloop import StopSignals, run_until_stopped
from pyprof.store.labels import WindowLabels

SCAN_INTERVAL_S = 1.0      # new JVMs are found within this (plus the time to open them)
STEP_MS = 100


class WindowSink(Protocol):
    """Takes a finished window of one JVM (the store writes it; an exporter queues it)."""

    def accept(self, labels: WindowLabels, window: Sequence[ProfileData]) -> Optional[str]:
        """Returns a short note for the log line (e.g. the file written), or None."""
        ...


@dataclass
class DaemonCounters:
    jvms_found: int = 0
    jvms_skipped: int = 0
    jvms_gone: int = 0
    windows_written: int = 0
    windows_empty: int = 0
    sink_errors: int = 0


@dataclass
class Daemon:
    host: HostProfiler
    scanner: JvmScanner
    sinks: list[WindowSink]
    interval_s: float = 15.0
    log_stream: TextIO = field(default_factory=lambda: sys.stderr)
    counters: DaemonCounters = field(default_factory=DaemonCounters)
    labels: dict[int, WindowLabels] = field(default_factory=dict)
    metrics: Optional[DaemonMetrics] = None
    _lost_reported: dict[str, int] = field(default_factory=dict)   # event -> lost records logged so far
    _next_scan: float = 0.0
    _next_rotation: float = 0.0

    # ---- logging: one line per event -------------------------------------------------------------
    def log(self, event: str, /, **fields: object) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rest = " ".join(f"{k}={_quote(v)}" for k, v in fields.items() if v not in (None, ""))
        self.log_stream.write(f"{stamp} {event} {rest}".rstrip() + "\n")
        self.log_stream.flush()

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, stop: StopSignals) -> str:
        """Until SIGTERM/SIGINT; then every open window is written. Returns why it ended."""
        self.host.start()
        self.log("started", rate_hz=self.host.rate_hz, interval_s=self.interval_s,
                 events=",".join(self.host.plan.events))
        now = time.monotonic()
        self._next_rotation = now + self.interval_s
        try:
            why = run_until_stopped(self.step, stop)
        finally:
            self.shutdown()
        return why

    def step(self) -> Optional[str]:
        self.host.step(STEP_MS)
        now = time.monotonic()
        if now >= self._next_scan:
            self._next_scan = now + SCAN_INTERVAL_S
            try:
                self.scan()
            except OSError as e:   # /proc changing under the scan: the next scan sees it settled
                self.log("scan-failed", error=f"{type(e).__name__}: {e}")
            self._update_gauges()
        if now >= self._next_rotation:
            self._next_rotation = now + self.interval_s
            for pid in list(self.host.targets):
                self._hand_over(pid, self.host.close_window(pid))
                self.host.step(0)   # encoding and writing a window takes a while: drain between two
        return None

    def scan(self) -> None:
        """Targets that exited are closed; JVMs not seen before are opened."""
        result = self.scanner.scan()
        for gone in result.gone:
            self._gone(gone.pid)
        for pid in self.host.exited():   # exited between two scans: write its window now
            self._gone(pid)
        for skipped in result.skipped:
            self.counters.jvms_skipped += 1
            self.log("jvm-skipped", pid=skipped.pid, reason=skipped.reason)
        for found in result.found:
            self._found(found.pid, found.labels)
            # Opening a JVM takes seconds (its symbols, the code-cache walk) and nothing drains the ring
            # buffer meanwhile: drain it between two opens, or the busiest events' records (alloc) of the
            # JVMs already profiled are lost for every JVM that a scan finds.
            self.host.step(0)

    def _found(self, pid: int, labels: WindowLabels) -> None:
        try:
            host_target = self.host.add(pid)
        except (PyprofError, MemoryReadError, OSError) as e:
            self.counters.jvms_skipped += 1   # the scanner tracks it: it is not tried again
            self.log("jvm-skipped", pid=pid, reason=str(e).splitlines()[0] if str(e) else type(e).__name__)
            return
        self.labels[pid] = labels
        self.counters.jvms_found += 1
        self.log("jvm-found", pid=pid, jdk=labels.jdk, service=labels.service_name,
                 container=labels.container_id[:12],
                 live_probes="no" if host_target.target.live.degraded else "yes")
        for event, why in host_target.unavailable.items():
            self.log("event-unavailable", pid=pid, event=event, reason=why)

    def _update_gauges(self) -> None:
        """Records lost since the last scan, per event (one line each), and the gauges."""
        for event, lost in self.host.lost_by_event().items():
            new = lost - self._lost_reported.get(event, 0)
            if new > 0:
                self.log("samples-lost", event=event, count=new, note="ring buffer full")
                if self.metrics is not None:
                    self.metrics.lost_samples.inc(new)
                    self.metrics.lost_records.labels(event=event).inc(new)
                self._lost_reported[event] = lost
        if self.metrics is not None:
            self.metrics.jvms_tracked.set(len(self.host.targets))

    def _gone(self, pid: int) -> None:
        if pid not in self.host.targets:
            return
        window = self.host.remove(pid)
        self.counters.jvms_gone += 1
        self.log("jvm-gone", pid=pid)
        if window is not None:
            self._hand_over(pid, window)
        self.labels.pop(pid, None)

    def _hand_over(self, pid: int, window: Sequence[ProfileData]) -> None:
        per_event = {profile.event: profile.total_samples for profile in window}
        if not any(per_event.values()):
            self.counters.windows_empty += 1   # an idle JVM: nothing to store or push
            return
        first = window[0]
        samples = per_event[first.event]
        labels = self.labels.get(pid) or WindowLabels(service_name="unknown", pid=pid)
        notes = []
        for sink in self.sinks:
            try:
                note = sink.accept(labels, window)
            except (PyprofError, OSError) as e:
                self.counters.sink_errors += 1
                self.log("window-failed", pid=pid, sink=type(sink).__name__, error=str(e))
                continue
            if note:
                notes.append(note)
        self.counters.windows_written += 1
        if self.metrics is not None:
            self.metrics.record_window(samples, 0, first.unknown_frames, first.frames)
            for event, count in per_event.items():
                self.metrics.event_samples.labels(event=event).inc(count)
        others = {event: count for event, count in per_event.items() if event != first.event}
        self.log("window", pid=pid, service=labels.service_name, samples=samples, **others,
                 seconds=round(first.duration_ns / 1e9, 1), unknown_frames=first.unknown_frames,
                 to=",".join(notes))

    def shutdown(self) -> None:
        """Write every open window (SIGTERM must not lose the last seconds), then release everything."""
        for pid, window in self.host.close().items():
            self._hand_over(pid, window)
        lost = {f"lost_{event}": count for event, count in self.host.final_lost_by_event.items()}
        self.log("stopped", windows=self.counters.windows_written, jvms=self.counters.jvms_found, **lost,
                 **self.host.final_event_counters)


def _quote(value: object) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or '"' in text or not text) else text
