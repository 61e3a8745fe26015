"""Virtual-thread labels away from the JVM: the name cache (keyed by Thread.tid, checked against moved
objects), views and --thread, the pprof round trip and the agent's labels.

The real path (BPF reads at sample time, a JDK 21/25 workload) is tests/integration/test_virtual_threads.py.
"""

from __future__ import annotations

from typing import Optional

from pyprof.agent.labels import AgentLabeler
from pyprof.model import VIRTUAL_THREAD_LABEL, FrameKind, LogicalFrame, PhysicalFrame, ProfileData, StackKey
from pyprof.output.pprof import encode, read_pprof
from pyprof.reporters.aggregate import build_tree, filter_profile, thread_label
from pyprof.sampling.threadnames import VirtualThreadNames

SPIN = PhysicalFrame(0x100, (LogicalFrame("spin", FrameKind.C2, filename="V.java"),))


def vkey(carrier: str, virtual: Optional[str], tid: int = 7) -> StackKey:
    labels = ((VIRTUAL_THREAD_LABEL, virtual),) if virtual is not None else ()
    return StackKey((SPIN,), carrier, tid, labels)


class FakeHeap:
    """oop -> (Thread.tid, name) as virtual_thread_name() would find it; None when the object moved."""

    def __init__(self, objects: dict[int, tuple[int, str]]) -> None:
        self.objects = objects
        self.reads = 0

    def read(self, oop: int, java_tid: int) -> Optional[str]:
        self.reads += 1
        found = self.objects.get(oop)
        return found[1] if found is not None and found[0] == java_tid else None


def test_names_are_read_once_per_virtual_thread_and_unnamed_ones_are_their_id() -> None:
    heap = FakeHeap({0x1000: (21, "vt-1"), 0x2000: (22, "")})
    names = VirtualThreadNames(heap.read, ttl=60)
    assert names.label(0x1000, 21) == "vt-1"
    assert names.label(0x1000, 21) == "vt-1" and heap.reads == 1      # cached by tid
    assert names.label(0x2000, 22) == "#22"                            # unnamed: its id


def test_a_moved_object_never_names_another_thread() -> None:
    # GIVEN a GC moved vt-1 away and put another thread where it was
    heap = FakeHeap({0x1000: (99, "someone-else")})
    names = VirtualThreadNames(heap.read, ttl=0)
    # THEN the sample is labelled by its id, counted, and read again next time (not cached)
    assert names.label(0x1000, 21) == "#21" and names.unread == 1
    heap.objects[0x3000] = (21, "vt-1")
    assert names.label(0x3000, 21) == "vt-1"
    # AND once known, a later failed read keeps the known name
    assert names.label(0x1000, 21) == "vt-1" and names.unread == 2


def test_views_name_the_virtual_thread_and_thread_filters_match_either() -> None:
    profile = ProfileData()
    profile.add(vkey("ForkJoinPool-1-worker-1", "vt-1"), 3)
    profile.add(vkey("ForkJoinPool-1-worker-2", "vt-1", tid=8), 2)
    profile.add(vkey("ForkJoinPool-1-worker-2", "#42", tid=8), 4)
    profile.add(vkey("main", None, tid=1), 5)
    assert thread_label(vkey("ForkJoinPool-1-worker-1", "vt-1")) == "vt-1"
    assert filter_profile(profile, thread="^vt-1$").total_samples == 5         # over both carriers
    assert filter_profile(profile, thread="worker-2$").total_samples == 6      # by the carrier
    assert filter_profile(profile, thread="^#42$").total_samples == 4
    assert filter_profile(profile, thread="^main$").total_samples == 5
    tree = build_tree(profile, by_thread=True)
    tree.freeze()
    threads = {f.name for f in tree.frames.frames if f.kind == FrameKind.THREAD}
    assert threads == {"vt-1", "#42", "main"}


def test_the_label_survives_pprof() -> None:
    profile = ProfileData()
    profile.add(vkey("ForkJoinPool-1-worker-1", "vt-1"), 3)
    back = read_pprof(encode(profile))
    [key] = back.counts
    assert key.thread_name == "ForkJoinPool-1-worker-1" and key.virtual_thread == "vt-1"


def test_agent_labels_keep_the_virtual_thread() -> None:
    labeler = AgentLabeler(client=None)
    labeler.hold(1, vkey("ForkJoinPool-1-worker-1", "vt-1"))
    [key] = list(labeler.release())
    assert key.virtual_thread == "vt-1"
