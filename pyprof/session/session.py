"""One profiling run: eBPF samples + a JVM target (live code-cache map, threads, unwinder) -> ProfileData.

Two life cycles share everything else:
- attach (`ProfileSession.attach`): open the JVM first (fail fast on a non-JVM, before any BPF is
  compiled), then start the sampler.
- record: start the sampler *before* the JVM exists (`start_sampler`), point it at the child
  (`retarget`), and `open_target` once the JVM is readable. Until then samples wait in a bounded buffer
  (`EarlySamples`) and are unwound when the target opens, so the JVM's first instructions are profiled.

Order inside each step matters: samples are taken from the ring buffer *before* code-cache events are
applied, so every nmethod a sample ran in has been registered by the time it is unwound (and one freed
meanwhile is still in the live map's graveyard).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from pyprof import __version__
from pyprof.codemap.live import LiveCodeCache
from pyprof.errors import MemoryReadError, NoSuchProcess
from pyprof.hotspot.codecache import CodeCache
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.method import MethodResolver
from pyprof.hotspot.threads import JavaThreads
from pyprof.model import VIRTUAL_THREAD_LABEL, PhysicalFrame, ProfileData, StackKey
from pyprof.procfs.process import is_running
from pyprof.sampling.alloc import DEFAULT_INTERVAL as DEFAULT_ALLOC_INTERVAL
from pyprof.sampling.events import EVENT_CPU, EVENT_WALL, java_part
from pyprof.sampling.lock import DEFAULT_THRESHOLD_NS
from pyprof.sampling.programs import EventOptions, EventPlan, plan
from pyprof.sampling.sampler import (
    RINGBUF_SECONDS,
    STARTUP_RINGBUF_SECONDS,
    RawSample,
    Sampler,
    stack_window,
)
from pyprof.sampling.threadnames import ThreadNames, VirtualThreadNames
from pyprof.sampling.unwind import Unwinder, UnwindStats
from pyprof.symbols.kernel import KernelSymbols
from pyprof.symbols.native import NativeSymbolizer

if TYPE_CHECKING:
    from pyprof.agent.labels import AgentLabeler

MAX_EARLY_SAMPLES = 2_000   # raw samples kept while a recorded JVM boots: 2000 x 32 KiB = 64 MiB at most
THREADS_REFRESH_S = 0.5     # how often the JavaThreads list (tids, anchors for the BPF program) is re-read
THREAD_STATE_LABEL = "thread_state"   # wall/offcpu: the JavaThread's state at the switch ("running" on CPU)
ON_CPU_STATE = "running"


@dataclass
class ProfileOptions:
    rate_hz: int = 99
    stack_bytes: int = 32768
    force: bool = False          # sample even on kernels with the known BPF copy freeze
    agent: bool = False          # label samples with the Java agent's thread states and GC pauses
    events: tuple[str, ...] = ("cpu",)   # pyprof.sampling.programs.EVENTS keys; the first is the default
    wall_interval_ns: int = 0    # the wall program's sampling period (0: programs.DEFAULT_WALL_INTERVAL_NS)
    alloc_interval_bytes: int = DEFAULT_ALLOC_INTERVAL   # the alloc program's mean sampling distance
    lock_threshold_ns: int = DEFAULT_THRESHOLD_NS        # the lock program's shortest recorded wait

    def event_plan(self) -> EventPlan:
        return plan(self.events, EventOptions(rate_hz=self.rate_hz, wall_interval_ns=self.wall_interval_ns,
                                              alloc_interval_bytes=self.alloc_interval_bytes,
                                              lock_threshold_ns=self.lock_threshold_ns))


@dataclass(frozen=True)
class Counters:
    """How the run is going: what progress lines, `top`'s header and the final summary show."""
    samples: int            # samples unwound into the profile
    lost: int               # ring buffer full, plus samples over the early buffer
    truncated: int          # stacks deeper than the copy
    no_user_regs: int       # samples without user registers (exiting threads)
    unknown_frames: int
    frames: int

    @property
    def unknown_percent(self) -> float:
        return 100.0 * self.unknown_frames / self.frames if self.frames else 0.0

    @property
    def lost_percent(self) -> float:
        seen = self.samples + self.lost
        return 100.0 * self.lost / seen if seen else 0.0


