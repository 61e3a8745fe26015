"""The profile data model shared by the unwinder, the aggregator and every output format.

A sample is a stack of *physical* frames (one per machine frame, leaf first). A physical frame of JIT
code can stand for several *logical* Java frames (the inlining chain, innermost first), which is what
pprof expresses as one Location with several Line entries.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple, Optional


class _HashedOnce:
    """Frozen dataclasses whose hash is computed once, at construction: stacks are aggregated per
    sample (the hot path) and would otherwise re-hash every nested frame every time. Subclasses list
    the fields in _hash_fields() and set `__hash__ = _HashedOnce.__hash__`; equality stays the
    dataclass's."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self._hash_fields()))

    def _hash_fields(self) -> tuple:
        raise NotImplementedError

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]


class FrameKind(str, enum.Enum):
    INTERPRETED = "interpreted"
    C1 = "c1"              # tiers 1-3
    C2 = "c2"              # tier 4
    INLINED = "inlined"    # a Java method inlined into a compiled frame
    NATIVE_METHOD = "jni"  # a Java `native` method's wrapper / JNI code
    JVM_STUB = "stub"      # interpreter entry, call stub, adapters, runtime stubs
    NATIVE = "native"      # C/C++: libjvm, libc, JNI libraries
    KERNEL = "kernel"
    THREAD = "thread"      # synthetic root frame naming the thread (optional)
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Mapping:
    """An executable mapping of the target (pprof Mapping)."""

    start: int
    limit: int
    offset: int
    filename: str
    build_id: str = ""


@dataclass(frozen=True)
class LogicalFrame(_HashedOnce):
    """One function as a user reads it in a stack trace."""

    name: str                 # "java.util.HashMap.get", "memcpy", "do_syscall_64"
    kind: FrameKind
    system_name: str = ""     # Java: name with descriptor, "java.util.HashMap.get(Ljava/lang/Object;)..."
    filename: str = ""        # "HashMap.java", "/usr/lib/.../libc.so.6"
    line: int = 0             # 0 = unknown
    osr: bool = False         # compiled code of an on-stack-replacement nmethod (entered in a loop)

    def _hash_fields(self) -> tuple:
        return self.name, self.kind, self.system_name, self.filename, self.line, self.osr

    __hash__ = _HashedOnce.__hash__   # a frozen dataclass replaces any __hash__ not in its own body


@dataclass(frozen=True)
class PhysicalFrame(_HashedOnce):
    """One machine frame: an address, and the logical frames it stands for (innermost first)."""

    address: int
    frames: tuple[LogicalFrame, ...]
    mapping: Optional[Mapping] = None

    def _hash_fields(self) -> tuple:
        return self.address, self.frames, self.mapping

    __hash__ = _HashedOnce.__hash__   # a frozen dataclass replaces any __hash__ not in its own body


VIRTUAL_THREAD_LABEL = "virtual_thread"   # the virtual thread mounted on the carrier `thread` (JDK 21+)


@dataclass(frozen=True)
class StackKey(_HashedOnce):
    """What makes two samples the same for aggregation."""

    frames: tuple[PhysicalFrame, ...]   # leaf first
    thread_name: str
    tid: int
    labels: tuple[tuple[str, str], ...] = ()   # more sample labels, sorted (e.g. from the Java agent)

    def _hash_fields(self) -> tuple:
        return self.frames, self.thread_name, self.tid, self.labels

    @classmethod
    def of(cls, frames: tuple[PhysicalFrame, ...], thread_name: str, tid: int,
           labels: tuple[tuple[str, str], ...] = ()) -> StackKey:
        """StackKey(...) for the per-sample hot path: the same object, filled through its __dict__
        instead of the frozen dataclass's field-by-field __init__."""
        key = object.__new__(cls)
        object.__setattr__(key, "__dict__", {"frames": frames, "thread_name": thread_name, "tid": tid,
                                             "labels": labels,
                                             "_hash": hash((frames, thread_name, tid, labels))})
        return key

    @property
    def virtual_thread(self) -> Optional[str]:
        """The virtual thread's name (or `#<id>`) when a virtual thread was mounted, else None."""
        for name, value in self.labels:
            if name == VIRTUAL_THREAD_LABEL:
                return value
        return None

    __hash__ = _HashedOnce.__hash__   # a frozen dataclass replaces any __hash__ not in its own body


class SampleType(NamedTuple):
    """A pprof sample type: what a value counts and in which unit."""

    type: str
    unit: str


