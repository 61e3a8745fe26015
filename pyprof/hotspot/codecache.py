"""The JIT code cache, read attach-free: CodeCache::_heaps -> CodeHeap -> HeapBlocks -> CodeBlobs.

Two ways in:
- `walk()` enumerates every live blob of every heap, moving only forward through the heap
  (next block = block + _length segments); a backward hop on a heap that mutates while we read it
  could loop forever. Heap bytes are read in windows of WINDOW bytes, so a 50k-nmethod cache costs a
  few hundred preads, not one per blob.
- `blob_at(pc)` finds the blob containing a PC through the segment map: 0xFF = free, 0 = a block
  starts here, 1..0xFE = hop back that many segments (src/hotspot/share/memory/heap.cpp).

Every blob is validated (size within its block, code range inside the blob, name pointer inside libjvm);
invalid ones are counted in `WalkStats`, never fatal.
"""

from __future__ import annotations

import bisect
import enum
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Optional

from pyprof.errors import MemoryReadError
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.layout import BlobHeader
from pyprof.hotspot.method import MethodInfo, MethodResolver

WINDOW = 1 << 20           # bytes of code heap read at once during a walk
MAX_HEAPS = 16
MAX_BLOCKS_PER_HEAP = 4_000_000
MAX_SEGMAP_HOPS = 4096
MAX_HEAP_BYTES = 1 << 34   # 16 GiB: larger means a garbage VirtualSpace
SEGMENTED_HEAP_NAMES = ("non-profiled nmethods", "profiled nmethods", "non-nmethods")


class BlobKind(str, enum.Enum):
    NMETHOD = "nmethod"
    INTERPRETER = "interpreter"
    ADAPTER = "adapter"
    RUNTIME_STUB = "runtime_stub"
    VTABLE = "vtable"
    BUFFER = "buffer"
    STUBS = "stub_routines"
    DEOPTIMIZATION = "deoptimization"
    SAFEPOINT = "safepoint"
    EXCEPTION = "exception"
    UNCOMMON_TRAP = "uncommon_trap"
    UPCALL = "upcall"
    METHOD_HANDLES = "method_handles"
    OTHER = "other"


# CodeBlob C++ classes (JDK 17/21: known by their vtable) and CodeBlobKind names (23+).
CLASS_KINDS = {
    "nmethod": BlobKind.NMETHOD,
    "BufferBlob": BlobKind.BUFFER,
    "AdapterBlob": BlobKind.ADAPTER,
    "VtableBlob": BlobKind.VTABLE,
    "MethodHandlesAdapterBlob": BlobKind.METHOD_HANDLES,
    "RuntimeStub": BlobKind.RUNTIME_STUB,
    "DeoptimizationBlob": BlobKind.DEOPTIMIZATION,
    "SafepointBlob": BlobKind.SAFEPOINT,
    "ExceptionBlob": BlobKind.EXCEPTION,
    "UncommonTrapBlob": BlobKind.UNCOMMON_TRAP,
    "OptimizedEntryBlob": BlobKind.UPCALL,
    "UpcallStub": BlobKind.UPCALL,
}
KIND_CONSTANTS = {
    "Nmethod": BlobKind.NMETHOD, "Buffer": BlobKind.BUFFER, "Adapter": BlobKind.ADAPTER,
    "Vtable": BlobKind.VTABLE, "MHAdapter": BlobKind.METHOD_HANDLES, "RuntimeStub": BlobKind.RUNTIME_STUB,
    "Deoptimization": BlobKind.DEOPTIMIZATION, "Safepoint": BlobKind.SAFEPOINT,
    "Exception": BlobKind.EXCEPTION, "UncommonTrap": BlobKind.UNCOMMON_TRAP, "Upcall": BlobKind.UPCALL,
}


class NMethodState(int, enum.Enum):
    IN_USE = 0
    NOT_ENTRANT = 1
    ZOMBIE = 2   # numbering is per JDK; see state_name()


