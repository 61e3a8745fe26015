"""Which events pyprof can profile and what each needs: the one registry behind `-e`.

An *event* is what the user names and what a profile holds (ProfileData.event, a pprof sample-type
pair): cpu, wall, offcpu, alloc, lock. A *program* is BPF code compiled into the sampler's module
(an EventProgram: pyprof.sampling.events); several events may share one (wall and offcpu both read the
wall program's records). A record feeds every requested event listed for its record kind in `feeds`.

To add an event's program: put its factory in PROGRAM_FACTORIES under the name its EventSpec uses,
as ``PROGRAM_FACTORIES["alloc"] = lambda o: AllocProgram(o.alloc_interval_bytes)`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from pyprof.errors import UsageError
from pyprof.sampling.alloc import AllocProgram
from pyprof.sampling.events import EVENT_ALLOC, EVENT_CPU, EVENT_LOCK, EVENT_WALL, EventProgram
from pyprof.sampling.lock import DEFAULT_THRESHOLD_NS, LockProgram
from pyprof.sampling.wall import WallProgram


@dataclass(frozen=True)
class EventSpec:
    name: str                    # on the command line, ProfileData.event, EVENT_SAMPLE_TYPES' key
    program: Optional[str]       # the EventProgram it needs (a PROGRAM_FACTORIES key); None: cpu-clock
    feeds: tuple[int, ...]       # the record kinds (EVENT_*) that make its samples
    cpu_clock: bool              # needs the cpu-clock perf event
    help: str


EVENTS: dict[str, EventSpec] = {spec.name: spec for spec in (
    EventSpec("cpu", None, (EVENT_CPU,), True, "on-CPU samples (cpu-clock)"),
    EventSpec("wall", "wall", (EVENT_CPU, EVENT_WALL), True,
              "wall-clock time per thread: on-CPU samples + off-CPU time (sched_switch)"),
    EventSpec("offcpu", "wall", (EVENT_WALL,), False, "off-CPU time only (blocked, sleeping, waiting)"),
    EventSpec("alloc", "alloc", (EVENT_ALLOC,), False, "allocations (TLAB refills, outside-TLAB)"),
    EventSpec("lock", "lock", (EVENT_LOCK,), False, "contended monitors and parking"),
)}


# Off-CPU waits shorter than this are sampled (bpf/wall.h). Each record kept costs pyprof an unwind: at
# 10 ms a loopback HTTP server's ~20 threads sent 2,000 records a second and lost 31 % of its throughput
# on the 2-core test machine (bench/wall.py), at 50 ms see docs/performance.md.
DEFAULT_WALL_INTERVAL_NS = 50_000_000


@dataclass(frozen=True)
class EventOptions:
    """What the programs' factories may need from the command line."""

    rate_hz: int = 99
    wall_interval_ns: int = 0            # 0: DEFAULT_WALL_INTERVAL_NS
    alloc_interval_bytes: int = 512 * 1024
    lock_threshold_ns: int = DEFAULT_THRESHOLD_NS

    @property
    def wall_period_ns(self) -> int:
        return self.wall_interval_ns or DEFAULT_WALL_INTERVAL_NS


PROGRAM_FACTORIES: dict[str, Callable[[EventOptions], EventProgram]] = {
    "wall": lambda o: WallProgram(o.wall_period_ns),
    "alloc": lambda o: AllocProgram(o.alloc_interval_bytes),
    "lock": lambda o: LockProgram(o.lock_threshold_ns),
}


def available_events() -> list[str]:
    return [name for name, spec in EVENTS.items()
            if spec.program is None or spec.program in PROGRAM_FACTORIES]


def parse_events(text: str) -> tuple[str, ...]:
    """`-e cpu,wall` -> ("cpu", "wall"): known, available, no repeats, in the user's order (the first is
    the profile's default sample type)."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError("-e needs at least one event (" + ", ".join(available_events()) + ")")
    for name in names:
        spec = EVENTS.get(name)
        if spec is None:
            raise UsageError(f"unknown event {name!r} (events: {', '.join(available_events())})")
        if spec.program is not None and spec.program not in PROGRAM_FACTORIES:
            raise UsageError(f"event {name!r} is not available in this version of pyprof "
                             f"(events: {', '.join(available_events())})")
    if len(set(names)) != len(names):
        raise UsageError(f"-e {text}: an event is named twice")
    return tuple(names)


@dataclass
class EventPlan:
    """The requested events turned into what the sampler attaches and where each record goes."""

    events: tuple[str, ...]
    cpu_clock: bool
    programs: dict[str, EventProgram]          # program name -> instance (one per program)
    routes: dict[int, tuple[str, ...]]         # record kind -> the events it feeds

    def __post_init__(self) -> None:
        # looked up for every record (the per-sample path): a dict, not a scan
        self._by_record = {program.event: program for program in self.programs.values()}

    def program_for(self, record_kind: int) -> Optional[EventProgram]:
        return self._by_record.get(record_kind)

    def program_counters(self, raw: list[int]) -> dict[str, int]:
        """The event programs' own counters (wall: intervals sent, skipped, unmatched; preemptions) out of
        the sampler's raw counter array."""
        out: dict[str, int] = {}
        for program in self.programs.values():
            counters = getattr(program, "counters", None)   # optional in the EventProgram protocol
            if counters is not None:
                out.update(counters(raw))
        return out


def plan(events: tuple[str, ...], options: EventOptions) -> EventPlan:
    programs: dict[str, EventProgram] = {}
    routes: dict[int, list[str]] = {}
    for name in events:
        spec = EVENTS[name]
        if spec.program is not None and spec.program not in programs:
            programs[spec.program] = PROGRAM_FACTORIES[spec.program](options)
        for kind in spec.feeds:
            routes.setdefault(kind, []).append(name)
    return EventPlan(events, any(EVENTS[name].cpu_clock for name in events), programs,
                     {kind: tuple(names) for kind, names in routes.items()})
