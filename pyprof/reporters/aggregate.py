"""Pure aggregation shared by every view: filters, frame identity, the call tree.

A view's *frame* is what a user reads as one function: a display name (`pyproftest.Phases.phaseA [C2]`,
or the plain name when tiers are merged) and its kind. Stacks are expanded from physical frames (leaf
first) into logical frames (an inlining chain, innermost first) once per distinct physical frame.
"""

from __future__ import annotations

import gc
import re
from array import array
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from pyprof.errors import UsageError
from pyprof.model import FrameKind, PhysicalFrame, ProfileData, StackKey, display_name

# Every kind, in the order legends and JSON list them.
KIND_ORDER: tuple[FrameKind, ...] = (
    FrameKind.INTERPRETED, FrameKind.C1, FrameKind.C2, FrameKind.INLINED, FrameKind.NATIVE_METHOD,
    FrameKind.JVM_STUB, FrameKind.NATIVE, FrameKind.KERNEL, FrameKind.THREAD, FrameKind.UNKNOWN,
)


def compile_regex(pattern: Optional[str], what: str) -> Optional[re.Pattern]:
    if pattern is None or pattern == "":
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UsageError(f"invalid {what} regular expression {pattern!r}: {e}") from None


def thread_label(key: StackKey) -> str:
    """How a sample's thread is named in views: the virtual thread that was mounted (as JFR names it;
    its carrier is the `thread` label), else its name, or its tid when it has none."""
    return key.virtual_thread or key.thread_name or (f"tid {key.tid}" if key.tid else "(no thread label)")


def thread_matches(pattern: re.Pattern[str], key: StackKey) -> bool:
    """--thread: a virtual thread's sample matches by its own name or by its carrier's."""
    return bool(pattern.search(thread_label(key)) or (key.virtual_thread and key.thread_name
                                                       and pattern.search(key.thread_name)))


@dataclass(frozen=True)
class Frame:
    name: str
    kind: FrameKind


class FrameTable:
    """Frames numbered in first-seen order; the expansion of each physical frame is cached.

    With tiers merged, one name is one frame whatever its tiers (its kind is the first one seen).
    """

    def __init__(self, tiers: bool = True) -> None:
        self.tiers = tiers
        self.frames: list[Frame] = []
        self._ids: dict[object, int] = {}
        self._physical: dict[PhysicalFrame, tuple[int, ...]] = {}
        self._by_id: dict[int, tuple[PhysicalFrame, tuple[int, ...]]] = {}
        self.unknown_ids: set[int] = set()   # id() of the physical frames nobody could name (kept alive)

    def intern(self, name: str, kind: FrameKind) -> int:
        key = (name, kind) if self.tiers else name
        index = self._ids.get(key)
        if index is None:
            index = self._ids[key] = len(self.frames)
            self.frames.append(Frame(name, kind))
        return index

    def physical(self, frame: PhysicalFrame) -> tuple[int, ...]:
        """The frame ids of one machine frame, innermost (callee) first."""
        # Keyed by identity first (a pprof reader shares one object per Location, so this is the common
        # hit and skips hashing the frame), by value second.
        hit = self._by_id.get(id(frame))
        if hit is not None and hit[0] is frame:
            return hit[1]
        ids = self._physical.get(frame)
        if ids is None:
            ids = self._physical[frame] = tuple(
                self.intern(display_name(logical, self.tiers), logical.kind) for logical in frame.frames)
        self._by_id[id(frame)] = (frame, ids)
        if frame.frames and frame.frames[0].kind is FrameKind.UNKNOWN:
            self.unknown_ids.add(id(frame))
        return ids

    def stack(self, key: StackKey) -> list[int]:
        """The frame ids of a sample, leaf first."""
        out: list[int] = []
        by_id = self._by_id
        for frame in key.frames:   # physical() inlined for its common case: this runs per frame
            hit = by_id.get(id(frame))
            out.extend(hit[1] if hit is not None and hit[0] is frame else self.physical(frame))
        return out

    def thread(self, key: StackKey) -> int:
        return self.intern(thread_label(key), FrameKind.THREAD)

    def __getitem__(self, index: int) -> Frame:
        return self.frames[index]

    def __len__(self) -> int:
        return len(self.frames)


def stack_names(key: StackKey, tiers: bool = True) -> Iterator[str]:
    """Display names of a sample's frames, leaf first."""
    for physical in key.frames:
        for logical in physical.frames:
            yield display_name(logical, tiers)


