"""A seeded, deterministic fuzzer for pyprof's readers of untrusted JVM memory.

Memory captured from real JVMs (a "world": the VMStructs tables, the code heaps with their segment maps,
nmethods, methods, debug info and the thread list of one CodeCacheChurn JVM per JDK, read once through
RecordingMemory) and the recorded unwinder samples (tests/unit/data/unwind-*.json.gz) are mutated case by
case and fed to the real readers:

  vmstructs  read_vmstructs + Layout + the first reads that depend on them (strides, entry offsets, table
             pointers, names, field offsets, type sizes, table ends)
  codecache  CodeCache.walk() and blob_at() (GrowableArray of heaps, CodeHeap fields, segment map bytes,
             HeapBlock headers, CodeBlob/nmethod headers: sizes, kinds, names, code ranges)
  debuginfo  DebugInfo.scopes_at() / line_of() (the PcDesc table, scope streams, UNSIGNED5 bytes, metadata
             indexes, nmethod offsets, ConstMethod line tables: exactly the bytes a clean decode read)
  threads    JavaThreads.refresh() / name() / anchor_addresses() (ThreadsList length and array,
             JavaThread/OSThread fields, JDK 11's linked list with cycles)
  unwind     Unwinder.unwind() (stack bytes and words, registers, the JavaThread anchor, the code-cache
             map's answers, the memory behind frames)

Case `n` of target `t` under seed `s` draws everything from random.Random(f"{s}/{t}/{n}"): the same
worlds, seed, target and case id give the same bytes. Each case runs under a wall-clock bound (a SIGALRM
ends a hang) and a memory bound (tracemalloc's peak), and ends in one of:
  ok        the readers answered and every promise held;
  expected  a documented refusal: MemoryReadError, a PyprofError subclass, or damage the reader counted
            (blobs refused in WalkStats, unknown frames in UnwindStats);
  failure   any other exception, a broken promise, or a case over its time or memory bound.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import random
import signal
import subprocess
import time
import traceback
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from pyprof.errors import MemoryReadError, PyprofError
from pyprof.hotspot.codecache import CodeBlobInfo, CodeCache, CodeCacheSnapshot
from pyprof.hotspot.debuginfo import MAX_SCOPES, DebugInfo, JavaScope
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.layout import Layout, read_version
from pyprof.hotspot.method import MethodResolver
from pyprof.hotspot.threads import JavaThreads
from pyprof.hotspot.vmstructs import read_vmstructs
from pyprof.model import PhysicalFrame
from pyprof.procfs.elf import ElfSymbols
from pyprof.procfs.memory import BytesMemory, Reader
from pyprof.sampling.sampler import RawSample
from pyprof.sampling.unwind import Unwinder
from tests.conftest import CLASSES, JavaProcess, java_bin
from tests.unit.data.unwind_fixture import RecordedNatives, RecordedThreads, Recording, fixture_path, load
from tests.unit.test_hostile_memory import (
    Capture,
    RecordingMemory,
    ReplayMemory,
    capture_code_cache,
    constant_bytes,
    dying,
    flip_bytes,
    random_reads,
    self_references,
)

TARGETS = ("vmstructs", "codecache", "debuginfo", "threads", "unwind")
TIME_LIMIT = 5.0                 # seconds a case may take (a clean code-cache walk: ~0.05-0.2 s)
HANG_LIMIT = 20.0                # a case still running then is interrupted (and is a failure)
MEMORY_LIMIT = 64 << 20          # bytes a case may allocate at its peak (tracemalloc)
UNWIND_FIXTURES = (("Phases", 21), ("JitZoo", 21))
VM_TABLES = {   # gHotSpot<prefix>ArrayStride / <name>Offset symbols, and the symbol holding the table
    "VMStructEntry": ("gHotSpotVMStructs",
                      ("TypeName", "FieldName", "TypeString", "IsStatic", "Offset", "Address")),
    "VMTypeEntry": ("gHotSpotVMTypes",
                    ("TypeName", "SuperclassName", "IsOopType", "IsIntegerType", "IsUnsigned", "Size")),
    "VMIntConstantEntry": ("gHotSpotVMIntConstants", ("Name", "Value")),
    "VMLongConstantEntry": ("gHotSpotVMLongConstants", ("Name", "Value")),
}


class CaseHang(BaseException):
    """Raised by SIGALRM in a case past HANG_LIMIT (a BaseException: no `except Exception` swallows it)."""


class BrokenPromise(AssertionError):
    """A reader answered, but with something its documentation rules out."""


def promise(condition: bool, what: str) -> None:
    if not condition:
        raise BrokenPromise(what)


# ---- the worlds: memory of real JVMs ------------------------------------------------------------------
@dataclass
class VmTable:
    prefix: str
    pointer_at: int                  # the gHotSpotVM* symbol that holds the table's address
    address: int
    stride: int
    count: int                       # entries before the NULL one
    layout_at: dict[str, int]        # "stride" / field name -> address of its gHotSpot...Offset symbol
    offsets: dict[str, int]          # field name -> offset inside an entry


@dataclass
class World:
    """One JVM's memory, captured once: everything a fuzz case of vmstructs/codecache/debuginfo/threads
    mutates. Pickled by bench/fuzz.py (--save/--load) so a failing case can be replayed on the same bytes."""

    cap: Capture
    symbols: ElfSymbols
    base: int
    tables: dict[str, VmTable]
    thread_list_at: int              # ThreadsSMRSupport::_java_thread_list, or Threads::_thread_list (11)
    smr: bool
    threads: list[int]               # JavaThread*s as read live
    _touched: dict[int, list[tuple[int, int]]] = field(default_factory=dict, repr=False)
    _targets: list[int] = field(default_factory=list, repr=False)

    def targets(self) -> list[int]:
        """Addresses inside captured memory, for self-referencing corruption (computed once)."""
        if not getattr(self, "_targets", None):   # (worlds pickled before this cache existed lack it)
            self._targets = self.cap.targets()
        return self._targets

    @property
    def version(self) -> int:
        return self.cap.version

    @property
    def layout(self) -> Layout:
        return self.cap.jvm.layout

    def memory(self, corrupt=None) -> ReplayMemory:
        return ReplayMemory(self.cap.regions, corrupt)

    def jvm(self, mem) -> HotSpotJvm:
        # our own pid: JavaThreads asks whether the target lives in another pid namespace (it does not)
        return dataclasses.replace(self.cap.jvm, reader=Reader(mem), pid=os.getpid(), memory=None)

    def touched_by_decoding(self, pc: int, blob: CodeBlobInfo) -> list[tuple[int, int]]:
        """(address, size) of every read a clean scopes_at(blob, pc) and line_of() made."""
        if pc not in self._touched:
            recorder = RecordingMemory(self.memory())
            reader = Reader(recorder)
            debug = DebugInfo(reader, self.layout, MethodResolver(reader, self.layout))
            for scope in debug.scopes_at(blob, pc):
                debug.line_of(scope.method, scope.bci)
            self._touched[pc] = sorted((a, len(d)) for a, d in recorder.seen.items())
        return self._touched[pc]


def capture_world(version: int) -> World:
    """Start a small CodeCacheChurn JVM, read everything the fuzz targets need through one recorder, and
    kill it."""
    proc = subprocess.Popen([java_bin(version), "-cp", str(CLASSES), "pyproftest.CodeCacheChurn", "3", "10"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jp = JavaProcess(proc, version)
    try:
        jp.wait_for("ready")
        jvm = HotSpotJvm.open(jp.pid)
        recorder = RecordingMemory(jvm.memory)
        reader = Reader(recorder)
        vm = read_vmstructs(reader, jvm.symbols, jvm.libjvm_base)
        Layout(vm, read_version(vm, reader), jvm.symbols, jvm.libjvm_base)
        tables = _vm_tables(reader, jvm.symbols, jvm.libjvm_base)
        live = dataclasses.replace(jvm, reader=reader)
        threads = JavaThreads(live)
        threads.refresh()
        for tid in threads.tids():
            threads.name(tid)
        _capture_thread_objects(live, threads._list or [])
        smr = threads._smr
        key = "ThreadsSMRSupport._java_thread_list" if smr else "Threads._thread_list"
        cap = capture_code_cache(jvm, recorder, version)
        jvm.close()
        return World(cap, jvm.symbols, jvm.libjvm_base, tables, jvm.layout[key].address, smr,
                     list(threads._list or []))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        jp.stop()


def _capture_thread_objects(jvm: HotSpotJvm, threads: list[int]) -> None:
    """Every byte of each JavaThread and its OSThread (the cases mutate fields a refresh never reads)."""
    size = jvm.layout.type_size("JavaThread", 1024)
    for thread in threads:
        try:
            jvm.reader.bytes(thread, size)
            osthread = jvm.reader.ptr(thread + jvm.layout.offset("JavaThread._osthread"))
            jvm.reader.bytes(osthread, jvm.layout.type_size("OSThread", 64))
        except MemoryReadError:
            continue


def _vm_tables(reader: Reader, symbols: ElfSymbols, base: int) -> dict[str, VmTable]:
    out = {}
    for prefix, (table_symbol, names) in VM_TABLES.items():
        def at(name: str) -> int:
            sym = symbols.lookup(name)
            assert sym is not None, name
            return base + sym.value
        layout_at = {"stride": at(f"gHotSpot{prefix}ArrayStride")}
        layout_at.update({n: at(f"gHotSpot{prefix}{n}Offset") for n in names})
        offsets = {n: reader.u64(layout_at[n]) for n in names}
        stride = reader.u64(layout_at["stride"])
        pointer_at = at(table_symbol)
        table = reader.u64(pointer_at)
        first = offsets[names[0]]
        count = 0
        while reader.u64(table + count * stride + first):
            count += 1
        out[prefix] = VmTable(prefix, pointer_at, table, stride, count, layout_at, offsets)
    return out


def save_worlds(worlds: list[World], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for w in worlds:
        with gzip.open(directory / f"world-jdk{w.version}.pickle.gz", "wb", compresslevel=1) as f:
            jvm = dataclasses.replace(w.cap.jvm, memory=None, reader=Reader(BytesMemory()))  # no open files
            bare = dataclasses.replace(w, cap=dataclasses.replace(w.cap, jvm=jvm), _touched={}, _targets=[])
            pickle.dump(bare, f)


def load_worlds(directory: Path) -> list[World]:
    """Worlds this fuzzer saved itself (trusted pickles of our own test data)."""
    out = []
    for path in sorted(directory.glob("world-jdk*.pickle.gz")):
        with gzip.open(path, "rb") as f:
            out.append(pickle.load(f))
    return out


def unwind_recordings() -> list[Recording]:
    return [load(fixture_path(workload, jdk)) for workload, jdk in UNWIND_FIXTURES]


# ---- mutation helpers ---------------------------------------------------------------------------------
def interesting(rng: random.Random, near: int = 0, width: int = 8, pointers: tuple[int, ...] = ()) -> int:
    """A value hostile memory is made of: boundaries, small shifts of the real value, pointers back into
    captured memory (cycles), garbage."""
    bits = 8 * width
    choices: list[Callable[[], int]] = [
        lambda: 0, lambda: 1, lambda: (1 << bits) - 1, lambda: (1 << (bits - 1)) - 1, lambda: 1 << (bits - 1),
        lambda: near + rng.choice((-1, 1)) * rng.choice((1, 4, 8, 16, 64, 4096)),
        lambda: near * 2, lambda: near ^ (1 << rng.randrange(bits)), lambda: rng.getrandbits(bits),
        lambda: rng.choice((100_000, 100_001, 20_000, 1 << 20, 1 << 31, 0x7F, 0x80, 0xFF)),
    ]
    if pointers:
        choices.append(lambda: rng.choice(pointers))
    return choices[rng.randrange(len(choices))]() & ((1 << bits) - 1)


def peek(mem, address: int, width: int = 8) -> int:
    """The captured value at `address`, or 0 where nothing was captured."""
    try:
        return int.from_bytes(mem.read(address, width), "little")
    except MemoryReadError:
        return 0


def patch_int(mem: ReplayMemory, address: int, value: int, width: int = 8) -> bool:
    """Write `value` at `address` if that memory was captured (a write elsewhere would change nothing)."""
    try:
        mem.patch(address, (value & ((1 << 8 * width) - 1)).to_bytes(width, "little"))
        return True
    except MemoryReadError:
        return False


def patch_bytes(mem: ReplayMemory, address: int, data: bytes) -> bool:
    try:
        mem.patch(address, data)
        return True
    except MemoryReadError:
        return False


def hostile_bytes(rng: random.Random, n: int) -> bytes:
    """Random, all-continuation (UNSIGNED5 0xFF..), zero, or repeated bytes."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(n)
    if kind == 1:
        return b"\xff" * n
    if kind == 2:
        return b"\x00" * n
    return bytes([rng.randrange(256)]) * n