@dataclass
class Timings:
    first_sample_s: Optional[float] = None   # from the start to the first sample
    startup_s: float = 0.0        # wall time from the start to sampling with the code-cache map live
    startup_cpu_s: float = 0.0    # pyprof's CPU for that (BPF compilation, the code-cache walk)
    startup_rss_mib: float = 0.0  # pyprof's resident memory then
    before_session_s: float = 0.0  # from the process's exec to the session (interpreter, imports, CLI)
    sampling_cpu_s: float = 0.0   # pyprof's CPU from then to the end (unwinding, aggregation)


class EarlySamples:
    """Raw samples taken before the JVM is readable (record), bounded; the excess is counted as lost."""

    def __init__(self, limit: int = MAX_EARLY_SAMPLES) -> None:
        self.limit = limit
        self.samples: list[RawSample] = []
        self.dropped = 0
        self.unwound = 0    # how many of them were unwound once the target opened

    def keep(self, raw: list[RawSample]) -> None:
        room = max(self.limit - len(self.samples), 0)
        self.samples.extend(raw[:room])
        self.dropped += max(len(raw) - room, 0)

    def take(self) -> list[RawSample]:
        samples, self.samples = self.samples, []
        self.unwound += len(samples)
        return samples

    def drop_all(self) -> None:
        """The process ended before it became a readable JVM: its samples cannot be named."""
        self.dropped += len(self.samples)
        self.samples = []


class JvmTarget:
    """What pyprof keeps per profiled JVM: the opened JVM, its live code-cache map, its threads and their
    names, and the unwinder over them."""

    def __init__(self, jvm: HotSpotJvm, live: LiveCodeCache, threads: JavaThreads, unwinder: Unwinder,
                 names: ThreadNames) -> None:
        self.jvm = jvm
        self.live = live
        self.threads = threads
        self.unwinder = unwinder
        self.names = names
        self.virtual_names = VirtualThreadNames(threads.objects.virtual_thread_name)

    @classmethod
    def open(cls, pid: int, jvm: Optional[HotSpotJvm] = None) -> JvmTarget:
        """Open the JVM and start its live code-cache map (probes first, then the walk)."""
        jvm = jvm or HotSpotJvm.open(pid)
        resolver = MethodResolver(jvm.reader, jvm.layout)
        live = LiveCodeCache(jvm, CodeCache(jvm, resolver))
        try:
            live.start(require_probes=False)
        except BaseException:
            live.close()   # the probes may be attached already when the walk fails
            jvm.close()
            raise
        threads = JavaThreads(jvm)   # read by the session's first _push_threads()
        natives = NativeSymbolizer(pid)
        natives.prepare()   # libjvm's CFI table before any sample waits for it
        unwinder = Unwinder(jvm, live.lookup, resolver, threads, natives, KernelSymbols.shared())
        return cls(jvm, live, threads, unwinder, ThreadNames(pid, java_names=threads.name))

    @property
    def description(self) -> str:
        return self.jvm.description

    def state_label(self, state: int, key: StackKey) -> tuple[tuple[str, str], ...]:
        """The `thread_state` label of a record's state (wall: the JavaThread's at the switch)."""
        if not state:
            return ()
        name = self.threads.state_name(state, (lf.name for f in key.frames for lf in f.frames))
        return ((THREAD_STATE_LABEL, name),) if name else ()

    def stack_key(self, sample: RawSample, java_only: bool = False) -> StackKey:
        try:
            frames = self.unwinder.unwind(sample, java_only)
        except MemoryReadError:
            frames = (self.unwinder.unknown_frame("unwind failed"),)
        labels: tuple[tuple[str, str], ...] = ()
        if sample.vthread:   # the virtual thread mounted on this carrier at sample time (JDK 21+)
            labels = ((VIRTUAL_THREAD_LABEL, self.virtual_names.label(sample.vthread, sample.vthread_tid)),)
        return StackKey.of(frames, self.names.name(sample.tid, sample.comm), sample.tid, labels)

    def close(self) -> None:
        for closer in (self.live, self.jvm):
            try:
                closer.close()
            except Exception:  # noqa: BLE001 - closing must not lose the profile
                pass



# Until the first sample arrives (at most this long after sampling began), the ring buffer is polled
# every FIRST_SAMPLE_POLL_MS instead of every step's 0.1 s: a busy target's first samples are in it
# within milliseconds, and an idle one costs 100 wake-ups once.
FIRST_SAMPLE_POLL_MS, FIRST_SAMPLE_WAIT_S = 10, 1.0