def filter_profile(profile: ProfileData, thread: Optional[str] = None, focus: Optional[str] = None,
                   tiers: bool = True) -> ProfileData:
    """The samples whose thread name matches `thread` and whose stack has a function matching `focus`
    (both regular expressions, searched anywhere in the name, like pprof's -focus). Other fields are
    kept, so percentages stay relative to what is left."""
    thread_re = compile_regex(thread, "--thread")
    focus_re = compile_regex(focus, "--focus")
    if thread_re is None and focus_re is None:
        return profile
    out = ProfileData(event=profile.event, counted=profile.counted, period_ns=profile.period_ns,
                      start_time_ns=profile.start_time_ns,
                      duration_ns=profile.duration_ns, comments=list(profile.comments),
                      lost_samples=profile.lost_samples, unknown_frames=profile.unknown_frames)
    matched: dict[str, bool] = {}
    for key, count in profile.counts.items():
        if thread_re is not None and not thread_matches(thread_re, key):
            continue
        if focus_re is not None and not _stack_matches(key, focus_re, tiers, matched):
            continue
        out.counts[key] = count
    return out


def _stack_matches(key: StackKey, regex: re.Pattern, tiers: bool, cache: dict[str, bool]) -> bool:
    for name in stack_names(key, tiers):
        hit = cache.get(name)
        if hit is None:
            hit = cache[name] = regex.search(name) is not None
        if hit:
            return True
    return False


@dataclass
class ProfileSummary:
    """What every view says in its header."""

    samples: int
    period_ns: int
    duration_ns: int
    threads: int
    lost_samples: int
    unknown_frames: int       # physical frames nobody could name, weighted by samples
    frames: int               # all physical frames, weighted by samples
    counted: str = ""         # what `samples` counts when not CPU samples ("wall/nanoseconds")

    @property
    def cpu_seconds(self) -> float:
        return self.samples * self.period_ns / 1e9

    @property
    def unknown_percent(self) -> float:
        return 100.0 * self.unknown_frames / self.frames if self.frames else 0.0

    @property
    def lost_percent(self) -> float:
        seen = self.samples + self.lost_samples
        return 100.0 * self.lost_samples / seen if seen else 0.0

    def to_json(self) -> dict:
        return {"samples": self.samples, "period_ns": self.period_ns,
                "cpu_seconds": round(self.cpu_seconds, 6),
                "duration_seconds": round(self.duration_ns / 1e9, 6), "threads": self.threads,
                "lost_samples": self.lost_samples, "unknown_frames_percent": round(self.unknown_percent, 3)}

    def line(self) -> str:
        duration = f" in {self.duration_ns / 1e9:.2f} s" if self.duration_ns else ""
        threads = f"{self.threads} thread{'' if self.threads == 1 else 's'}"
        what = f"{self.samples} samples ({self.cpu_seconds:.2f} s CPU)"
        if self.counted:
            what = amount(self.samples, self.counted)
        return (f"{what}{duration}, {threads}; "
                f"lost {self.lost_samples} ({self.lost_percent:.2f}%), "
                f"unknown frames {self.unknown_percent:.2f}%")


def amount(value: int, counted: str) -> str:
    """A total of sample type `counted` ("alloc_space/bytes") as people read it: 3.00 MiB alloc_space,
    1.25 s wall, 1,024 contentions."""
    name, _, unit = counted.partition("/")
    if unit == "bytes":
        size, prefix = float(value), 0
        while size >= 1024 and prefix < len(BYTE_UNITS) - 1:
            size, prefix = size / 1024, prefix + 1
        return f"{value:,} bytes {name}" if prefix == 0 else f"{size:.2f} {BYTE_UNITS[prefix]} {name}"
    if unit == "nanoseconds":
        return f"{value / 1e9:.2f} s {name}"
    return f"{value:,} {name}"


BYTE_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def summarize(profile: ProfileData, table: Optional[FrameTable] = None) -> ProfileSummary:
    """Totals for a header. `table` is a FrameTable that has expanded every stack of `profile` already
    (it knows the unknown frames); without one, one is made."""
    if table is None:
        table = FrameTable()
        for key in profile.counts:
            table.stack(key)
    unknown_ids = table.unknown_ids
    unknown = frames = samples = 0
    threads = set()
    for key, count in profile.counts.items():
        if count <= 0:
            continue
        samples += count
        frames += count * len(key.frames)
        threads.add(thread_label(key))
        if unknown_ids and not unknown_ids.isdisjoint(map(id, key.frames)):
            unknown += count * sum(1 for physical in key.frames if id(physical) in unknown_ids)
    return ProfileSummary(samples, profile.period_ns, profile.duration_ns, len(threads), profile.lost_samples,
                          unknown, frames, profile.counted)


