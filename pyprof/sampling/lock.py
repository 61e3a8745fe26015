"""`-e lock`: who waits on which lock, and for how long (bpf/lock.h).

A record is one contended Java monitor entry or one LockSupport.park that lasted at least the threshold
(default 10 us); its values are `contentions` (1) and `delay` (the ns waited). A monitor's leaf frame
names the class of the monitor's object (`java.util.HashMap`, `pyproftest.LockSites$Monitor`); a
park's has none (the object a thread parks for, Thread.parkBlocker, is not read: the stack above,
ReentrantLock.lock <- AbstractQueuedSynchronizer.acquire <- LockSupport.park, says which kind of lock).
Every wait over the threshold is recorded (no sampling): as JFR's JavaMonitorEnter and ThreadPark, whose
default threshold is 20 ms.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from pyprof.errors import MemoryReadError, PyprofError
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.model import FrameKind, LogicalFrame
from pyprof.sampling.alloc import ClassNames
from pyprof.sampling.events import EVENT_LOCK
from pyprof.sampling.uprobes import LibjvmUprobes

if TYPE_CHECKING:
    from pyprof.sampling.sampler import RawSample

DEFAULT_THRESHOLD_NS = 10_000
LOCK_MONITOR, LOCK_PARK = 1, 2
LOCK_KINDS = {LOCK_MONITOR: "monitor", LOCK_PARK: "park"}
LOCK_LABEL = "lock"      # the sample label saying which kind of wait it was
C_MONITOR_ENTRIES, C_PARKS, C_RECORDS, C_UNMATCHED = 12, 13, 14, 15
KLASS_WORD_OFFSET = 8    # oopDesc: the mark word, then the klass (when VMStructs does not say)
MARK_WORD_OFFSET = 0     # oopDesc::_mark, the first word of every object


def monitor_class_layout(jvm: HotSpotJvm) -> tuple[int, ...] | None:
    """bpf/lock.h's struct lock_layout for this JVM: where a monitor's object and that object's klass
    are; None when they cannot be read (then monitors carry no class). Read from VMStructs: nothing
    here depends on the JDK version except that ObjectMonitor::_object became a WeakHandle in 16, the
    release in which JavaThread::_threadObj became an OopHandle (Layout.thread_obj_is_handle), and that
    compact object headers (25, opt-in) keep the narrow klass in the mark word's upper bits
    (Layout.mark_word_klass_shift)."""
    lay = jvm.layout
    if not lay.has("ObjectMonitor._object"):
        return None
    compact = bool(jvm.flags.get("UseCompactObjectHeaders"))
    mark_shift = lay.mark_word_klass_shift(compact)
    # the klass bits survive in the mark word of a locked object only with the monitor table (compact
    # headers switch it on; a JVM that says otherwise gets no classes rather than wrong ones)
    if compact and (mark_shift is None or jvm.flags.get("UseObjectMonitorTable") is False):
        return None
    narrow = compact or jvm.flags.get("UseCompressedClassPointers", True)
    base = shift = 0
    if narrow:
        if not (lay.has("CompressedKlassPointers._base") and lay.has("CompressedKlassPointers._shift")):
            return None
        try:
            base = jvm.reader.ptr(lay["CompressedKlassPointers._base"].address)
            shift = jvm.reader.i32(lay["CompressedKlassPointers._shift"].address)
        except MemoryReadError:
            return None
        if not 0 <= shift <= 32:
            return None
    key = "oopDesc._compressed_klass" if narrow else "oopDesc._klass"
    klass_offset = lay.offset(key) if lay.has(key) else KLASS_WORD_OFFSET
    if mark_shift is not None:
        klass_offset = MARK_WORD_OFFSET
    return (lay.offset("ObjectMonitor._object"), int(lay.thread_obj_is_handle), klass_offset, int(narrow),
            base, shift, mark_shift or 0)


class LockProgram:
    """The EventProgram of `-e lock` (pyprof.sampling.events)."""

    event = EVENT_LOCK
    name = "lock"
    java_leaf_only = False   # the JVM's frames say how it waited (ObjectSynchronizer, Unsafe_Park)
    records_per_second = 1000   # to size the ring buffer: waits of >= 10 us, LockSites sends ~200/s

    def __init__(self, threshold_ns: int = DEFAULT_THRESHOLD_NS) -> None:
        if threshold_ns < 0:
            raise ValueError("the lock threshold is a duration >= 0")
        self.threshold_ns = threshold_ns
        self.uprobes = LibjvmUprobes("lock", ("on_monitor_enter", "on_park"),
                                     return_functions=("on_monitor_enter", "on_park"))
        self.classes = ClassNames()
        self.monitor_classes: dict[int, bool] = {}   # pid -> whether its monitors' classes are read

    def cflags(self) -> list[str]:
        return ["-DEVENT_LOCK_PROGRAM", f"-DLOCK_THRESHOLD_NS={self.threshold_ns}"]

    def attach(self, bpf) -> None:
        pass   # everything is per JVM

    def add_target(self, bpf, pid: int) -> None:
        self.uprobes.attach(bpf, pid)
        layout = None
        try:
            with HotSpotJvm.open(pid) as jvm:
                layout = monitor_class_layout(jvm)
        except (PyprofError, MemoryReadError):
            layout = None   # the waits are still recorded, without their monitors' classes
        self.monitor_classes[pid] = layout is not None
        if layout is not None:
            table = bpf["lock_layouts"]
            table[ctypes.c_uint32(pid)] = table.Leaf(*layout)

    def remove_target(self, bpf, pid: int) -> None:
        self.uprobes.detach(bpf, pid)
        self.classes.forget(pid)
        self.monitor_classes.pop(pid, None)
        try:
            del bpf["lock_layouts"][ctypes.c_uint32(pid)]
        except KeyError:
            pass

    def values(self, sample: RawSample) -> tuple[int, int]:
        return 1, sample.weight

    def leaf_frames(self, sample: RawSample, jvm: HotSpotJvm) -> tuple[LogicalFrame, ...]:
        if sample.state != LOCK_MONITOR:
            return ()
        if not sample.detail:
            self.classes.unknown += 1
            return (LogicalFrame("[unknown class]", FrameKind.UNKNOWN),)
        return (self.classes.frame(sample.detail, jvm),)

    def labels(self, sample: RawSample) -> tuple[tuple[str, str], ...]:
        kind = LOCK_KINDS.get(sample.state)
        return ((LOCK_LABEL, kind),) if kind else ()

    def counters(self, raw_counters: list[int]) -> dict[str, int]:
        """Monitor entries and parks seen, waits recorded, returns without an entry, unnamed classes."""
        return {"monitor_entries": raw_counters[C_MONITOR_ENTRIES], "parks": raw_counters[C_PARKS],
                "lock_records": raw_counters[C_RECORDS], "lock_unmatched": raw_counters[C_UNMATCHED],
                "lock_unknown_classes": self.classes.unknown}
