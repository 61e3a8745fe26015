"""A code-cache map kept live by eBPF uprobes on libjvm (bpf/nmethod_events.c).

Start-up order matters: the probes are attached *before* the first walk, so nothing compiled or freed
during the walk is missed; queued events are then applied on top of the snapshot.

Which symbols (the Layout knows them per JDK and GC): `<GC>Heap::register_nmethod` / `unregister_nmethod`
of the GC the JVM runs (local .symtab symbols, plus GCC's `.part.0` clones), `CodeCache::free(CodeBlob*)`
(every JDK; static, so the blob is the first argument), `nmethod::make_not_entrant` (and 11-19's
`make_not_entrant_or_zombie`). Every event
re-reads the nmethod from memory; entries are keyed by address *and* compile_id so a reused address
never maps to the wrong method. Freed blobs stay in a short graveyard so a sample taken just before the
free still finds the code that was there.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from pyprof.codemap.probes import NmethodEvent, NmethodProbes, shared_probes
from pyprof.errors import MemoryReadError, SourceUnavailable
from pyprof.hotspot.codecache import CodeBlobInfo, CodeCache, CodeCacheSnapshot
from pyprof.hotspot.jvm import HotSpotJvm

EVENT_REGISTER, EVENT_UNREGISTER, EVENT_FREE, EVENT_NOT_ENTRANT, EVENT_NOT_ENTRANT_OR_ZOMBIE = 1, 2, 3, 4, 5
GRAVEYARD_NS = 5_000_000_000      # keep freed blobs findable for samples up to 5 s old
MAX_GRAVEYARD = 100_000
MAX_PC_MEMO = 200_000             # pcs whose blob lookup is remembered until the map next changes
_MISSING = object()



@dataclass(frozen=True)
class CodeCacheChange:
    kind: str                  # "compile", "unload", "not_entrant"
    time_ns: int               # bpf ktime (CLOCK_MONOTONIC)
    tid: int
    address: int
    blob: Optional[CodeBlobInfo]


def probe_handlers(jvm: HotSpotJvm) -> dict[str, list[str]]:
    """BPF handler (bpf/nmethod_events.c) -> the libjvm symbols to attach it to. Which symbols exist for
    which JDK and GC is the Layout's knowledge (Layout.nmethod_probes)."""
    return {f"on_{event}": names for event, names in jvm.nmethod_probes().items()}