def _process_age_s() -> float:
    """Seconds since this process was started (/proc/self/stat's start time against CLOCK_BOOTTIME)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read(4096).rsplit(")", 1)[1].split()
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _cpu_seconds() -> float:
    """pyprof's CPU: this process's and its finished children's (the BPF compiler on a cache miss)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _resident_mib() -> float:
    """This process's resident set now (/proc/self/statm), in MiB; 0 when unreadable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read(256).split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return 0.0

class ProfileSession:
    def __init__(self, pid: int, options: Optional[ProfileOptions] = None) -> None:
        self.pid = pid
        self.options = options or ProfileOptions()
        self.plan = self.options.event_plan()
        period_ns = int(1e9 / self.options.rate_hz)
        # one profile per event, keyed by its name; `profile` is the first (the default sample type)
        self.profiles = {event: ProfileData(event=event, period_ns=period_ns) for event in self.plan.events}
        self.profile = self.profiles[self.plan.events[0]]
        self.timings = Timings()
        self.sampler: Optional[Sampler] = None
        self.target: Optional[JvmTarget] = None
        self.early = EarlySamples()
        self.agent: Optional[AgentLabeler] = None
        self.samples = 0
        self._agent_client = None
        self._started_monotonic = time.monotonic()
        self._started_cpu = _cpu_seconds()
        self.timings.before_session_s = _process_age_s()
        self._sampling_since = 0.0
        self._threads_refreshed = 0.0
        self._pushed_changes = -1        # the JavaThreads.changes last pushed to the BPF map
        self._final: Optional[Counters] = None
        self._final_code_events = (0, 0)
        self._final_event_counters: dict[str, int] = {}

    # ---- life cycles -----------------------------------------------------------------------------
    @classmethod
    def attach(cls, pid: int, options: Optional[ProfileOptions] = None) -> ProfileSession:
        """attach: the JVM first (fails fast on a non-JVM, before any BPF is compiled), then sampling.

        BPF programs are compiled one after the other: bcc's compiler is not thread-safe (two
        concurrent BPF() constructions crash the process)."""
        session = cls(pid, options)
        try:
            session.open_target()
            if session.options.agent:
                session._start_agent()
            session.start_sampler()
            session._push_threads()
        except BaseException:
            session.finish()   # release whatever was attached already (probes, BPF programs, the agent)
            raise
        session._mark_ready()
        return session

    def start_sampler(self) -> None:
        """Compile and attach the sampler (record: before the JVM exists, with target pid 0; its ring
        buffer holds seconds of samples, which wait there while the booting JVM's code-cache map is
        built: nothing drains it during the walk)."""
        buffer_s = RINGBUF_SECONDS if self.pid else STARTUP_RINGBUF_SECONDS
        self.sampler = Sampler(self.pid, rate_hz=self.options.rate_hz, stack_bytes=self.options.stack_bytes,
                               force=self.options.force, buffer_seconds=buffer_s, cpu=self.plan.cpu_clock,
                               programs=tuple(self.plan.programs.values()))
        self.sampler.start()
        # The profile covers the time samples were taken: from now (not from pyprof's own start-up).
        self._sampling_since = time.monotonic()
        for profile in self.profiles.values():
            profile.start_time_ns = time.time_ns()

    def retarget(self, pid: int) -> None:
        """Sample `pid` from now on (record: the sampler runs before the JVM exists)."""
        self.pid = pid
        if self.sampler is not None:
            self.sampler.set_target(pid)

    def open_target(self, jvm: Optional[HotSpotJvm] = None) -> None:
        """Open the JVM and its code-cache map; unwind the samples that waited for it (record)."""
        self.target = JvmTarget.open(self.pid, jvm)
        self.profile.comments += [
            f"pyprof {__version__}",
            f"JVM: {self.target.description}",
            f"pid {self.pid}, cpu-clock at {self.options.rate_hz} Hz, "
            f"{stack_window(self.options.stack_bytes)} B stack copies",
        ]
        if self.plan.events != ("cpu",):
            self.profile.comments.append(f"events {','.join(self.plan.events)}")
        self._push_threads()
        self._process(self.early.take())
        if self.sampler is not None:   # record: the sampler ran while the JVM booted
            self._mark_ready()

    def _start_agent(self) -> None:
        """Load (or reuse) the Java agent; its labels are optional, its failure to load is not silent."""
        from pyprof.agent.control import connect_agent
        from pyprof.agent.labels import AgentLabeler

        self._agent_client = connect_agent(self.pid).client
        self.agent = AgentLabeler(self._agent_client)
        self.agent.refresh(force=True)

    def _mark_ready(self) -> None:
        """Start-up is over: the sampler runs and the code-cache map is live."""
        self.timings.startup_s = time.monotonic() - self._started_monotonic
        self.timings.startup_cpu_s = _cpu_seconds() - self._started_cpu
        self.timings.startup_rss_mib = _resident_mib()

    # ---- the step --------------------------------------------------------------------------------
    def step(self, timeout_ms: int = 100) -> int:
        """Take what the ring buffer has (waiting up to timeout_ms); returns samples taken."""
        assert self.sampler is not None
        if self.timings.first_sample_s is None and \
                time.monotonic() - self._sampling_since < FIRST_SAMPLE_WAIT_S:
            timeout_ms = min(timeout_ms, FIRST_SAMPLE_POLL_MS)   # the first one out without a 0.1-s wait
        raw = self.sampler.poll(timeout_ms)
        if raw and self.timings.first_sample_s is None:
            self.timings.first_sample_s = time.monotonic() - self._started_monotonic
        if self.target is None:
            self.early.keep(raw)
            return len(raw)
        self.target.live.poll(0)
        self._process(raw)
        if time.monotonic() - self._threads_refreshed > THREADS_REFRESH_S:
            self._push_threads()
        return len(raw)

    def _push_threads(self) -> None:
        """Re-read the JVM's threads (new ones appear, names change) and tell the BPF program where each
        keeps its last Java frame. The one place the thread list is refreshed."""
        self._threads_refreshed = time.monotonic()
        if self.target is None:
            return
        threads = self.target.threads
        threads.refresh()
        if self.sampler is not None and threads.changes != self._pushed_changes:
            self.sampler.set_java_threads(threads.anchor_addresses())
            self._pushed_changes = threads.changes

    def _process(self, raw: list[RawSample]) -> None:
        if not raw:
            return
        assert self.target is not None
        if self.plan.events == ("cpu",):
            self._process_cpu(raw)
        else:
            for sample in raw:
                self._route(sample)
            if self.agent is not None:
                self.agent.refresh()
                self._add_labelled(time.monotonic_ns())
        self.samples += len(raw)

    def _process_cpu(self, raw: list[RawSample]) -> None:
        """CPU alone (the common case), without the routing."""
        assert self.target is not None
        stack_key = self.target.stack_key
        if self.agent is None:
            add = self.profile.add
            for sample in raw:
                add(stack_key(sample))
        else:
            for sample in raw:
                self.agent.hold(sample.time_ns, stack_key(sample))
            self.agent.refresh()
            self._add_labelled(time.monotonic_ns())

    def _route(self, sample: RawSample) -> None:
        """One record into every requested event it feeds (pyprof.sampling.programs.EVENTS)."""
        assert self.target is not None
        route_record(self.plan, self.target, self.profiles, sample,
                     self.agent.hold if self.agent is not None else None)

    def _add_labelled(self, now_ns: Optional[int]) -> None:
        assert self.agent is not None
        cpu = self.profiles.get("cpu", self.profile)
        for key in self.agent.release(now_ns):
            cpu.add(key)

    # ---- what views need -------------------------------------------------------------------------
    @property
    def description(self) -> str:
        """The JVM, as the profile's comments and `top` name it."""
        return self.target.description if self.target is not None else "starting JVM"

    @property
    def jvm_notes(self) -> list[str]:
        """What this JVM's version does not let pyprof decode (said once; empty when everything works)."""
        return self.target.jvm.notes if self.target is not None else []

    @property
    def unwind_stats(self) -> UnwindStats:
        return self.target.unwinder.stats if self.target is not None else UnwindStats()

    @property
    def degraded_code_map(self) -> str:
        """Why the code-cache map has no live probes ("" when it has them)."""
        return self.target.live.degraded if self.target is not None else ""

    def counters(self) -> Counters:
        """Counters now (live BPF counters while running; the final ones after finish())."""
        if self._final is not None:
            return self._final
        lost = truncated = no_regs = 0
        if self.sampler is not None:
            try:
                c = self.sampler.counters()
                lost, truncated, no_regs = c.lost, c.truncated, c.no_user_regs
            except Exception:  # noqa: BLE001 - the BPF maps may already be gone
                pass
        u = self.unwind_stats
        return Counters(self.samples, lost + self.early.dropped, truncated, no_regs, u.unknown_total,
                        u.frames)

    def event_counters(self) -> dict[str, int]:
        """The event programs' own counters (wall: intervals sent, skipped, unmatched; preemptions)."""
        if self._final is not None:
            return self._final_event_counters
        if self.sampler is None or not self.plan.programs:
            return {}
        try:
            raw = self.sampler.raw_counters()
        except Exception:  # noqa: BLE001 - the BPF maps may already be gone
            return {}
        return self.plan.program_counters(raw)

    def code_events(self) -> tuple[int, int]:
        """(code-cache events applied, events lost)."""
        if self._final is not None:
            return self._final_code_events
        if self.target is None:
            return 0, 0
        return self.target.live.counters["events"], self.target.live.lost_events

    def target_alive(self) -> bool:
        return is_running(self.pid)

    # ---- the end ---------------------------------------------------------------------------------
    def finish(self) -> ProfileData:
        """Drain what is left, close everything, fill in the profile's totals. Safe to call twice."""
        if self._final is not None:
            return self.profile
        # The profile's window ends at the last drain: what the programs send while it is unwound is
        # never read (off-CPU time would be missing from a window that also covered it).
        ended = time.monotonic()
        try:
            if self.sampler is not None and self.target is not None:
                self.step(0)
        except (MemoryReadError, NoSuchProcess):
            pass
        if self.agent is not None:
            self.agent.refresh(force=True)
            self._add_labelled(None)
        if self.target is None:
            self.early.drop_all()
        final = self.counters()
        code_events = self.code_events()
        event_counters = self.event_counters()
        if self.timings.startup_s:
            self.timings.sampling_cpu_s = (_cpu_seconds() - self._started_cpu
                                           - self.timings.startup_cpu_s)
        for closer in (self.sampler, self.target, self._agent_client):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # noqa: BLE001 - closing must not lose the profile
                    pass
        self._final = final
        self._final_code_events = code_events
        self._final_event_counters = event_counters
        since = self._sampling_since or self._started_monotonic
        self.profile.comments.append(
            f"samples {final.samples}, lost {final.lost}, truncated stacks {final.truncated}, "
            f"unknown frames {final.unknown_frames} of {final.frames}")
        if event_counters:
            self.profile.comments.append(" ".join(f"{k}={v}" for k, v in event_counters.items()))
        for profile in self.profiles.values():
            profile.duration_ns = int((ended - since) * 1e9)
            profile.lost_samples = final.lost
            profile.unknown_frames = final.unknown_frames
            profile.frames = final.frames
            if profile is not self.profile:
                profile.comments = list(self.profile.comments)
        return self.profile


