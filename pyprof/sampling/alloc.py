"""`-e alloc`: where the JVM allocates, by class and call site (bpf/alloc.h).

Each record is a sampled TLAB refill or allocation outside a TLAB; the allocated class becomes the leaf
frame under the allocating stack, so a flame graph shows who allocates what.

Weighting (Go's pprof, runtime/pprof's scaleHeapSample): the BPF program samples an event of S bytes
with probability p = 1 - exp(-S / interval) (an exponentially distributed distance between samples,
per thread), so a record stands for S / p bytes and, for objects of o bytes, (S / o) / p objects. The
sums are unbiased estimates of every byte and object the JVM reported, whatever the sizes: a big
array (p near 1) counts once, a small object's TLAB refill counts for the refills that were not
sampled. async-profiler's `--alloc` (a fixed threshold, weight = bytes since the last sample) gives the
same totals but lets a periodic allocation pattern alias with the threshold; JFR's
ObjectAllocationSample weighs by bytes since the thread's last sample, like async-profiler.
"""

from __future__ import annotations

import ctypes
import math
from typing import TYPE_CHECKING

from pyprof.errors import MemoryReadError
from pyprof.hotspot.method import MethodResolver
from pyprof.model import FrameKind, LogicalFrame
from pyprof.sampling.events import EVENT_ALLOC
from pyprof.sampling.uprobes import LibjvmUprobes

if TYPE_CHECKING:
    from pyprof.hotspot.jvm import HotSpotJvm
    from pyprof.sampling.sampler import RawSample

DEFAULT_INTERVAL = 512 * 1024      # bytes, like `asprof --alloc 512k`
ALLOC_QUANTILES = 1024             # bpf/alloc.h's table of sampling distances
C_ALLOC_EVENTS, C_ALLOC_SAMPLES = 8, 9
UNKNOWN_CLASS = "[unknown class]"
MAX_JVMS = 1024                    # class-name readers kept (one per JVM the daemon watches)


def exponential_quantiles(interval: int, n: int = ALLOC_QUANTILES) -> list[int]:
    """n equiprobable distances of an exponential distribution of mean `interval` (bytes): a random
    index into them is the BPF program's draw of the bytes to the next sample."""
    if interval <= 1:
        return [0] * n     # every event sampled
    return [max(1, round(-math.log(1.0 - (i + 0.5) / n) * interval)) for i in range(n)]


def parse_interval(text: str) -> int:
    """"512k", "1m", "100000" -> bytes (the `--alloc-interval` syntax of async-profiler's --alloc)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    scale = units.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in units else text
    if not digits.isdigit():
        raise ValueError(f"not a byte count: {text!r} (e.g. 512k, 1m, 100000)")
    return int(digits) * scale


class ClassNames:
    """Klass* -> Java class name, per JVM (through that JVM's MethodResolver caches)."""

    def __init__(self) -> None:
        self._resolvers: dict[int, tuple[HotSpotJvm, MethodResolver]] = {}
        self.unknown = 0     # records whose class could not be read

    def frame(self, klass: int, jvm: HotSpotJvm) -> LogicalFrame:
        resolver = self._resolver(jvm)
        try:
            name = resolver.class_name(klass)
        except MemoryReadError:
            self.unknown += 1
            return LogicalFrame(UNKNOWN_CLASS, FrameKind.UNKNOWN)
        return _class_frame(name)

    def _resolver(self, jvm: HotSpotJvm) -> MethodResolver:
        held = self._resolvers.get(jvm.pid)
        if held is None or held[0] is not jvm:
            if len(self._resolvers) >= MAX_JVMS:
                self._resolvers.clear()
            held = (jvm, MethodResolver(jvm.reader, jvm.layout))
            self._resolvers[jvm.pid] = held
        return held[1]

    def forget(self, pid: int) -> None:
        self._resolvers.pop(pid, None)


_FRAMES: dict[str, LogicalFrame] = {}


def _class_frame(name: str) -> LogicalFrame:
    """The leaf frame naming a class. FrameKind.NATIVE, not a kind of its own: the reporters and the
    pprof reader know every kind there is, and a plain name without a mapping reads back from a pprof
    as NATIVE, so the frame survives a round trip unchanged; its name (`byte[]`, `java.lang.String`)
    says what it is."""
    frame = _FRAMES.get(name)
    if frame is None:
        if len(_FRAMES) > 100_000:
            _FRAMES.clear()
        frame = _FRAMES[name] = LogicalFrame(name, FrameKind.NATIVE)
    return frame


class AllocProgram:
    """The EventProgram of `-e alloc` (pyprof.sampling.events)."""

    event = EVENT_ALLOC
    name = "alloc"
    # Only the Java part of the stack is the allocation site (events.java_part()): the JVM's allocation path
    # under it (OptoRuntime::new_array_C, MemAllocator, AllocTracer, ...) would stand between the
    # class and the method that allocated it, in a handful of variants per site.
    java_leaf_only = True
    # Records a second to size the ring buffer for (the sampler sizes it from rate_hz): about one per
    # TLAB refill of a busy allocating thread; AllocSites sends ~1,400/s unloaded at 512 KiB
    records_per_second = 2000

    def __init__(self, interval: int = DEFAULT_INTERVAL) -> None:
        if interval < 0:
            raise ValueError("the allocation interval is a byte count >= 0")
        self.interval = interval
        self.uprobes = LibjvmUprobes("alloc", ("on_alloc_in_new_tlab", "on_alloc_outside_tlab"))
        self.classes = ClassNames()

    def cflags(self) -> list[str]:
        return ["-DEVENT_ALLOC_PROGRAM", f"-DALLOC_INTERVAL={max(self.interval, 1)}"]

    def attach(self, bpf) -> None:
        table = bpf["alloc_intervals"]
        for i, distance in enumerate(exponential_quantiles(self.interval)):
            table[ctypes.c_int(i)] = ctypes.c_uint64(distance)

    def add_target(self, bpf, pid: int) -> None:
        self.uprobes.attach(bpf, pid)

    def remove_target(self, bpf, pid: int) -> None:
        self.uprobes.detach(bpf, pid)
        self.classes.forget(pid)

    def values(self, sample: RawSample) -> tuple[int, int]:
        """(objects, bytes) the record stands for: its event's bytes and objects over the probability
        that the event was sampled."""
        event_bytes = sample.weight
        object_bytes = sample.state or event_bytes
        if event_bytes <= 0:
            return 1, 0
        scale = 1.0
        if self.interval > 1:
            scale = 1.0 / -math.expm1(-event_bytes / self.interval)
        objects = max(1, round(event_bytes / max(object_bytes, 1) * scale))
        return objects, round(event_bytes * scale)

    def leaf_frames(self, sample: RawSample, jvm: HotSpotJvm) -> tuple[LogicalFrame, ...]:
        return (self.classes.frame(sample.detail, jvm),)

    def labels(self, sample: RawSample) -> tuple[tuple[str, str], ...]:
        return ()

    def counters(self, raw_counters: list[int]) -> dict[str, int]:
        """What the run cost and lost (Sampler.raw_counters()): uprobe hits, records, unnamed classes."""
        return {"alloc_events": raw_counters[C_ALLOC_EVENTS], "alloc_samples": raw_counters[C_ALLOC_SAMPLES],
                "alloc_unknown_classes": self.classes.unknown}