def state_name(major: int, state: int) -> str:
    """nmethod::_state values: 17: 0 in_use, 1 not_used, 2 not_entrant, 3 unloaded, 4 zombie;
    21: 0 in_use, 1 not_used, 2 not_entrant; 25: 0 in_use, 1 not_entrant."""
    if major >= 23:
        names = {0: "in_use", 1: "not_entrant"}
    else:
        names = {0: "in_use", 1: "not_used", 2: "not_entrant", 3: "unloaded", 4: "zombie"}
    return names.get(state, f"state_{state}")


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

    @property
    def is_nmethod(self) -> bool:
        return self.kind is BlobKind.NMETHOD

    @property
    def is_osr(self) -> bool:
        return self.is_nmethod and self.entry_bci >= 0

    @property
    def is_native_wrapper(self) -> bool:
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
    _starts: list[int] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.blobs.sort(key=lambda b: b.address)
        self._starts = [b.address for b in self.blobs]

    @property
    def nmethods(self) -> list[CodeBlobInfo]:
        return [b for b in self.blobs if b.is_nmethod]

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
        self._vtables = self._blob_vtables()
        self._heaps: Optional[list[HeapInfo]] = None

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
        for heap in self.heaps():
            if heap.contains(address):
                return heap
        return None

    # ---- blob decoding ---------------------------------------------------------------------------
    def _blob_vtables(self) -> dict[int, BlobKind]:
        """vptr -> kind, for JDKs whose CodeBlob is polymorphic (17/21): vptr = &vtable + 16."""
        out: dict[int, BlobKind] = {}
        for cls, kind in CLASS_KINDS.items():
            sym = self.jvm.symbols.lookup(f"_ZTV{len(cls)}{cls}")
            if sym is not None:
                out[self.jvm.libjvm_address(sym.value) + 16] = kind
        return out

    def _name(self, ptr: int) -> str:
        name = self._names.get(ptr)
        if name is None:
            name = self.r.cstring(ptr, 128)
            self._names[ptr] = name
        return name

    def _kind(self, buf: bytes, off: int, header: BlobHeader, name: str) -> BlobKind:
        kind: Optional[BlobKind] = None
        if header.kind_id is not None:
            kind = KIND_CONSTANTS.get(self.lay.blob_kind_name(header.kind_id) or "")
        elif self._vtables:
            kind = self._vtables.get(int.from_bytes(buf[off : off + 8], "little"))
        if kind is None and name in ("nmethod", "native nmethod"):
            kind = BlobKind.NMETHOD
        if kind is None:
            raise MemoryReadError(f"unknown blob kind ({name!r})")
        if kind is BlobKind.BUFFER:
            if name == "Interpreter":
                return BlobKind.INTERPRETER
            if name.startswith("StubRoutines"):
                return BlobKind.STUBS
        return kind

    def decode_blob(self, buf: bytes, off: int, address: int, heap: int,
                    max_size: Optional[int] = None, resolve_method: bool = True) -> CodeBlobInfo:
        """Decode and validate the blob at `address` whose bytes are buf[off:]."""
        header = self.lay.blob_header(buf, off, address)
        if header.size <= 0 or (max_size is not None and header.size > max_size):
            raise MemoryReadError(f"blob size {header.size} outside its block")
        if not address <= header.code_begin <= header.code_end <= address + header.size:
            raise MemoryReadError("code range outside the blob")
        if not self.jvm.in_libjvm(header.name_ptr):
            raise MemoryReadError("blob name pointer outside libjvm")
        name = self._name(header.name_ptr)
        kind = self._kind(buf, off, header, name)
        common = dict(
            address=address, size=header.size, kind=kind, name=name, code_begin=header.code_begin,
            code_end=header.code_end, frame_size=header.frame_size,
            frame_complete_offset=header.frame_complete_offset, heap=heap,
        )
        if kind is not BlobKind.NMETHOD:
            return CodeBlobInfo(**common)
        nm = self.lay.nmethod_header(buf, off, header.code_begin)
        method = None
        if resolve_method and nm.method:
            try:
                method = self.resolver.resolve(nm.method)
            except MemoryReadError:
                method = None
        return CodeBlobInfo(
            **common, compile_id=nm.compile_id, level=nm.comp_level, state=nm.state,
            entry_bci=nm.entry_bci, method_ptr=nm.method, method=method, verified_entry=nm.verified_entry,
            orig_pc_offset=nm.orig_pc_offset, deopt_handler=nm.deopt_handler,
        )

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
        length, used = self.lay.heap_block(buf, 0)
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
        for heap in heaps:
            usage[heap.index] = HeapUsage()
            for blob in self._walk_heap(heap, stats, usage[heap.index], resolve_methods):
                blobs.append(blob)
        stats.method_failures = sum(1 for b in blobs if b.is_nmethod and b.method is None)
        stats.seconds = time.perf_counter() - started
        named = [_name_heap(h, [b for b in blobs if b.heap == h.index], len(heaps)) for h in heaps]
        return CodeCacheSnapshot(named, blobs, usage, stats, time.time())

    def _walk_heap(self, heap: HeapInfo, stats: WalkStats, usage: HeapUsage,
                   resolve_methods: bool) -> Iterator[CodeBlobInfo]:
        seg_size = heap.segment_size
        total_segments = heap.committed // seg_size
        extent = self.lay.heap_block_size + max(self.lay.blob_read_size, self.lay.nmethod_read_size)
        window = _Window(self.r, heap.low_boundary, heap.committed_end)
        seg = 0
        last_allocated = 0
        for _ in range(MAX_BLOCKS_PER_HEAP):
            if seg >= total_segments:
                break
            block = heap.low_boundary + seg * seg_size
            try:
                buf, off = window.at(block, extent)
            except MemoryReadError:
                stats.invalid["unreadable block"] += 1
                break
            length, used = self.lay.heap_block(buf, off)
            if length == 0 or seg + length > total_segments:
                # Past the last allocated block the heap is never-written memory (zeros).
                break
            stats.blocks += 1
            last_allocated = seg + length
            if not used:
                usage.free_blocks += 1
                usage.free_bytes += length * seg_size
                usage.largest_free = max(usage.largest_free, length * seg_size)
                seg += length
                continue
            usage.used_bytes += length * seg_size
            try:
                hb = self.lay.heap_block_size
                blob = self.decode_blob(buf, off + hb, block + hb, heap.index,
                                        max_size=length * seg_size, resolve_method=resolve_methods)
            except MemoryReadError as e:
                stats.invalid[_reason(e)] += 1
            else:
                usage.blobs += 1
                yield blob
            seg += length
        else:
            stats.invalid["block limit reached"] += 1
        usage.unallocated_bytes = max(0, heap.committed - last_allocated * seg_size)


class _Window:
    """A sliding read window over a code heap: one pread per WINDOW bytes instead of one per blob."""

    def __init__(self, reader, low: int, high: int) -> None:
        self.r = reader
        self.low, self.high = low, high
        self.start = 0
        self.buf = b""

    def at(self, address: int, size: int) -> tuple[bytes, int]:
        end = min(address + size, self.high)
        if not (self.start <= address and end <= self.start + len(self.buf)):
            self.start = address
            self.buf = self.r.bytes(address, min(max(WINDOW, end - address), self.high - address))
        return self.buf, address - self.start


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