def _with_labels(key: StackKey, labels: tuple[tuple[str, str], ...]) -> StackKey:
    if not labels:
        return key
    return StackKey(key.frames, key.thread_name, key.tid, tuple(sorted((*key.labels, *labels))))


def route_record(plan: EventPlan, target: JvmTarget, profiles: dict[str, ProfileData], sample: RawSample,
                 hold_cpu: Optional[Callable[[int, StackKey], None]] = None) -> None:
    """One record of `target` into every profile of `profiles` (event -> profile) that it feeds: the
    session's and the daemon's (a window per JVM) one path. `hold_cpu`: where a cpu sample goes instead
    of its profile (the Java agent's labeller, which adds it once it knows the thread's labels)."""
    events = plan.routes.get(sample.event, ())
    if not events:
        return
    program = plan.program_for(sample.event)
    pair = getattr(program, "pair", None)   # a program whose event spans two records (wall)
    if pair is not None:
        paired = pair(sample)
        if paired is None:
            return
        sample = paired
    java_only = getattr(program, "java_leaf_only", False)
    key = target.stack_key(sample, java_only)
    if sample.event == EVENT_CPU:
        for event in events:
            if event == "cpu":
                if hold_cpu is not None:
                    hold_cpu(sample.time_ns, key)
                else:
                    profiles[event].add(key)
            else:   # wall: an on-CPU sample is one period of the thread's wall-clock time
                labelled = _with_labels(key, ((THREAD_STATE_LABEL, ON_CPU_STATE),))
                profiles[event].add(labelled, 1, profiles[event].period_ns)
        return
    if program is None:
        return
    count, weight = program.values(sample)
    leaf = program.leaf_frames(sample, target.jvm)
    frames = java_part(key.frames) if java_only else key.frames
    if leaf or frames is not key.frames:
        key = StackKey(((PhysicalFrame(0, leaf),) if leaf else ()) + frames, key.thread_name, key.tid,
                       key.labels)
    # `state` is the JavaThread's state in wall records; alloc and lock use it for their own values
    state = target.state_label(sample.state, key) if sample.event == EVENT_WALL else ()
    key = _with_labels(key, (*program.labels(sample), *state))
    for event in events:
        profiles[event].add(key, count, weight)
