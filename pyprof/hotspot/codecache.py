"""The JIT code cache, read attach-free: CodeCache::_heaps -> CodeHeap -> HeapBlocks -> CodeBlobs.

Two ways in:
- `walk()` enumerates every live blob of every heap, moving only forward through the heap
  (next block = block + _length segments); a backward hop on a heap that mutates while we read it
  could loop forever. Heap bytes are read in windows of WINDOW bytes, so a 50k-nmethod cache costs a
  few hundred preads, not one per blob; the metaspace behind Method*s is read a page at a time
  (method.PagedMemory), and each header is decoded by one struct unpack (~0.4 s for 50k nmethods).
- `blob_at(pc)` finds the blob containing a PC through the segment map: 0xFF = free, 0 = a block
  starts here, 1..0xFE = hop back that many segments (src/hotspot/share/memory/heap.cpp).

Every blob is validated (size within its block, code range inside the blob, name pointer inside libjvm);
invalid ones are counted in `WalkStats`, never fatal.
"""

from __future__ import annotations

import bisect
import gc
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from pyprof.errors import MemoryReadError
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.layout import BlobKind, CodeBlobHeader
from pyprof.hotspot.method import MethodInfo, MethodResolver, PagedMemory, Reads

WINDOW = 1 << 20           # bytes of code heap read at once during a walk
MAX_HEAPS = 16
MAX_BLOCKS_PER_HEAP = 4_000_000
MAX_SEGMAP_HOPS = 4096
MAX_HEAP_BYTES = 1 << 34   # 16 GiB: larger means a garbage VirtualSpace
SEGMENTED_HEAP_NAMES = ("non-profiled nmethods", "profiled nmethods", "non-nmethods")


@dataclass(frozen=True)
class CodeBlobInfo:
    address: int                  # the CodeBlob* (what jcmd prints first in brackets)
    size: int                     # CodeBlob::_size
    kind: BlobKind
    name: str                     # CodeBlob::_name ("nmethod", "Interpreter", "StubRoutines (1)", ...)
    code_begin: int
    code_end: int
    frame_size: int               # words
    frame_complete_offset: int
    heap: int                     # index into CodeCache::_heaps
    # nmethods only
    compile_id: int = -1
    level: int = -1
    state: int = -1
    entry_bci: int = -1
    method_ptr: int = 0
    method: Optional[MethodInfo] = None
    verified_entry: int = 0
    orig_pc_offset: int = 0
    deopt_handler: int = 0
    alive: bool = True            # False: JDK 17's unloaded / zombie nmethods (until the sweeper frees them)

    @property
    def is_nmethod(self) -> bool:
        return self.kind is BlobKind.NMETHOD

    @property
    def is_osr(self) -> bool:
        return self.is_nmethod and self.entry_bci >= 0

    @property
    def is_native_wrapper(self) -> bool:
        """A JNI method's compiled wrapper (level 0): it has no Java call sites of its own."""
        return self.is_nmethod and self.level == 0

    @property
    def method_name(self) -> Optional[str]:
        return self.method.codelist_name if self.method else None

    def contains(self, pc: int) -> bool:
        return self.address <= pc < self.address + self.size

    @property
    def label(self) -> str:
        if self.is_nmethod:
            return self.method_name or f"nmethod@0x{self.address:x}"
        return self.name


def _new_blob(values: dict) -> CodeBlobInfo:
    """CodeBlobInfo(**values) without the frozen dataclass's per-field object.__setattr__ calls (3x faster;
    a walk builds 50k of them). Fields not given keep their class-level defaults."""
    blob = object.__new__(CodeBlobInfo)
    object.__setattr__(blob, "__dict__", values)
    return blob


@dataclass(frozen=True)
class HeapInfo:
    index: int
    low_boundary: int
    high_boundary: int     # reserved end
    committed_end: int     # _memory._high
    segment_size: int
    segmap_low: int
    name: str = ""

    @property
    def reserved(self) -> int:
        return self.high_boundary - self.low_boundary

    @property
    def committed(self) -> int:
        return self.committed_end - self.low_boundary

    def contains(self, address: int) -> bool:
        return self.low_boundary <= address < self.committed_end


@dataclass
class HeapUsage:
    used_bytes: int = 0
    free_bytes: int = 0          # free blocks inside the allocated part
    free_blocks: int = 0
    largest_free: int = 0
    blobs: int = 0
    unallocated_bytes: int = 0   # committed, never allocated


@dataclass
class WalkStats:
    blocks: int = 0
    invalid: Counter = field(default_factory=Counter)
    method_failures: int = 0
    seconds: float = 0.0

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())