# Each event's two values: how many (samples, objects, contentions) and how much (ns, bytes). The
# names are the ones pprof clients know (Go's alloc_space, contentions, delay; Pyroscope maps them to
# memory, mutex and block); cpu's stay samples/cpu, which every pprof tool expects of a CPU profile.
EVENT_SAMPLE_TYPES: dict[str, tuple[SampleType, SampleType]] = {
    "cpu": (SampleType("samples", "count"), SampleType("cpu", "nanoseconds")),
    "wall": (SampleType("wall_samples", "count"), SampleType("wall", "nanoseconds")),
    "offcpu": (SampleType("offcpu_samples", "count"), SampleType("offcpu", "nanoseconds")),
    "alloc": (SampleType("alloc_objects", "count"), SampleType("alloc_space", "bytes")),
    "lock": (SampleType("contentions", "count"), SampleType("delay", "nanoseconds")),
}


@dataclass
class ProfileData:
    """Aggregated samples of one event plus what a complete pprof needs around them.

    `counts` holds the event's first value (samples, objects, contentions) per stack; `weights` its
    second (ns, bytes). A CPU profile leaves `weights` empty: its second value is counts x period."""

    counts: dict[StackKey, int] = field(default_factory=dict)
    event: str = "cpu"                   # a key of EVENT_SAMPLE_TYPES (pyprof.sampling.programs.EVENTS)
    weights: dict[StackKey, int] = field(default_factory=dict)
    counted: str = ""                    # "wall/nanoseconds": what counts hold when read by sample type
    period_ns: int = 10_101_010          # cpu-clock period: 1e9 / rate
    start_time_ns: int = 0               # wall clock, ns since the epoch
    duration_ns: int = 0
    comments: list[str] = field(default_factory=list)
    lost_samples: int = 0
    unknown_frames: int = 0
    frames: int = 0                      # frames unwound (unknown_frames is a part of them)

    def add(self, key: StackKey, count: int = 1, weight: int = 0) -> None:
        self.counts[key] = self.counts.get(key, 0) + count
        if weight:
            self.weights[key] = self.weights.get(key, 0) + weight

    @property
    def sample_types(self) -> tuple[SampleType, SampleType]:
        return EVENT_SAMPLE_TYPES[self.event]

    def weight(self, key: StackKey) -> int:
        """The stack's second value (cpu: its samples x the period)."""
        if self.event == "cpu":
            return self.counts.get(key, 0) * self.period_ns
        return self.weights.get(key, 0)

    @property
    def total_samples(self) -> int:
        return sum(self.counts.values())

    def self_counts(self) -> Counter:
        """Samples per innermost non-kernel function (its plain name, no tier): the "top self" of a
        run's summary. Computed from the aggregated stacks, not per sample."""
        out: Counter = Counter()
        for key, count in self.counts.items():
            leaf = next((f.frames[0] for f in key.frames if f.frames[0].kind is not FrameKind.KERNEL),
                        key.frames[0].frames[0] if key.frames else None)
            if leaf is not None:
                out[leaf.name] += count
        return out


# The JIT tier of every Java frame is part of its displayed name in every output format (a product
# decision: "is this hot method still interpreted?" must be answerable from any view). Kinds that are
# not Java methods keep their plain names.
TIER_SUFFIX: dict[FrameKind, str] = {
    FrameKind.INTERPRETED: "[interp]",
    FrameKind.C1: "[C1]",
    FrameKind.C2: "[C2]",
    FrameKind.INLINED: "[inlined]",
    FrameKind.NATIVE_METHOD: "[jni]",
}
_KIND_OF_SUFFIX: dict[str, FrameKind] = {suffix: kind for kind, suffix in TIER_SUFFIX.items()}


OSR_SUFFIX = " OSR]"   # "[C2]" of an OSR nmethod reads "[C2 OSR]"


def display_name(frame: LogicalFrame, tiers: bool = True) -> str:
    """The name shown to users: `java.util.HashMap.get [C2]`, `Foo.loop [C2 OSR]`, or the plain name."""
    suffix = TIER_SUFFIX.get(frame.kind) if tiers else None
    if suffix and frame.osr:
        suffix = suffix[:-1] + OSR_SUFFIX
    return f"{frame.name} {suffix}" if suffix else frame.name


def split_display_name(text: str) -> tuple[str, Optional[FrameKind], bool]:
    """The inverse of display_name: (plain name, kind, osr) when `text` ends with a tier suffix, else
    (text, None, False)."""
    osr = text.endswith(OSR_SUFFIX)
    core = text[: -len(OSR_SUFFIX)] + "]" if osr else text
    name, sep, suffix = core.rpartition(" ")
    kind = _KIND_OF_SUFFIX.get(suffix) if sep else None
    return (name, kind, osr) if kind is not None else (text, None, False)