def whole_memory_corruption(world_targets: list[int], rng: random.Random):
    """One of the six corruptions of test_hostile_memory, applied to every read."""
    seed = rng.getrandbits(32)
    return rng.choice([
        lambda: flip_bytes(rng.choice((0.0005, 0.002, 0.01)), seed),
        lambda: random_reads(rng.choice((0.01, 0.05)), seed),
        lambda: self_references(0.02, seed, world_targets),
        lambda: constant_bytes(0.05, seed, rng.choice((0x00, 0xFF))),
        lambda: dying(rng.randrange(1, 2000)),
    ])()


# ---- a case: a mutation and the calls that must survive it --------------------------------------------
Run = Callable[[], Optional[str]]     # None: ok; CHANGED: ok, answers differ; other: expected, counted
CHANGED = "changed"                   # answered, differently from the clean memory (the mutation was felt)


@dataclass
class Case:
    mutation: str
    run: Run


def vmstructs_case(world: World, rng: random.Random) -> Case:
    mem = world.memory()
    table = world.tables[rng.choice(list(world.tables))]
    kind = rng.choice(("stride", "entry-offset", "table-pointer", "entry-word", "field-offset",
                       "type-size", "name", "table-end", "early-end", "swap-names", "flip"))
    names = list(table.offsets)
    entry = table.address + rng.randrange(max(1, table.count)) * table.stride
    if kind == "stride":
        patch_int(mem, table.layout_at["stride"], interesting(rng, table.stride))
    elif kind == "entry-offset":
        name = rng.choice(names)
        patch_int(mem, table.layout_at[name], interesting(rng, table.offsets[name]))
    elif kind == "table-pointer":
        patch_int(mem, table.pointer_at, interesting(rng, table.address, pointers=(table.pointer_at, entry)))
    elif kind in ("entry-word", "field-offset", "type-size"):
        tables = {"field-offset": "VMStructEntry", "type-size": "VMTypeEntry"}
        if kind in tables:
            table = world.tables[tables[kind]]
            entry = table.address + rng.randrange(max(1, table.count)) * table.stride
            name = "Offset" if kind == "field-offset" else "Size"
        else:
            name = rng.choice(names)
        old = int.from_bytes(mem.read(entry + table.offsets[name], 8), "little")
        patch_int(mem, entry + table.offsets[name], interesting(rng, old, pointers=(entry, table.address)))
    elif kind == "name":
        name_ptr = int.from_bytes(mem.read(entry + table.offsets[names[0]], 8), "little")
        length = rng.randrange(1, 24)
        patch_bytes(mem, name_ptr + rng.randrange(8), hostile_bytes(rng, length))
    elif kind == "table-end":   # the NULL entry that ends the table is not there: it runs on
        end = table.address + table.count * table.stride
        patch_int(mem, end + table.offsets[names[0]], interesting(rng, entry, pointers=(entry,)) or 1)
    elif kind == "early-end":   # the table ends early: fields and types the layout needs are missing
        patch_int(mem, entry + table.offsets[names[0]], 0)
    elif kind == "swap-names":
        other = table.address + rng.randrange(max(1, table.count)) * table.stride
        a = mem.read(entry, table.stride)
        b = mem.read(other, table.stride)
        patch_bytes(mem, entry, b[:8] + a[8:])
        patch_bytes(mem, other, a[:8] + b[8:])
    else:
        for _ in range(rng.randrange(1, 32)):
            address = table.address + rng.randrange(max(1, table.count * table.stride))
            patch_bytes(mem, address, bytes([rng.randrange(256)]))

    def run() -> Optional[str]:
        reader = Reader(mem)
        vm = read_vmstructs(reader, world.symbols, world.base)
        layout = Layout(vm, read_version(vm, reader), world.symbols, world.base)
        # what the decoded layout is first used for: the code heaps, PC lookups, the thread list
        jvm = dataclasses.replace(world.jvm(mem), vm=vm, layout=layout)
        cache = CodeCache(jvm)
        for pc, _blob in rng.sample(world.cap.pcs, min(4, len(world.cap.pcs))):
            found = cache.blob_at(pc)
            promise(found is None or found.contains(pc), "blob_at answered a blob without the PC")
        threads = JavaThreads(jvm)
        threads.refresh()
        return CHANGED if vm.fields != world.cap.jvm.vm.fields or vm.types != world.cap.jvm.vm.types else None
    return Case(kind, run)


