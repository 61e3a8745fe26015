"""One profiling run: eBPF samples + live code-cache map + unwinder -> aggregated ProfileData.

Order inside each step matters: samples are taken from the ring buffer *before* code-cache events are
applied, so every nmethod a sample ran in has been registered by the time it is unwound (and one freed
meanwhile is still in the live map's graveyard).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from pyprof import __version__
from pyprof.codemap.live import LiveCodeCache
from pyprof.errors import MemoryReadError, NoSuchProcess
from pyprof.hotspot.codecache import CodeCache
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.method import MethodResolver
from pyprof.hotspot.threads import JavaThreads
from pyprof.model import FrameKind, ProfileData, StackKey
from pyprof.procfs.process import is_running
from pyprof.sampling.sampler import stack_window
from pyprof.sampling.threadnames import ThreadNames
from pyprof.sampling.unwind import Unwinder, UnwindStats

if TYPE_CHECKING:
    from pyprof.agent.labels import AgentLabeler

MAX_BUFFERED = 2_000   # raw samples kept while a recorded JVM boots: 2000 x 32 KiB stacks = 64 MiB at most
THREADS_REFRESH_S = 0.5  # how often the JavaThreads list (tids, anchors for the BPF program) is re-read


@dataclass
class ProfileOptions:
    rate_hz: int = 99
    stack_bytes: int = 32768
    force: bool = False          # sample even on kernels with the known BPF copy freeze
    agent: bool = False          # label samples with the Java agent's thread states and GC pauses


@dataclass
class SessionStats:
    samples: int = 0
    lost: int = 0
    truncated: int = 0
    unknown_frames: int = 0
    frames: int = 0
    code_events: int = 0
    code_events_lost: int = 0
    dropped_early: int = 0       # samples taken before the JVM was readable, over the buffer bound
    first_sample_s: Optional[float] = None
    no_user_regs: int = 0          # samples without user registers (exiting threads)
    unwind: Optional[UnwindStats] = None   # the unwinder's own counters (roots reached, anchors, ...)
    startup_s: float = 0.0         # wall time from the start to sampling with the code-cache map live
    startup_cpu_s: float = 0.0     # pyprof's CPU for that (BPF compilation, the code-cache walk)
    sampling_cpu_s: float = 0.0    # pyprof's CPU from then to the end (unwinding, aggregation)
    self_counts: Counter = field(default_factory=Counter)   # leaf Java/native function -> samples

    @property
    def unknown_pct(self) -> float:
        return 100.0 * self.unknown_frames / self.frames if self.frames else 0.0


class ProfileSession:
    def __init__(self, pid: int, options: Optional[ProfileOptions] = None) -> None:
        self.pid = pid
        self.options = options or ProfileOptions()
        self.profile = ProfileData(period_ns=int(1e9 / self.options.rate_hz))
        self.stats = SessionStats()
        self.jvm: Optional[HotSpotJvm] = None
        self.live: Optional[LiveCodeCache] = None
        self.sampler = None
        self.unwinder: Optional[Unwinder] = None
        self.names = ThreadNames(pid)
        self.threads: Optional[JavaThreads] = None
        self.agent: Optional[AgentLabeler] = None
        self.agent_source = None
        self._started_monotonic = 0.0
        self._sampling_since = 0.0
        self._started_cpu = time.process_time()
        self._threads_refreshed = 0.0
        self._pushed_anchors: dict[int, tuple[int, int, int, int]] = {}
        self._closed = False
        self._buffered: list = []

    # ---- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """attach: the JVM first (fails fast on a non-JVM, before any BPF is compiled), then sampling.

        BPF programs are compiled one after the other: bcc's compiler is not thread-safe (two
        concurrent BPF() constructions crash the process).
        """
        try:
            self.attach_jvm()
            if self.options.agent:
                self._start_agent()
            self.start_sampler()
            self._push_threads()
        except BaseException:
            self.finish()   # release whatever was attached already (probes, BPF programs, the agent)
            raise
        self._mark_ready()

    def _start_agent(self) -> None:
        """Load (or reuse) the Java agent; its labels are optional, its failure to load is not silent."""
        from pyprof.agent.labels import AgentLabeler
        from pyprof.sources.agent import AgentSource

        self.agent_source = AgentSource.open(self.pid)
        self.agent = AgentLabeler(self.agent_source.client)
        self.agent.refresh(force=True)

    def _mark_ready(self) -> None:
        """Start-up is over: the sampler runs and the code-cache map is live."""
        self.stats.startup_s = time.monotonic() - self._started_monotonic
        self.stats.startup_cpu_s = time.process_time() - self._started_cpu

    def retarget(self, pid: int) -> None:
        """Sample `pid` from now on (record: the sampler runs before the JVM exists)."""
        self.pid = pid
        self.names = ThreadNames(pid)
        if self.sampler is not None:
            self.sampler.set_target(pid)

    def start_sampler(self) -> None:
        from pyprof.sampling.sampler import Sampler

        if not self._started_monotonic:
            self._started_monotonic = time.monotonic()
            self.profile.start_time_ns = time.time_ns()
        self.sampler = Sampler(self.pid, rate_hz=self.options.rate_hz,
                               stack_bytes=self.options.stack_bytes, force=self.options.force)
        self.sampler.start()
        # The profile covers the time samples were taken: from now (not from pyprof's own start-up).
        self._sampling_since = time.monotonic()
        self.profile.start_time_ns = time.time_ns()

    def attach_jvm(self, jvm: Optional[HotSpotJvm] = None) -> None:
        """Open the JVM, start the live code-cache map and the unwinder; unwind buffered samples."""
        from pyprof.symbols.kernel import KernelSymbols
        from pyprof.symbols.native import NativeSymbolizer

        if not self._started_monotonic:
            self._started_monotonic = time.monotonic()
            self.profile.start_time_ns = time.time_ns()
        jvm = jvm or HotSpotJvm.open(self.pid)
        resolver = MethodResolver(jvm.reader, jvm.layout)
        live = LiveCodeCache(jvm, CodeCache(jvm, resolver))
        try:
            live.start(require_probes=False)
        except BaseException:
            live.close()   # the probes may be attached already when the walk fails
            jvm.close()
            raise
        self.jvm, self.live = jvm, live
        threads = JavaThreads(jvm)
        self.threads = threads
        self.names.java_names = threads.name
        self._push_threads()
        self.unwinder = Unwinder(jvm, live.lookup, resolver, threads, NativeSymbolizer(self.pid),
                                 KernelSymbols.load())
        self.profile.comments += [
            f"pyprof {__version__}",
            f"JVM: {jvm.description}",
            f"pid {self.pid}, cpu-clock at {self.options.rate_hz} Hz, "
            f"{stack_window(self.options.stack_bytes)} B stack copies",
        ]
        buffered, self._buffered = self._buffered, []
        self._process(buffered)
        if self.sampler is not None:   # record: the sampler ran while the JVM booted
            self._mark_ready()

    def buffer_step(self, timeout_ms: int) -> None:
        """Before the JVM is readable (record): keep raw samples, bounded."""
        if self.sampler is None:
            time.sleep(timeout_ms / 1000)
            return
        raw = self.sampler.poll(timeout_ms)
        room = MAX_BUFFERED - len(self._buffered)
        self._buffered.extend(raw[:max(room, 0)])
        self.stats.dropped_early += max(0, len(raw) - max(room, 0))
        self._note_first(raw)

    def sampler_lost(self) -> int:
        try:
            return self.sampler.counters().lost if self.sampler is not None else 0
        except Exception:  # noqa: BLE001 - progress display only
            return 0

    def step(self, timeout_ms: int = 100) -> int:
        """Take what the ring buffer has (waiting up to timeout_ms); returns samples processed."""
        if self.unwinder is None:
            self.buffer_step(timeout_ms)
            return 0
        assert self.sampler is not None and self.live is not None
        raw = self.sampler.poll(timeout_ms)
        self.live.poll(0)
        self._process(raw)
        self._note_first(raw)
        if time.monotonic() - self._threads_refreshed > THREADS_REFRESH_S:
            self._push_threads()
        return len(raw)

    def _push_threads(self) -> None:
        """Re-read the JVM's threads (new ones appear, names change) and tell the BPF program where each
        keeps its last Java frame. The one place the thread list is refreshed."""
        self._threads_refreshed = time.monotonic()
        if self.threads is None:
            return
        self.threads.refresh()
        if self.sampler is None:
            return
        anchors = self.threads.anchor_addresses()
        if anchors != self._pushed_anchors:
            self.sampler.set_java_threads(anchors)
            self._pushed_anchors = anchors

    def _process(self, raw: list) -> None:
        assert self.unwinder is not None
        for sample in raw:
            try:
                frames = self.unwinder.unwind(sample)
            except MemoryReadError:
                frames = (self.unwinder.unknown_frame("unwind failed"),)
            key = StackKey(frames, self.names.name(sample.tid), sample.tid)
            if self.agent is not None:
                self.agent.hold(sample.time_ns, key)
            else:
                self.profile.add(key)
            self._count_self(frames)
        self.stats.samples += len(raw)
        if self.agent is not None:
            self.agent.refresh()
            self._add_labelled(time.monotonic_ns())

    def _add_labelled(self, now_ns: Optional[int]) -> None:
        assert self.agent is not None
        for key in self.agent.release(now_ns):
            self.profile.add(key)

    def _note_first(self, raw: list) -> None:
        if raw and self.stats.first_sample_s is None:
            self.stats.first_sample_s = time.monotonic() - self._started_monotonic

    def _count_self(self, frames) -> None:
        for frame in frames:
            logical = frame.frames[0]
            if logical.kind is not FrameKind.KERNEL:
                self.stats.self_counts[logical.name] += 1
                return
        if frames:
            self.stats.self_counts[frames[0].frames[0].name] += 1

    def target_alive(self) -> bool:
        return is_running(self.pid)

    def finish(self) -> ProfileData:
        """Drain what is left, close everything, fill in the profile's totals. Safe to call twice."""
        if self._closed:
            return self.profile
        self._closed = True
        try:
            if self.sampler is not None and self.unwinder is not None:
                self.step(0)
        except (MemoryReadError, NoSuchProcess):
            pass
        if self.agent is not None:
            self.agent.refresh(force=True)
            self._add_labelled(None)
        if self.unwinder is None and self._buffered:
            # record: the process ended before it became a readable JVM; its samples cannot be named
            self.stats.dropped_early += len(self._buffered)
            self._buffered = []
        self._collect_counters()
        if self.stats.startup_s:
            self.stats.sampling_cpu_s = time.process_time() - self._started_cpu - self.stats.startup_cpu_s
        for closer in (self.sampler, self.live, self.jvm, self.agent_source):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # noqa: BLE001 - closing must not lose the profile
                    pass
        since = self._sampling_since or self._started_monotonic
        self.profile.duration_ns = int((time.monotonic() - since) * 1e9)
        self.profile.lost_samples = self.stats.lost
        self.profile.unknown_frames = self.stats.unknown_frames
        self.profile.comments.append(
            f"samples {self.stats.samples}, lost {self.stats.lost}, truncated stacks {self.stats.truncated}, "
            f"unknown frames {self.stats.unknown_frames} of {self.stats.frames}")
        return self.profile

    def _collect_counters(self) -> None:
        if self.sampler is not None:
            try:
                c = self.sampler.counters()
                self.stats.lost = c.lost + self.stats.dropped_early
                self.stats.truncated = c.truncated
                self.stats.no_user_regs = c.no_user_regs
            except Exception:  # noqa: BLE001 - the BPF maps may already be gone
                pass
        if self.unwinder is not None:
            self.stats.unknown_frames = self.unwinder.stats.unknown_total
            self.stats.frames = self.unwinder.stats.frames
            self.stats.unwind = self.unwinder.stats
        if self.live is not None:
            self.stats.code_events = self.live.counters["events"]
            self.stats.code_events_lost = self.live.lost_events