# ---- the call tree ---------------------------------------------------------------------------------

ROOT = -1        # the frame id of the root ("all")
ROOT_NODE = 0
_FRAME_BITS = 32


class CallTree:
    """The top-down call tree in flat arrays: node n has frame `frame_of[n]`, parent `parent[n]`,
    `total[n]` samples through it and `selfs[n]` ending in it; node 0 is the root ("all").

    Arrays, not node objects: a profile of 200,000 distinct stacks makes two million nodes, and a
    Python object with a dict of children per node costs 2.5 times the memory (1 GB there)."""

    def __init__(self, frames: FrameTable) -> None:
        self.frames = frames
        # array("q"): 8 bytes an entry, where a list of big ints costs 8 + 28 (an int object each)
        self.frame_of = array("q", [ROOT])
        self.parent = array("q", [-1])
        self.total = array("q", [0])
        self.selfs = array("q", [0])
        self._index: Optional[dict[int, int]] = {}      # parent << 32 | frame -> node; None once frozen
        self._kids: Optional[tuple[array, array]] = None

    def __len__(self) -> int:
        return len(self.frame_of)

    def name(self, node: int) -> str:
        frame = self.frame_of[node]
        return "all" if frame == ROOT else self.frames[frame].name

    def kind(self, node: int) -> FrameKind:
        frame = self.frame_of[node]
        return FrameKind.THREAD if frame == ROOT else self.frames[frame].kind

    def child(self, node: int, frame: int) -> int:
        """The child of `node` for `frame`, made (with no samples) when missing."""
        if self._index is None:
            raise RuntimeError("the call tree is frozen")
        key = (node << _FRAME_BITS) | frame
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = len(self.frame_of)
            self.frame_of.append(frame)
            self.parent.append(node)
            self.total.append(0)
            self.selfs.append(0)
            self._kids = None
        return found

    def add(self, path: Iterable[int], count: int) -> None:
        index, frame_of, parent, total = self._index, self.frame_of, self.parent, self.total
        if index is None:
            raise RuntimeError("the call tree is frozen")
        node = ROOT_NODE
        total[node] += count
        for frame in path:
            key = (node << _FRAME_BITS) | frame
            found = index.get(key)
            if found is None:
                found = index[key] = len(frame_of)
                frame_of.append(frame)
                parent.append(node)
                total.append(0)
                self.selfs.append(0)
            total[found] += count
            node = found
        self.selfs[node] += count
        self._kids = None

    def freeze(self) -> None:
        """No more nodes: drop the (parent, frame) index, the biggest part of a big tree's memory."""
        self._index = None

    def children(self, node: int) -> list[int]:
        """The children of `node`, in the order they were made."""
        if self._kids is None:
            self._kids = self._build_kids()
        start, kids = self._kids
        return kids[start[node]:start[node + 1]].tolist()

    def _build_kids(self) -> tuple[array, array]:
        """Children grouped by parent (a counting sort): kids[start[n]:start[n + 1]] are n's."""
        n = len(self.parent)
        start = array("q", bytes(8 * (n + 1)))
        for p in self.parent[1:]:
            start[p + 1] += 1
        for i in range(1, n + 1):
            start[i] += start[i - 1]
        fill = array("q", start)
        kids = array("q", bytes(8 * max(n - 1, 0)))
        parent = self.parent
        for c in range(1, n):
            p = parent[c]
            kids[fill[p]] = c
            fill[p] += 1
        return start, kids


@contextmanager
def gc_paused():
    """Building millions of tree nodes triggers the cyclic GC over and over (it scans every container
    each time a generation fills): pausing it makes a big tree three times faster."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_tree(profile: ProfileData, tiers: bool = True, by_thread: bool = True,
               frames: Optional[FrameTable] = None) -> CallTree:
    """The top-down call tree (root first); threads as the first level when `by_thread`."""
    tree = CallTree(frames if frames is not None else FrameTable(tiers))
    table = tree.frames
    add = tree.add
    with gc_paused():
        for key, count in profile.counts.items():
            if count <= 0:
                continue
            path = table.stack(key)
            if by_thread:
                path.append(table.thread(key))
            path.reverse()
            add(path, count)
    return tree
