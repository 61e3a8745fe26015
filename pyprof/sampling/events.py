"""The events pyprof samples besides CPU time, as programs compiled into the sampler's BPF module.

Every event's record has the CPU sample's layout (bpf/sampler.c: registers, stack copy, JavaThread
anchor) so that one unwinder serves them all; the record's `event` says which program took it, and
`weight`, `detail` and `state` carry the event's own values. One module (one clang run, one ring buffer,
one `targets` map) keeps start-up and memory as they are for CPU alone.

An EventProgram contributes its C (bpf/<name>.h, compiled in by its -D flag), attaches it, and turns a
record into sample values: `count` and `weight` of the event's two pprof sample types
(pyprof.model.EVENT_SAMPLE_TYPES), plus leaf frames (alloc: the allocated class) and labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pyprof.model import FrameKind, PhysicalFrame

if TYPE_CHECKING:
    from pyprof.hotspot.jvm import HotSpotJvm
    from pyprof.model import LogicalFrame
    from pyprof.sampling.sampler import RawSample

EVENT_CPU, EVENT_WALL, EVENT_ALLOC, EVENT_LOCK = 0, 1, 2, 3
EVENT_NAMES = {EVENT_CPU: "cpu", EVENT_WALL: "wall", EVENT_ALLOC: "alloc", EVENT_LOCK: "lock"}


JAVA_KINDS = frozenset({FrameKind.INTERPRETED, FrameKind.C1, FrameKind.C2, FrameKind.INLINED,
                        FrameKind.NATIVE_METHOD})


def java_part(frames: tuple[PhysicalFrame, ...]) -> tuple[PhysicalFrame, ...]:
    """The stack (leaf first) from its innermost Java frame on: what a program with `java_leaf_only`
    keeps, so that its leaf frames go right under the Java method (alloc: the allocating one, not the
    JVM's allocation path). A stack without Java frames is kept whole (the same tuple)."""
    for i, frame in enumerate(frames):
        if frame.frames and frame.frames[-1].kind in JAVA_KINDS:
            return frames[i:]
    return frames


class EventProgram(Protocol):
    """One event's part of the sampler's BPF module (wall, alloc, lock).

    Optional members, read with getattr where used: `java_leaf_only` (bool: the session keeps only the
    stack's java_part()), `records_per_second` (int: sizes the shared ring buffer), `pair(sample)`
    (an event that spans two records: the joined record, or None while waiting for its other half) and
    `counters(raw)` (the program's named counters for the summary)."""

    event: int          # EVENT_*: the records it sends
    name: str           # "wall", "alloc", "lock": the event's name on the command line and in outputs

    def cflags(self) -> list[str]:
        """-D flags that compile its program into bpf/sampler.c (-DEVENT_<NAME>_PROGRAM and its own)."""

    def attach(self, bpf) -> None:
        """Attach what serves every target (a tracepoint); called once, after the module is loaded."""

    def add_target(self, bpf, pid: int) -> None:
        """Attach what is per process (uprobes on that JVM's libjvm)."""

    def remove_target(self, bpf, pid: int) -> None:
        """Detach what add_target attached (the JVM exited or the daemon stopped watching it)."""

    def values(self, sample: RawSample) -> tuple[int, int]:
        """The record's (count, weight): the values of the event's two sample types (an estimate of all
        events when the program samples them: a 512 KiB interval stands for 512 KiB of allocation)."""

    def leaf_frames(self, sample: RawSample, jvm: HotSpotJvm) -> tuple[LogicalFrame, ...]:
        """Frames placed under the stack's leaf (alloc: the allocated class; lock: the monitor's class);
        () when none."""

    def labels(self, sample: RawSample) -> tuple[tuple[str, str], ...]:
        """Labels of the sample (wall: the thread state at the switch)."""
