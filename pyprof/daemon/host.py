"""One sampler for every JVM of the host: one BPF program, the target pids in a map, one ring buffer.

Per-JVM state (the opened JVM, its code-cache map with its probes, threads, unwinder: a JvmTarget) is
made when the JVM is first seen and freed when it exits. Each target aggregates its samples into the
window that is open for it; `close_window` hands the window over (to the store, the exporters) and opens
the next one. Samples are routed by the pid the BPF program puts in each record.

Events (`-e cpu,wall,alloc,lock`): one module holds every event's program, as for `attach`; a window is
one ProfileData per event (the first is the default sample type), filled by the session's own routing
(pyprof.session.session.route_record). Per-JVM parts (alloc's and lock's uprobes on that JVM's libjvm)
are attached when the JVM is added and detached when it is removed; wall's tracepoints serve every
target through the BPF `targets` map. An event that cannot serve one JVM (its libjvm lacks a probed
function, the kernel refuses uprobes) is reported in HostTarget.unavailable and that JVM is profiled
for the other events.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from pyprof import __version__
from pyprof.errors import MemoryReadError, NoSuchProcess
from pyprof.model import ProfileData
from pyprof.procfs.process import is_running
from pyprof.sampling.events import EVENT_NAMES
from pyprof.sampling.programs import EVENTS, EventOptions, plan
from pyprof.sampling.sampler import RawSample, Sampler, SamplerCounters
from pyprof.session.session import THREADS_REFRESH_S, JvmTarget, route_record

# The events a daemon window can hold. offcpu is left out: it is wall's off-CPU part (wall's samples
# carry thread_state), and no continuous-profiling backend has a profile type for it.
DAEMON_EVENTS = ("cpu", "wall", "alloc", "lock")


@dataclass
class HostTarget:
    """A JVM the host profiler samples, and its open window (one profile per event, in -e order)."""
    pid: int
    target: JvmTarget
    windows: dict[str, ProfileData]
    window_started_monotonic: float
    samples_total: int = 0
    unknown_before_window: int = 0    # the unwinder's counts when the window opened
    frames_before_window: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)   # event -> why it cannot serve this JVM

    @property
    def window(self) -> ProfileData:
        """The first event's profile (the default sample type)."""
        return next(iter(self.windows.values()))


@dataclass
class HostCounters:
    samples: int = 0
    unrouted: int = 0                 # samples of a pid that is no longer a target (it just left)
    targets_added: int = 0
    targets_removed: int = 0
    by_pid: Counter = field(default_factory=Counter)