def codecache_case(world: World, rng: random.Random) -> Case:
    lay, cap = world.layout, world.cap
    mem = world.memory()
    kind = rng.choice(("heaps-array", "heap-field", "segmap", "heap-block", "blob-header", "blob-header",
                       "blob-name", "flip-heap", "whole-memory"))
    heap = rng.choice(cap.heaps)
    blobs = [b for b in cap.snapshot.blobs if b.heap == heap.index] or cap.snapshot.blobs
    blob = rng.choice(blobs)
    reader = Reader(world.memory())
    if kind == "heaps-array":
        array = reader.ptr(lay["CodeCache._heaps"].address)
        key = rng.choice(("GrowableArray._len", "GrowableArray._data"))
        width = 4 if key.endswith("_len") else 8
        patch_int(mem, array + lay.offset(key), interesting(rng, reader.uint(array + lay.offset(key), width),
                                                             width, pointers=(array,)), width)
    elif kind == "heap-field":
        data = reader.ptr(reader.ptr(lay["CodeCache._heaps"].address) + lay.offset("GrowableArray._data"))
        code_heap = reader.ptr(data + 8 * heap.index)
        field_key = rng.choice(("_log2_segment_size", "_memory._low_boundary", "_memory._high",
                                "_memory._high_boundary", "_segmap._low"))
        if field_key == "_log2_segment_size":
            address, width = code_heap + lay.offset("CodeHeap._log2_segment_size"), 4
        else:
            space, name = field_key.split(".")
            address = code_heap + lay.offset(f"CodeHeap.{space}") + lay.offset(f"VirtualSpace.{name}")
            width = 8
        patch_int(mem, address, interesting(rng, reader.uint(address, width), width,
                                            pointers=(heap.low_boundary, heap.segmap_low)), width)
    elif kind == "segmap":
        segments = heap.committed // heap.segment_size
        start = rng.randrange(max(1, segments))
        patch_bytes(mem, heap.segmap_low + start, hostile_bytes(rng, min(rng.choice((1, 4, 64, 4096)),
                                                                          max(1, segments - start))))
    elif kind == "heap-block":
        field_ = lay.fields.get("HeapBlock._length")
        offset, width = (field_.offset, field_.size) if field_ else (0, 8)
        block = blob.address - lay.heap_block_size
        if rng.random() < 0.5:
            patch_int(mem, block + offset, interesting(rng, blob.size // heap.segment_size, width), width)
        else:   # the _used flag after the length
            patch_int(mem, block + offset + width, rng.randrange(256), 1)
    elif kind == "blob-header":
        keys = [k for k, f in lay.fields.items() if k.split(".")[0] in ("CodeBlob", "nmethod")
                and not f.address and f.offset < 256 and f.size in (1, 2, 4, 8)]
        key = rng.choice(keys)
        f = lay.fields[key]
        old = reader.uint(blob.address + f.offset, f.size)
        patch_int(mem, blob.address + f.offset, interesting(rng, old, f.size, pointers=(
            blob.address, blob.code_begin, blob.address + blob.size)), f.size)
    elif kind == "blob-name":
        name_ptr = reader.ptr(blob.address + lay["CodeBlob._name"].offset)
        patch_bytes(mem, name_ptr + rng.randrange(4), hostile_bytes(rng, rng.randrange(1, 16)))
    elif kind == "flip-heap":
        for _ in range(rng.randrange(1, 64)):
            at = rng.randrange(heap.low_boundary, heap.committed_end)
            patch_bytes(mem, at, bytes([rng.randrange(256)]))
    else:
        mem = world.memory(whole_memory_corruption(world.targets(), rng))
    pcs = rng.sample(cap.pcs, min(8, len(cap.pcs)))

    def run() -> Optional[str]:
        cache = CodeCache(world.jvm(mem))
        try:
            snap: Optional[CodeCacheSnapshot] = cache.walk()
        except MemoryReadError:
            snap = None     # the heap table itself is unreadable: still answer PC lookups (or refuse)
        for pc, _blob in pcs:
            try:
                found = cache.blob_at(pc)
            except MemoryReadError:
                continue
            promise(found is None or found.contains(pc), "blob_at answered a blob without the PC")
        if snap is None:
            return "MemoryReadError"
        _check_snapshot(snap)
        if snap.stats.invalid_total or snap.stats.method_failures:
            return "counted-invalid"
        return CHANGED if len(snap.blobs) != len(cap.snapshot.blobs) else None
    return Case(kind, run)


def _check_snapshot(snap: CodeCacheSnapshot) -> None:
    previous_end = 0
    for b in snap.blobs:
        promise(b.size > 0 and b.address <= b.code_begin <= b.code_end <= b.address + b.size,
                f"blob 0x{b.address:x} with an impossible code range")
        promise(b.address >= previous_end, "blobs overlap")
        previous_end = b.address + b.size
        heap = snap.heaps[b.heap]
        promise(heap.low_boundary <= b.address and b.address + b.size <= heap.committed_end,
                "blob outside its heap")


def debuginfo_case(world: World, rng: random.Random) -> Case:
    lay = world.layout
    nmethod_pcs = [(pc, b) for pc, b in world.cap.pcs if b.is_nmethod and b.method is not None]
    pc, blob = rng.choice(nmethod_pcs)
    touched = world.touched_by_decoding(pc, blob)
    mem = world.memory()
    kind = rng.choice(("touched-bytes", "touched-bytes", "touched-word", "unsigned5", "nmethod-offset",
                       "fail-read", "whole-memory", "stale-blob"))
    corrupt = None
    asked = blob
    if kind == "touched-bytes":
        for _ in range(rng.randrange(1, 8)):
            address, size = rng.choice(touched)
            patch_bytes(mem, address + rng.randrange(size), bytes([rng.randrange(256)]))
    elif kind == "touched-word":
        address, size = rng.choice([t for t in touched if t[1] >= 8] or touched)
        at = address + rng.randrange(max(1, size - 7))
        patch_int(mem, at, interesting(rng, int.from_bytes(mem.read(at, min(8, size)), "little"),
                                       pointers=(at, blob.address, blob.method_ptr)), min(8, size))
    elif kind == "unsigned5":   # runs of continuation / zero / random bytes inside the read streams
        address, size = rng.choice(touched)
        start = rng.randrange(size)
        patch_bytes(mem, address + start, hostile_bytes(rng, min(size - start, rng.randrange(1, 12))))
    elif kind == "nmethod-offset":
        keys = [k for k, f in lay.fields.items() if k.startswith("nmethod.") and not f.address
                and f.size in (2, 4, 8) and any(s in k for s in ("offset", "_begin", "_end", "data", "pcs"))]
        key = rng.choice(keys)
        f = lay.fields[key]
        old = int.from_bytes(mem.read(blob.address + f.offset, f.size), "little")
        patch_int(mem, blob.address + f.offset, interesting(rng, old, f.size), f.size)
    elif kind == "fail-read":   # one of the reads the decoding needs fails (freed, unmapped)
        address, _size = rng.choice(touched)

        def fail(a: int, data: bytes) -> bytes:
            if a <= address < a + max(1, len(data)):
                raise MemoryReadError(f"0x{a:x} gone")
            return data
        corrupt = fail
    elif kind == "stale-blob":   # the code-cache map's answer is stale: freed, moved, or another nmethod's
        other = rng.choice(nmethod_pcs)[1]
        key = rng.choice(("address", "code_begin", "code_end", "size", "compile_id", "method_ptr"))
        value = getattr(other, key) if rng.random() < 0.5 else interesting(rng, getattr(blob, key), pointers=(
            other.address, other.code_begin, blob.address))
        asked = dataclasses.replace(blob, **{key: value})
    else:
        corrupt = whole_memory_corruption(world.targets(), rng)
    if corrupt is not None:
        mem.corrupt = corrupt
    others = [rng.randrange(blob.code_begin, blob.code_end) for _ in range(2)]

    def run() -> Optional[str]:
        reader = Reader(mem)
        debug = DebugInfo(reader, lay, MethodResolver(reader, lay))
        changed = debug.scopes_at(asked, pc) != world.cap.scopes[pc]
        for at in [pc, *others]:
            chain = debug.scopes_at(asked, at)
            promise(isinstance(chain, tuple) and len(chain) <= MAX_SCOPES, "scope chain unbounded")
            for scope in chain:
                promise(isinstance(scope, JavaScope) and isinstance(scope.line, int), "not a scope")
                promise(isinstance(debug.line_of(scope.method, scope.bci), int), "line not an int")
        return CHANGED if changed else None
    return Case(kind, run)


def threads_case(world: World, rng: random.Random) -> Case:
    lay = world.layout
    mem = world.memory()
    reader = Reader(world.memory())
    threads = world.threads or [0]
    thread = rng.choice(threads)
    pointers = tuple(threads) + (world.thread_list_at,)
    kinds = ["list-pointer", "thread-field", "thread-field", "osthread", "whole-memory"]
    kinds += ["smr-length", "smr-array", "smr-element"] if world.smr else ["next", "next-cycle", "next-cycle"]
    kind = rng.choice(kinds)
    tlist = reader.ptr(world.thread_list_at)
    if kind == "list-pointer":
        patch_int(mem, world.thread_list_at, interesting(rng, tlist, pointers=pointers))
    elif kind == "smr-length":
        at = tlist + lay.offset("ThreadsList._length")
        patch_int(mem, at, interesting(rng, peek(mem, at, 4), 4), 4)
    elif kind == "smr-array":
        at = tlist + lay.offset("ThreadsList._threads")
        patch_int(mem, at, interesting(rng, peek(mem, at), pointers=pointers))
    elif kind == "smr-element":
        array = reader.ptr(tlist + lay.offset("ThreadsList._threads"))
        for _ in range(rng.randrange(1, 4)):
            at = array + 8 * rng.randrange(len(threads))
            patch_int(mem, at, interesting(rng, thread, pointers=pointers))
    elif kind == "next":
        patch_int(mem, thread + lay.offset("JavaThread._next"), interesting(rng, thread, pointers=pointers))
    elif kind == "next-cycle":   # a thread's _next leads back to itself or an earlier thread
        i = rng.randrange(len(threads))
        patch_int(mem, threads[i] + lay.offset("JavaThread._next"), threads[rng.randrange(i + 1)])
    elif kind == "thread-field":
        keys = [k for k in ("JavaThread._osthread", "JavaThread._stack_base", "JavaThread._threadObj",
                            "JavaThread._anchor", "JavaThread._next") if lay.has(k)]
        at = thread + lay.offset(rng.choice(keys))
        patch_int(mem, at, interesting(rng, peek(mem, at), pointers=pointers))
    elif kind == "osthread":
        osthread = reader.ptr(thread + lay.offset("JavaThread._osthread"))
        patch_int(mem, osthread + lay.offset("OSThread._thread_id"), interesting(rng, 1000, 4), 4)
    else:
        mem = world.memory(whole_memory_corruption(world.targets(), rng))

    def run() -> Optional[str]:
        java_threads = JavaThreads(world.jvm(mem))
        java_threads.refresh()
        java_threads.refresh()
        for tid in java_threads.tids()[:50]:
            name = java_threads.name(tid)
            promise(name is None or isinstance(name, str), "thread name not a str")
        promise(len(java_threads.anchor_addresses()) == len(java_threads.tids()), "anchors do not match tids")
        return CHANGED if java_threads._list != world.threads else None
    return Case(kind, run)


def unwind_case(rec: Recording, rng: random.Random) -> Case:
    recorded = rng.choice(rec.samples)
    sample = recorded.raw
    stack = bytearray(sample.stack)
    kind = rng.choice(("stack-bytes", "stack-words", "stack-words", "stack-length", "registers", "anchor",
                       "lookups", "memory", "thread-list", "kernel-ips", "fp-chain"))
    code_pcs = tuple(rng.randrange(b.code_begin, max(b.code_begin + 1, b.code_end))
                     for b in rng.sample(rec.blobs, min(8, len(rec.blobs))))
    in_stack = tuple(sample.sp + rng.randrange(0, max(8, len(stack)), 8) for _ in range(4))
    pointers = code_pcs + in_stack + (sample.sp, sample.bp, sample.ip)
    changes: dict[str, int] = {}
    lookup = rec.lookup_blob
    corrupt = None
    java_tids = rec.java_tids
    if kind == "stack-bytes" and stack:
        for _ in range(rng.randrange(1, 32)):
            stack[rng.randrange(len(stack))] = rng.randrange(256)
    elif kind == "stack-words" and len(stack) >= 8:
        for _ in range(rng.randrange(1, 8)):
            at = rng.randrange(len(stack) // 8) * 8
            old = int.from_bytes(stack[at : at + 8], "little")
            word = interesting(rng, old, pointers=pointers + (sample.sp + at,))
            stack[at : at + 8] = word.to_bytes(8, "little")
    elif kind == "stack-length":
        cut = rng.randrange(len(stack) + 1)
        stack = stack[:cut] + bytearray(rng.randbytes(rng.choice((0, 0, 8, 64))))
    elif kind == "registers":
        for reg in rng.sample(("ip", "sp", "bp", "r13"), rng.randrange(1, 4)):
            changes[reg] = interesting(rng, getattr(sample, reg), pointers=pointers)
    elif kind == "anchor":
        for reg in rng.sample(("anchor_sp", "anchor_pc", "anchor_fp"), rng.randrange(1, 4)):
            changes[reg] = interesting(rng, getattr(sample, reg) or sample.sp, pointers=pointers)
    elif kind == "lookups":   # the code-cache map answers wrongly: no blob, another blob, a stale one
        lie_rng = random.Random(rng.getrandbits(32))
        share = rng.choice((0.1, 0.3, 1.0))

        def lookup(pc: int, time_ns: int = 0) -> Optional[CodeBlobInfo]:
            if lie_rng.random() >= share:
                return rec.lookup_blob(pc, time_ns)
            return lie_rng.choice([None, lie_rng.choice(rec.blobs)])
    elif kind == "fp-chain" and len(stack) >= 64:   # saved frame pointers that loop, go down, or run long
        stack += bytearray(rng.choice((0, 4096, 32768)))
        slots = list(range(0, len(stack) - 16, 16))
        for at in rng.sample(slots, min(len(slots), rng.choice((1, 8, 512)))):
            target = sample.sp + rng.choice((at, at - 16, at + 16, rng.choice(slots)))
            stack[at : at + 16] = target.to_bytes(8, "little") + rng.choice(pointers).to_bytes(8, "little")
        changes["bp"] = sample.sp + rng.choice(slots)
    elif kind == "thread-list":   # the thread list is stale: a Java thread is not known, or the reverse
        java_tids = java_tids ^ frozenset({sample.tid})
    elif kind == "kernel-ips":
        changes["kernel_ips"] = tuple(interesting(rng, ip, pointers=pointers)  # type: ignore[assignment]
                                      for ip in sample.kernel_ips or (0,) * rng.randrange(1, 8))
    else:
        corrupt = whole_memory_corruption([a + len(d) // 2 for a, d in rec.regions], rng)
    raw: RawSample = dataclasses.replace(sample, stack=bytes(stack), **changes)

    def run() -> Optional[str]:
        jvm = rec.jvm(ReplayMemory(rec.regions, corrupt))
        unwinder = Unwinder(jvm, lookup, MethodResolver(jvm.reader, jvm.layout),  # type: ignore[arg-type]
                            RecordedThreads(java_tids), RecordedNatives(rec.natives, rec.rules),
                            rec.kernel_symbols())
        frames = unwinder.unwind(raw)
        promise(isinstance(frames, tuple) and all(isinstance(f, PhysicalFrame) for f in frames),
                "unwind did not return frames")
        if unwinder.stats.unknown_total:
            return "unknown-frames"
        return CHANGED if frames != recorded.frames else None
    return Case(kind, run)


# ---- running cases ------------------------------------------------------------------------------------
@dataclass
class Result:
    target: str
    case: int
    source: str              # jdkN (a world) or the unwind recording
    mutation: str
    outcome: str             # ok | expected | failure
    detail: str              # the expected label / the failure's reason
    seconds: float
    peak_bytes: int

    def replay_hint(self, seed: int) -> str:
        return f"seed {seed} target {self.target} case {self.case} ({self.source}, {self.mutation})"


@dataclass
class Fuzzer:
    worlds: list[World]
    recordings: list[Recording]
    seed: int
    time_limit: float = TIME_LIMIT
    memory_limit: int = MEMORY_LIMIT
    trace_memory: bool = True

    def case(self, target: str, case: int) -> tuple[str, Case]:
        rng = random.Random(f"{self.seed}/{target}/{case}")
        if target == "unwind":
            rec = self.recordings[rng.randrange(len(self.recordings))]
            return f"{rec.workload.lower()}-jdk{rec.jdk}", unwind_case(rec, rng)
        worlds = self.worlds
        if target == "threads" and rng.random() < 0.5:   # JDK 11's linked list as often as SMR lists
            worlds = [w for w in worlds if not w.smr] or worlds
        world = worlds[rng.randrange(len(worlds))]
        build = {"vmstructs": vmstructs_case, "codecache": codecache_case, "debuginfo": debuginfo_case,
                 "threads": threads_case}[target]
        return f"jdk{world.version}", build(world, rng)

    def run(self, target: str, case: int) -> Result:
        """Run one case; one over its time bound runs once more and fails only if slow again (the
        machine is shared: a scheduling stall of seconds is not the reader's doing)."""
        result = self._run_once(target, case)
        if result.outcome == "failure" and result.detail.startswith("took"):
            again = self._run_once(target, case)
            if again.outcome != "failure":
                return again
            again.detail = f"{result.detail}, again {again.seconds:.1f} s"
            return again
        return result

    def _run_once(self, target: str, case: int) -> Result:
        source, built = self.case(target, case)
        previous = signal.signal(signal.SIGALRM, _hang)
        if self.trace_memory:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, HANG_LIMIT)
        try:
            label = built.run()
            outcome, detail = ("expected", label) if label and label != CHANGED else ("ok", label or "same")
        except (MemoryReadError, PyprofError) as e:
            outcome, detail = "expected", type(e).__name__
        except CaseHang:
            outcome, detail = "failure", f"hang: still running after {HANG_LIMIT:.0f} s"
        except Exception as e:   # noqa: BLE001 - every other exception is what the fuzzer looks for
            outcome, detail = "failure", _describe(e)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        seconds = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1] - base if self.trace_memory else 0
        if outcome != "failure" and seconds > self.time_limit:
            outcome, detail = "failure", f"took {seconds:.1f} s (bound {self.time_limit:.0f} s)"
        if outcome != "failure" and peak > self.memory_limit:
            bound = self.memory_limit >> 20
            outcome, detail = "failure", f"allocated {peak >> 20} MiB at peak (bound {bound} MiB)"
        return Result(target, case, source, built.mutation, outcome, detail, seconds, peak)


def _hang(signum, frame) -> None:
    raise CaseHang()


def _describe(e: BaseException) -> str:
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno} ({where.name})" if where else ""
    return f"{type(e).__name__}: {e}{at}"


def run_cases(fuzzer: Fuzzer, target: str, cases: range) -> list[Result]:
    """Cases `cases` of `target` (tracemalloc on for their duration when the fuzzer traces memory)."""
    tracing = fuzzer.trace_memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    try:
        return [fuzzer.run(target, n) for n in cases]
    finally:
        if tracing:
            tracemalloc.stop()