@dataclass
class CodeCacheSnapshot:
    heaps: list[HeapInfo]
    blobs: list[CodeBlobInfo]        # sorted by address
    usage: dict[int, HeapUsage]
    stats: WalkStats
    taken_at: float
    source: str = "vmstructs"
    # nmethod::_state -> name on this JVM (Layout.nmethod_states); empty when the source does not know
    state_names: dict[int, str] = field(default_factory=dict)
    _starts: list[int] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.blobs.sort(key=lambda b: b.address)
        self._starts = [b.address for b in self.blobs]

    @property
    def nmethods(self) -> list[CodeBlobInfo]:
        return [b for b in self.blobs if b.is_nmethod]

    @property
    def live_nmethods(self) -> list[CodeBlobInfo]:
        """The nmethods `jcmd Compiler.codelist` lists: without JDK 17's unloaded and zombie ones."""
        return [b for b in self.blobs if b.is_nmethod and b.alive]

    def state_name(self, state: int) -> str:
        return self.state_names.get(state, f"state_{state}")

    def lookup(self, pc: int) -> Optional[CodeBlobInfo]:
        i = bisect.bisect_right(self._starts, pc) - 1
        if i >= 0 and self.blobs[i].contains(pc):
            return self.blobs[i]
        return None


class CodeCache:
    """Reader for one JVM's code cache. Cheap to create; `heaps()` is re-read on each walk."""

    def __init__(self, jvm: HotSpotJvm, resolver: Optional[MethodResolver] = None) -> None:
        self.jvm = jvm
        self.r = jvm.reader
        self.lay = jvm.layout
        self.resolver = resolver or MethodResolver(jvm.reader, jvm.layout)
        self._names: dict[int, str] = {}
        self._kinds: dict[tuple[int, int], BlobKind] = {}
        self._heaps: Optional[list[HeapInfo]] = None
        self._compile_decoders()

    # ---- heaps -----------------------------------------------------------------------------------
    def heaps(self, refresh: bool = False) -> list[HeapInfo]:
        if self._heaps is None or refresh:
            self._heaps = self._read_heaps()
        return self._heaps

    def _read_heaps(self) -> list[HeapInfo]:
        lay = self.lay
        array = self.r.ptr(lay["CodeCache._heaps"].address)
        count = self.r.i32(array + lay.offset("GrowableArray._len"))
        if not 0 < count <= MAX_HEAPS:
            raise MemoryReadError(f"implausible number of code heaps: {count}")
        data = self.r.ptr(array + lay.offset("GrowableArray._data"))
        out = []
        for index in range(count):
            heap = self.r.ptr(data + 8 * index)
            out.append(self._read_heap(index, heap))
        return out

    def _read_heap(self, index: int, heap: int) -> HeapInfo:
        lay = self.lay
        mem = heap + lay.offset("CodeHeap._memory")
        segmap = heap + lay.offset("CodeHeap._segmap")
        log2 = self.r.i32(heap + lay.offset("CodeHeap._log2_segment_size"))
        if not 4 <= log2 <= 16:
            raise MemoryReadError(f"implausible code heap segment size 2^{log2}")
        low_boundary = self.r.ptr(mem + lay.offset("VirtualSpace._low_boundary"))
        high_boundary = self.r.ptr(mem + lay.offset("VirtualSpace._high_boundary"))
        high = self.r.ptr(mem + lay.offset("VirtualSpace._high"))
        if not low_boundary <= high <= high_boundary or high_boundary - low_boundary > MAX_HEAP_BYTES:
            raise MemoryReadError(f"implausible code heap bounds 0x{low_boundary:x}-0x{high_boundary:x}")
        segmap_low = self.r.ptr(segmap + lay.offset("VirtualSpace._low"))
        return HeapInfo(index, low_boundary, high_boundary, high, 1 << log2, segmap_low)

    def heap_of(self, address: int) -> Optional[HeapInfo]:
        """The heap whose *reserved* range holds `address`: heaps commit more memory as they grow, and
        the cached heap list would not know the new committed end (the segment map says what is there)."""
        for heap in self.heaps():
            if heap.low_boundary <= address < heap.high_boundary:
                return heap
        return None

    # ---- blob decoding ---------------------------------------------------------------------------
    def _name(self, ptr: int) -> str:
        name = self._names.get(ptr)
        if name is None:
            name = self.r.cstring(ptr, 128)
            self._names[ptr] = name
        return name

    def _kind(self, kind_word: int, name: str) -> BlobKind:
        kind = self.lay.blob_kind(kind_word, name)
        if kind is None:
            raise MemoryReadError(f"unknown blob kind ({name!r})")
        return kind

    def _compile_decoders(self) -> None:
        self._heap_block = self.lay.heap_block_decoder()
        self._decode_header = self.lay.blob_decoder()
        self._dead_states = self.lay.dead_nmethod_states

    def decode_blob(self, buf: bytes, off: int, address: int, heap: int,
                    max_size: Optional[int] = None, resolve_method: bool = True,
                    metadata_reader: Optional[Reads] = None) -> CodeBlobInfo:
        """Decode and validate the blob at `address` whose bytes are buf[off:].

        `metadata_reader`: what the method resolver reads metaspace through (a page cache during a walk).
        """
        try:
            h: CodeBlobHeader = self._decode_header(buf, off, address)
        except struct.error:
            raise MemoryReadError("blob header truncated") from None
        size, code_begin, code_end, name_ptr = h.size, h.code_begin, h.code_end, h.name_ptr
        if size <= 0 or (max_size is not None and size > max_size):
            raise MemoryReadError(f"blob size {size} outside its block")
        if not address <= code_begin <= code_end <= address + size:
            raise MemoryReadError("code range outside the blob")
        name = self._names.get(name_ptr)
        if name is None:
            if not self.jvm.in_libjvm(name_ptr):
                raise MemoryReadError("blob name pointer outside libjvm")
            name = self._name(name_ptr)
        # The kind follows from (CodeBlobKind or vtable, name): decide once per distinct pair.
        kind_key = (h.kind_word, name_ptr)
        kind = self._kinds.get(kind_key)
        if kind is None:
            kind = self._kind(h.kind_word, name)
            self._kinds[kind_key] = kind
        if kind is not BlobKind.NMETHOD:
            return _new_blob({"address": address, "size": size, "kind": kind, "name": name,
                              "code_begin": code_begin, "code_end": code_end, "frame_size": h.frame_size,
                              "frame_complete_offset": h.frame_complete_offset, "heap": heap})
        method_ptr = h.method_ptr
        if method_ptr is None:
            raise MemoryReadError("nmethod header truncated")
        method, state = None, h.state
        if resolve_method and method_ptr:
            try:
                method = self.resolver.resolve(method_ptr, metadata_reader)
            except MemoryReadError:
                method = None
        return _new_blob({"address": address, "size": size, "kind": kind, "name": name,
                          "code_begin": code_begin, "code_end": code_end, "frame_size": h.frame_size,
                          "frame_complete_offset": h.frame_complete_offset, "heap": heap,
                          "compile_id": h.compile_id, "level": h.level, "state": state,
                          "entry_bci": h.entry_bci, "method_ptr": method_ptr, "method": method,
                          "verified_entry": h.verified_entry, "orig_pc_offset": h.orig_pc_offset,
                          "deopt_handler": h.deopt_handler, "alive": state not in self._dead_states})

    def read_blob(self, address: int, heap: int = -1, resolve_method: bool = True) -> CodeBlobInfo:
        """Read and decode one blob by its address (e.g. an nmethod* from a uprobe)."""
        buf = self.r.bytes(address, max(self.lay.blob_read_size, self.lay.nmethod_read_size))
        if heap < 0:
            found = self.heap_of(address)
            heap = found.index if found else -1
        return self.decode_blob(buf, 0, address, heap, resolve_method=resolve_method)

    # ---- PC lookup through the segment map --------------------------------------------------------
    def blob_at(self, pc: int) -> Optional[CodeBlobInfo]:
        """The blob containing `pc`, found by hopping back through the segment map."""
        heap = self.heap_of(pc)
        if heap is None:
            return None
        log2 = heap.segment_size.bit_length() - 1
        seg = (pc - heap.low_boundary) >> log2
        for _ in range(MAX_SEGMAP_HOPS):
            tag = self.r.u8(heap.segmap_low + seg)
            if tag == 0xFF:
                return None
            if tag == 0:
                break
            seg -= tag
            if seg < 0:
                return None
        else:
            raise MemoryReadError("segment map hop limit reached")
        block = heap.low_boundary + (seg << log2)
        hb = self.lay.heap_block_size
        buf = self.r.bytes(block, hb + max(self.lay.blob_read_size, self.lay.nmethod_read_size))
        try:
            length, used = self._heap_block(buf, 0)
        except struct.error:
            raise MemoryReadError("heap block header truncated") from None
        if not used:
            return None
        blob = self.decode_blob(buf, hb, block + hb, heap.index, max_size=length * heap.segment_size)
        return blob if blob.contains(pc) else None

    # ---- full walk -------------------------------------------------------------------------------
    def walk(self, resolve_methods: bool = True) -> CodeCacheSnapshot:
        started = time.perf_counter()
        stats = WalkStats()
        heaps = self.heaps(refresh=True)
        blobs: list[CodeBlobInfo] = []
        usage: dict[int, HeapUsage] = {}
        metadata = PagedMemory(self.r.mem)
        # 50k blobs make ~100k acyclic objects: the cyclic GC would rescan them over and over.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for heap in heaps:
                usage[heap.index] = HeapUsage()
                self._walk_heap(heap, stats, usage[heap.index], resolve_methods, metadata, blobs)
        finally:
            if gc_was_enabled:
                gc.enable()
        stats.method_failures = sum(1 for b in blobs if b.is_nmethod and b.method is None)
        stats.seconds = time.perf_counter() - started
        named = [_name_heap(h, [b for b in blobs if b.heap == h.index] if len(heaps) not in (1, 3) else [],
                            len(heaps)) for h in heaps]
        return CodeCacheSnapshot(named, blobs, usage, stats, time.time(),
                                 state_names=dict(self.lay.nmethod_states))

    def _walk_heap(self, heap: HeapInfo, stats: WalkStats, usage: HeapUsage, resolve_methods: bool,
                   metadata: Optional[Reads], out: list[CodeBlobInfo]) -> None:
        """Append the valid blobs of `heap` to `out`, moving only forward (the hot loop of a walk)."""
        seg_size = heap.segment_size
        total_segments = heap.committed // seg_size
        hb = self.lay.heap_block_size
        extent = hb + max(self.lay.blob_read_size, self.lay.nmethod_read_size)
        low, high = heap.low_boundary, heap.committed_end
        read, heap_block, decode, index = self.r.bytes, self._heap_block, self.decode_blob, heap.index
        invalid = stats.invalid
        win_start, win = 0, b""          # the current read window: win = memory[win_start:...]
        win_end = 0
        seg = last_allocated = blocks = used_bytes = free_bytes = free_blocks = largest_free = n_blobs = 0
        for _ in range(MAX_BLOCKS_PER_HEAP):
            if seg >= total_segments:
                break
            block = low + seg * seg_size
            if block < win_start or min(block + extent, high) > win_end:
                try:
                    win = read(block, min(max(WINDOW, extent), high - block))
                except MemoryReadError:
                    invalid["unreadable block"] += 1
                    break
                win_start, win_end = block, block + len(win)
            off = block - win_start
            try:
                length, used = heap_block(win, off)
            except struct.error:    # the last block's header runs past the committed end
                break
            if length == 0 or seg + length > total_segments:
                # Past the last allocated block the heap is never-written memory (zeros).
                break
            blocks += 1
            last_allocated = seg + length
            size = length * seg_size
            if not used:
                free_blocks += 1
                free_bytes += size
                if size > largest_free:
                    largest_free = size
                seg += length
                continue
            used_bytes += size
            try:
                blob = decode(win, off + hb, block + hb, index, size, resolve_methods, metadata)
            except MemoryReadError as e:
                invalid[_reason(e)] += 1
            else:
                n_blobs += 1
                out.append(blob)
            seg += length
        else:
            invalid["block limit reached"] += 1
        stats.blocks += blocks
        usage.used_bytes += used_bytes
        usage.free_bytes += free_bytes
        usage.free_blocks += free_blocks
        usage.largest_free = max(usage.largest_free, largest_free)
        usage.blobs += n_blobs
        usage.unallocated_bytes = max(0, heap.committed - last_allocated * seg_size)


def _reason(error: MemoryReadError) -> str:
    text = str(error)
    return text.split("(")[0].split(":")[0].strip() or "invalid blob"


def _name_heap(heap: HeapInfo, blobs: list[CodeBlobInfo], heap_count: int) -> HeapInfo:
    """CodeHeap::_name is not published. With the segmented cache, _heaps is sorted by CodeBlobType
    (MethodNonProfiled, MethodProfiled, NonNMethod); otherwise name a heap by what it holds."""
    if heap_count == 1:
        name = "CodeCache"
    elif heap_count == 3:
        name = SEGMENTED_HEAP_NAMES[heap.index]
    else:
        levels = {b.level for b in blobs if b.is_nmethod}
        if not any(b.is_nmethod for b in blobs) and blobs:
            name = "non-nmethods"
        elif levels and levels <= {2, 3}:
            name = "profiled nmethods"
        elif levels:
            name = "non-profiled nmethods"
        else:
            name = f"heap {heap.index}"
    return HeapInfo(heap.index, heap.low_boundary, heap.high_boundary, heap.committed_end,
                    heap.segment_size, heap.segmap_low, name)