class HostProfiler:
    def __init__(self, rate_hz: int = 49, stack_bytes: int = 32768, force: bool = False,
                 events: tuple[str, ...] = ("cpu",), event_options: Optional[EventOptions] = None) -> None:
        self.rate_hz = rate_hz
        self.period_ns = int(1e9 / rate_hz)
        options = event_options or EventOptions()
        self.plan = plan(events, EventOptions(rate_hz=rate_hz, wall_interval_ns=options.wall_interval_ns,
                                              alloc_interval_bytes=options.alloc_interval_bytes,
                                              lock_threshold_ns=options.lock_threshold_ns))
        self._cpu_only = self.plan.events == ("cpu",)
        self.sampler = Sampler(0, rate_hz=rate_hz, stack_bytes=stack_bytes, force=force,
                               cpu=self.plan.cpu_clock, programs=tuple(self.plan.programs.values()))
        self.targets: dict[int, HostTarget] = {}
        self.counters = HostCounters()
        self.final_event_counters: dict[str, int] = {}   # filled by close()
        self.final_lost_by_event: dict[str, int] = {}
        self._threads_refreshed = 0.0

    def start(self) -> None:
        """Compile and attach the one sampler (no targets yet)."""
        self.sampler.start()

    # ---- targets ---------------------------------------------------------------------------------
    def add(self, pid: int) -> HostTarget:
        """Open the JVM `pid` (PyprofError / MemoryReadError when it is not a JVM pyprof can read) and
        sample it from now on."""
        target = JvmTarget.open(pid)
        host_target = HostTarget(pid, target, {}, time.monotonic())
        self.targets[pid] = host_target
        try:
            failures = self.sampler.add_target(pid, tolerate=True)
        except BaseException:
            self.sampler.remove_target(pid)
            del self.targets[pid]
            target.close()
            raise
        for event in self.plan.events:
            program = EVENTS[event].program
            if program in failures:
                host_target.unavailable[event] = str(failures[program]).splitlines()[0]
        host_target.windows = self._new_windows(host_target)
        self.counters.targets_added += 1
        self._refresh_threads(force=True)
        return host_target

    def remove(self, pid: int) -> Optional[list[ProfileData]]:
        """Stop sampling `pid`, free its state; returns its last window (with what was still buffered)."""
        host_target = self.targets.get(pid)
        if host_target is None:
            return None
        self.sampler.remove_target(pid)
        self._process(self.sampler.poll(0))
        window = self._finish_window(host_target)
        del self.targets[pid]
        host_target.target.close()
        self.counters.targets_removed += 1
        return window

    def exited(self) -> list[int]:
        """Targets whose process has ended (zombies included)."""
        return [pid for pid in self.targets if not is_running(pid)]

    # ---- sampling --------------------------------------------------------------------------------
    def step(self, timeout_ms: int = 100) -> int:
        raw = self.sampler.poll(timeout_ms)
        self._process(raw)
        if time.monotonic() - self._threads_refreshed > THREADS_REFRESH_S:
            self._refresh_threads()
        return len(raw)

    def _process(self, raw: list[RawSample]) -> None:
        if not raw:
            return
        polled: set[int] = set()
        for sample in raw:
            host_target = self.targets.get(sample.pid)
            if host_target is None:
                self.counters.unrouted += 1
                continue
            if sample.pid not in polled:   # code-cache events before the samples they may name
                polled.add(sample.pid)
                self._poll_code_cache(host_target)
            if self._cpu_only:   # the common case, without the routing
                host_target.window.add(host_target.target.stack_key(sample))
            else:
                route_record(self.plan, host_target.target, host_target.windows, sample)
            host_target.samples_total += 1
            self.counters.by_pid[sample.pid] += 1
        self.counters.samples += len(raw)

    @staticmethod
    def _poll_code_cache(host_target: HostTarget) -> None:
        try:
            host_target.target.live.poll(0)
        except (MemoryReadError, NoSuchProcess, OSError):
            pass   # the JVM is exiting: its samples still unwind against the map it had

    def _refresh_threads(self, force: bool = False) -> None:
        """Re-read every target's threads; push the union of their anchors to the one BPF map (tids are
        unique across the host)."""
        self._threads_refreshed = time.monotonic()
        changed = force
        for host_target in self.targets.values():
            try:
                changed |= host_target.target.threads.refresh()
            except (MemoryReadError, NoSuchProcess, OSError):
                continue   # a JVM on its way out: the next scan closes it
        if changed:
            anchors: dict[int, tuple[int, int, int, int]] = {}
            for host_target in self.targets.values():
                anchors.update(host_target.target.threads.anchor_addresses())
            self.sampler.set_java_threads(anchors)

    # ---- windows ---------------------------------------------------------------------------------
    def _new_windows(self, host_target: HostTarget) -> dict[str, ProfileData]:
        """One empty profile per event, sharing the header comments (the pprof writer takes the first's)."""
        target = host_target.target
        comments = [f"pyprof {__version__} daemon", f"JVM: {target.description}",
                    f"pid {target.jvm.pid}, cpu-clock at {self.rate_hz} Hz"]
        if not self._cpu_only:
            comments.append(f"events {','.join(self.plan.events)}")
        comments += [f"event {event} unavailable: {why}" for event, why in host_target.unavailable.items()]
        start_ns = time.time_ns()
        return {event: ProfileData(event=event, period_ns=self.period_ns, start_time_ns=start_ns,
                                   comments=list(comments))
                for event in self.plan.events}

    def _finish_window(self, host_target: HostTarget) -> list[ProfileData]:
        duration_ns = int((time.monotonic() - host_target.window_started_monotonic) * 1e9)
        stats = host_target.target.unwinder.stats
        unknown, frames = stats.unknown_total, stats.frames
        for window in host_target.windows.values():
            window.duration_ns = duration_ns
            window.unknown_frames = unknown - host_target.unknown_before_window
            window.frames = frames - host_target.frames_before_window
        host_target.unknown_before_window, host_target.frames_before_window = unknown, frames
        return list(host_target.windows.values())

    def close_window(self, pid: int) -> list[ProfileData]:
        """The window of `pid` so far (one profile per event); a new one starts now."""
        host_target = self.targets[pid]
        window = self._finish_window(host_target)
        host_target.windows = self._new_windows(host_target)
        host_target.window_started_monotonic = time.monotonic()
        return window

    def lost_by_event(self) -> dict[str, int]:
        """Records the full ring buffer refused since the start, per requested event's record kind
        (cpu: cpu-clock samples; wall also counts its off-CPU records; alloc, lock: theirs)."""
        try:
            lost = self.sampler.lost_by_event()
        except Exception:  # noqa: BLE001 - the BPF maps may already be gone
            return {}
        return {EVENT_NAMES[kind]: lost.get(kind, 0) for kind in sorted(self.plan.routes)}

    def event_counters(self) -> dict[str, int]:
        """The event programs' own counters (pyprof.sampling.events: records sent, skipped, unmatched)."""
        try:
            raw = self.sampler.raw_counters()
        except Exception:  # noqa: BLE001 - the BPF maps may already be gone
            return {}
        return self.plan.program_counters(raw)

    def sampler_counters(self) -> SamplerCounters:
        try:
            return self.sampler.counters()
        except Exception:  # noqa: BLE001 - the BPF maps may already be gone
            return SamplerCounters(0, 0, 0, 0)

    def close(self) -> dict[int, list[ProfileData]]:
        """Stop sampling; the last window of every target."""
        windows = {}
        for pid in list(self.targets):
            window = self.remove(pid)
            if window is not None:
                windows[pid] = window
        # read while the BPF maps exist: the summary of the run (the daemon's `stopped` line)
        self.final_event_counters = self.event_counters()
        self.final_lost_by_event = self.lost_by_event()
        self.sampler.close()
        return windows