@dataclass
class LiveCodeCache:
    jvm: HotSpotJvm
    cache: CodeCache
    on_change: Optional[Callable[[CodeCacheChange], None]] = None
    snapshot: Optional[CodeCacheSnapshot] = None
    counters: Counter = field(default_factory=Counter)
    _by_address: dict[int, CodeBlobInfo] = field(default_factory=dict)
    _starts: list[int] = field(default_factory=list)
    _graveyard: deque = field(default_factory=deque)    # (free_time_ns, blob)
    _pending: list[CodeCacheChange] = field(default_factory=list)
    _not_entrant: set = field(default_factory=set)      # (address, compile_id) already reported
    probes: Optional[NmethodProbes] = None   # whose uprobes to use (default: the process's shared ones)
    _probes: Optional[NmethodProbes] = None  # attached to, while attached
    degraded: str = ""     # why there are no live probes ("" when they work)
    # pc -> its blob (or None outside every code heap): answers that do not depend on the sample's time,
    # forgotten whenever the map changes. Every frame of every sample is looked up, most of them at pcs
    # seen before: this makes such a lookup one dict access instead of a bisect and a graveyard scan.
    _pc_memo: dict = field(default_factory=dict)

    # ---- life cycle ------------------------------------------------------------------------------
    def start(self, require_probes: bool = True) -> CodeCacheSnapshot:
        """Attach the probes, then walk the cache and apply what happened meanwhile.

        Without probes (stripped libjvm, no uprobes, an attach that failed) and `require_probes` False,
        the map still works: a PC that misses it is looked up in the target's segment map (lookup()).
        """
        try:
            self._attach()
        except SourceUnavailable as e:
            if require_probes:
                raise
            self.degraded = str(e)
        snap = self.cache.walk()
        self.snapshot = snap
        for blob in snap.blobs:
            self._by_address[blob.address] = blob
        self._starts = sorted(self._by_address)
        self._pc_memo.clear()
        self.poll(0)
        return snap

    def _attach(self) -> None:
        symbols = probe_handlers(self.jvm)
        if "on_register" not in symbols or "on_free" not in symbols:
            raise SourceUnavailable("libjvm has no register_nmethod/CodeCache::free symbols (stripped?): "
                                    "live updates need an unstripped libjvm")
        probes = self.probes if self.probes is not None else shared_probes()
        self.counters["probes"] += probes.attach(self.jvm, symbols, self._on_event)
        self._probes = probes

    def close(self) -> None:
        if self._probes is not None:
            self._probes.detach(self.jvm.pid)
            self._probes = None

    def __enter__(self) -> LiveCodeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- events ----------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 100) -> list[CodeCacheChange]:
        """The changes since the last poll (the shared ring buffer is drained for every JVM on it)."""
        if self._probes is not None:
            self._probes.poll(timeout_ms)
        elif timeout_ms > 0:
            time.sleep(timeout_ms / 1000)
        changes, self._pending = self._pending, []
        return changes

    @property
    def lost_events(self) -> int:
        """Events lost to a full ring buffer (of every JVM sharing the probes)."""
        return self._probes.lost if self._probes is not None else 0

    def _on_event(self, ev: NmethodEvent) -> None:
        self.counters["events"] += 1
        change = self._apply(ev.kind, ev.address, ev.arg, ev.time_ns, ev.tid)
        if change is not None:
            self._pending.append(change)
            if self.on_change is not None:
                self.on_change(change)

    def _apply(self, kind: int, address: int, arg: int, time_ns: int, tid: int) -> Optional[CodeCacheChange]:
        if kind == EVENT_REGISTER:
            return self._registered(address, time_ns, tid)
        if kind in (EVENT_FREE, EVENT_UNREGISTER):
            blob = self._remove(address, time_ns)
            if blob is None:
                return None   # not ours (a non-nmethod blob we never saw) or already removed
            return CodeCacheChange("unload", time_ns, tid, address, blob)
        if kind == EVENT_NOT_ENTRANT_OR_ZOMBIE:
            kind = EVENT_NOT_ENTRANT if arg == 2 else 0
            if not kind:
                return None
        if kind == EVENT_NOT_ENTRANT:
            known = self._by_address.get(address)
            if known is None or (address, known.compile_id) in self._not_entrant:
                return None   # unknown, or reported already (17 calls two probed functions)
            self._not_entrant.add((address, known.compile_id))
            fresh = self._read(address)
            blob = fresh if fresh is not None and fresh.compile_id == known.compile_id else known
            self._by_address[address] = blob
            self._pc_memo.clear()
            return CodeCacheChange("not_entrant", time_ns, tid, address, blob)
        return None

    def _registered(self, address: int, time_ns: int, tid: int) -> Optional[CodeCacheChange]:
        blob = self._read(address)
        if blob is None or not blob.is_nmethod:
            self.counters["unreadable"] += 1
            return None
        known = self._by_address.get(address)
        if known is not None and known.compile_id == blob.compile_id:
            return None   # the .part.0 clone and its caller both fired, or the walk saw it already
        if known is not None:
            self._bury(known, time_ns)
        else:
            bisect.insort(self._starts, address)
        self._by_address[address] = blob
        self._pc_memo.clear()
        return CodeCacheChange("compile", time_ns, tid, address, blob)

    def _read(self, address: int) -> Optional[CodeBlobInfo]:
        try:
            return self.cache.read_blob(address)
        except MemoryReadError:
            return None

    def _remove(self, address: int, time_ns: int) -> Optional[CodeBlobInfo]:
        blob = self._by_address.pop(address, None)
        if blob is None:
            return None
        self._not_entrant.discard((address, blob.compile_id))
        i = bisect.bisect_left(self._starts, address)
        if i < len(self._starts) and self._starts[i] == address:
            del self._starts[i]
        self._pc_memo.clear()
        self._bury(blob, time_ns)
        return blob

    def _bury(self, blob: CodeBlobInfo, time_ns: int) -> None:
        self._graveyard.append((time_ns, blob))
        while self._graveyard and (len(self._graveyard) > MAX_GRAVEYARD
                                   or time_ns - self._graveyard[0][0] > GRAVEYARD_NS):
            self._graveyard.popleft()

    # ---- lookups ---------------------------------------------------------------------------------
    def blobs(self) -> list[CodeBlobInfo]:
        return [self._by_address[a] for a in self._starts]

    def lookup(self, pc: int, time_ns: Optional[int] = None) -> Optional[CodeBlobInfo]:
        """The blob that held `pc` at `time_ns` (now if None).

        A miss is looked up in the target's own segment map (a couple of reads): code compiled after the
        walk whose event has not arrived, or all new code when there are no probes. PCs outside the code
        heaps return at once. Answers that hold whatever the sample's time (a live blob; nothing, outside
        the code heaps) are memoized until the map next changes.
        """
        memo = self._pc_memo
        known = memo.get(pc, _MISSING)
        if known is not _MISSING:
            return known   # type: ignore[return-value]
        i = bisect.bisect_right(self._starts, pc) - 1
        if i >= 0:
            blob = self._by_address[self._starts[i]]
            if blob.contains(pc):
                self._memoize(pc, blob)
                return blob
        if self._outside_heaps(pc):
            # no code heap holds pc (native code): nothing the map learns later changes that, and no
            # freed blob (they all lay in the heaps) can have held it
            self._memoize(pc, None)
            return None
        if time_ns is not None:
            for freed_at, blob in reversed(self._graveyard):
                if freed_at >= time_ns and blob.contains(pc):
                    return blob
        return self._lookup_in_target(pc)

    def _outside_heaps(self, pc: int) -> bool:
        try:
            return self.cache.heap_of(pc) is None
        except MemoryReadError:
            return False      # the heap list is unreadable: look the slow way, remember nothing

    def _memoize(self, pc: int, blob: Optional[CodeBlobInfo]) -> None:
        if len(self._pc_memo) >= MAX_PC_MEMO:
            self._pc_memo.clear()     # bounded: start over (it refills from the pcs samples hit)
        self._pc_memo[pc] = blob

    def _lookup_in_target(self, pc: int) -> Optional[CodeBlobInfo]:
        try:
            blob = self.cache.blob_at(pc)
        except MemoryReadError:
            self.counters["segmap_failures"] += 1
            return None
        if blob is None:
            return None
        self.counters["segmap_lookups"] += 1
        if blob.address not in self._by_address:
            bisect.insort(self._starts, blob.address)
        self._by_address[blob.address] = blob
        self._pc_memo.clear()
        return blob


def monotonic_ns() -> int:
    """The clock bpf_ktime_get_ns() uses."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
