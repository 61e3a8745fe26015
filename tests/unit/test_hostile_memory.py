"""The code-cache reader on hostile memory: truncated, random and self-referential bytes instead of a JVM's.

Real memory first: for each JDK a small CodeCacheChurn JVM is read once (its code heaps, segment maps and
every byte a walk, PC lookups, method resolution and debug-info decoding touch). The JVM is then killed
and every test replays that capture through ReplayMemory, corrupted in seeded, reproducible ways, into
CodeCache.walk(), CodeCache.blob_at(), MethodResolver and DebugInfo. What they promise:
- walk(): never raises, except MemoryReadError when the CodeCache::_heaps table itself is unreadable;
  a blob that fails validation is counted in WalkStats.invalid, never returned;
- blob_at(): a blob containing the PC, None, or MemoryReadError;
- MethodResolver.resolve(): a MethodInfo or MemoryReadError (try_resolve: None);
- DebugInfo.scopes_at() / line_of(): never raise;
- all of them in bounded time.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Optional

import pytest

from pyprof.errors import MemoryReadError, ProcessExited
from pyprof.hotspot.codecache import (
    MAX_SEGMAP_HOPS,
    CodeBlobInfo,
    CodeCache,
    CodeCacheSnapshot,
    HeapInfo,
    WalkStats,
)
from pyprof.hotspot.debuginfo import MAX_SCOPES, DebugInfo, JavaScope
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.method import MethodInfo, MethodResolver
from pyprof.procfs.memory import BytesMemory, Reader, check_range
from tests.conftest import CLASSES, JDK_VERSIONS, JavaProcess, java_bin

CALL_LIMIT = 5.0      # CPU seconds a single call may take, however hostile the bytes (a clean walk: ~0.05 s)
WALL_LIMIT = 60.0     # and wall seconds (CPU time is the bound: a loaded machine stretches wall time, a
                      # loop does not stop burning CPU)
SEEDS = 12            # seeded corruptions per mode and JDK
PCS = 24              # sampled PCs per corrupted run


# ---- memory: record once, replay many times -----------------------------------------------------------
class RecordingMemory:
    """Passes reads through to the live process and keeps what they returned."""

    def __init__(self, mem) -> None:
        self.mem = mem
        self.seen: dict[int, bytes] = {}

    def read(self, address: int, size: int) -> bytes:
        data = self.mem.read(address, size)
        if len(data) > len(self.seen.get(address, b"")):
            self.seen[address] = data
        return data

    def regions(self) -> list[tuple[int, bytes]]:
        """What was read, merged into disjoint regions."""
        out: list[tuple[int, bytearray]] = []
        for address in sorted(self.seen):
            data = self.seen[address]
            if out and address <= out[-1][0] + len(out[-1][1]):
                start, buf = out[-1]
                tail = address + len(data) - (start + len(buf))
                if tail > 0:
                    buf += data[len(data) - tail:]
            else:
                out.append((address, bytearray(data)))
        return [(a, bytes(b)) for a, b in out]


Corruption = Callable[[int, bytes], bytes]   # (address, data read) -> data served, or MemoryReadError


class ReplayMemory:
    """Serves captured regions (bisect over their starts), optionally through a corruption."""

    def __init__(self, regions: list[tuple[int, bytes]], corrupt: Optional[Corruption] = None) -> None:
        self.starts = [a for a, _ in regions]
        self.data = [bytearray(d) for _, d in regions]
        self.corrupt = corrupt
        self.reads = 0

    def patch(self, address: int, data: bytes) -> None:
        i = self._region(address, len(data))
        off = address - self.starts[i]
        self.data[i][off : off + len(data)] = data

    def _region(self, address: int, size: int) -> int:
        i = bisect.bisect_right(self.starts, address) - 1
        if i < 0 or address + size > self.starts[i] + len(self.data[i]):
            raise MemoryReadError(f"0x{address:x}+{size} not captured")
        return i

    def read(self, address: int, size: int) -> bytes:
        check_range(address, size)
        self.reads += 1
        i = self._region(address, size)
        off = address - self.starts[i]
        data = bytes(self.data[i][off : off + size])
        return self.corrupt(address, data) if self.corrupt else data


def flip_bytes(rate: float, seed: int) -> Corruption:
    """Each byte is replaced by a random one with probability `rate`."""
    rng = random.Random(seed)

    def corrupt(address: int, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(_binomial(rng, len(out), rate)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    return corrupt


def random_reads(share: float, seed: int) -> Corruption:
    """A share of the reads return random bytes instead."""
    rng = random.Random(seed)

    def corrupt(address: int, data: bytes) -> bytes:
        return rng.randbytes(len(data)) if rng.random() < share else data
    return corrupt


def self_references(rate: float, seed: int, targets: list[int]) -> Corruption:
    """8-byte words become pointers back into what is being read, or into other captured memory: cycles
    through Method* / ConstMethod* / Symbol* / scope offsets instead of plain garbage."""
    rng = random.Random(seed)

    def corrupt(address: int, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(_binomial(rng, len(out) // 8, rate)):
            word = rng.randrange(len(out) // 8) * 8 if len(out) >= 8 else None
            if word is None:
                break
            target = address + rng.randrange(-64, 64) if rng.random() < 0.5 else rng.choice(targets)
            out[word : word + 8] = (target & (2**64 - 1)).to_bytes(8, "little")
        return bytes(out)
    return corrupt


def constant_bytes(share: float, seed: int, value: int) -> Corruption:
    """A share of the reads return all-zero or all-0xFF bytes (never-written or poisoned memory)."""
    rng = random.Random(seed)

    def corrupt(address: int, data: bytes) -> bytes:
        return bytes([value]) * len(data) if rng.random() < share else data
    return corrupt


def dying(after_reads: int) -> Corruption:
    """The process exits after `after_reads` reads: every later read fails."""
    count = [0]

    def corrupt(address: int, data: bytes) -> bytes:
        count[0] += 1
        if count[0] > after_reads:
            raise MemoryReadError(f"read 0x{address:x}: No such process")
        return data
    return corrupt


def _binomial(rng: random.Random, n: int, p: float) -> int:
    mean = n * p
    return max(0, int(rng.gauss(mean, mean ** 0.5))) if mean > 20 else sum(rng.random() < p for _ in range(n))


# ---- the capture --------------------------------------------------------------------------------------
@dataclass
class Capture:
    version: int
    jvm: HotSpotJvm                     # libjvm symbols, VMStructs, layout of the JVM the bytes came from
    regions: list[tuple[int, bytes]]
    heaps: list[HeapInfo]
    snapshot: CodeCacheSnapshot         # the walk of the live JVM
    pcs: list[tuple[int, CodeBlobInfo]]
    scopes: dict[int, tuple[JavaScope, ...]]   # pc -> DebugInfo.scopes_at(blob, pc), live

    def memory(self, corrupt: Optional[Corruption] = None) -> ReplayMemory:
        return ReplayMemory(self.regions, corrupt)

    def on(self, mem) -> HotSpotJvm:
        return dataclasses.replace(self.jvm, reader=Reader(mem))

    def targets(self) -> list[int]:
        rng = random.Random(self.version)
        return [a + rng.randrange(len(d)) for a, d in self.regions for _ in range(4)]


def capture(version: int) -> Capture:
    proc = subprocess.Popen([java_bin(version), "-cp", str(CLASSES), "pyproftest.CodeCacheChurn", "3", "10"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jp = JavaProcess(proc, version)
    try:
        jp.wait_for("ready")
        jvm = HotSpotJvm.open(jp.pid)
        return capture_code_cache(jvm, RecordingMemory(jvm.memory), version)
    finally:
        proc.stdin.close()
        jp.stop()


def capture_code_cache(jvm: HotSpotJvm, recorder: RecordingMemory, version: int) -> Capture:
    """Read a live JVM's code cache through `recorder` (which may already hold other reads)."""
    live = dataclasses.replace(jvm, reader=Reader(recorder))
    cache = CodeCache(live)
    heaps = cache.heaps()
    for heap in heaps:   # the whole committed heap and its segment map, not only what a walk touches
        for start in range(heap.low_boundary, heap.committed_end, 1 << 20):
            recorder.read(start, min(1 << 20, heap.committed_end - start))
        recorder.read(heap.segmap_low, heap.committed // heap.segment_size)
    snapshot = cache.walk()
    rng = random.Random(version)
    nmethods = [b for b in snapshot.blobs if b.is_nmethod and b.method is not None]
    others = [b for b in snapshot.blobs if not b.is_nmethod]
    picked = rng.sample(nmethods, min(60, len(nmethods))) + rng.sample(others, min(10, len(others)))
    pcs = [(rng.randrange(b.code_begin, b.code_end), b) for b in picked]
    debug = DebugInfo(live.reader, live.layout, cache.resolver)
    direct = MethodResolver(live.reader, live.layout)
    scopes = {}
    for pc, blob in pcs:
        assert cache.blob_at(pc) == blob
        scopes[pc] = debug.scopes_at(blob, pc)
    for blob in nmethods:
        direct.resolve(blob.method_ptr)
    return Capture(version, jvm, recorder.regions(), heaps, snapshot, pcs, scopes)


@pytest.fixture(scope="module", params=JDK_VERSIONS, ids=[f"jdk{v}" for v in JDK_VERSIONS])
def captured(request) -> Capture:
    cap = capture(request.param)
    yield cap
    cap.jvm.close()


def timed(call: Callable[..., object], *args, **kwargs) -> tuple[object, Optional[MemoryReadError]]:
    """call(*args, **kwargs) -> (result, None) or (None, the MemoryReadError); anything else propagates and
    fails the test, and so does a call slower than CALL_LIMIT."""
    started, started_cpu = time.monotonic(), time.thread_time()
    try:
        result, error = call(*args, **kwargs), None
    except MemoryReadError as e:
        result, error = None, e
    cpu, elapsed = time.thread_time() - started_cpu, time.monotonic() - started
    assert cpu < CALL_LIMIT and elapsed < WALL_LIMIT, f"{call} took {cpu:.1f} s of CPU, {elapsed:.1f} s"
    return result, error


def _raised_in(error: BaseException) -> set[str]:
    """The functions an exception passed through."""
    names, tb = set(), error.__traceback__
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names


def blob_key(b: CodeBlobInfo) -> tuple:
    return b.address, b.size, b.kind, b.name, b.code_begin, b.code_end, b.compile_id, b.method_name


# ---- the capture is complete --------------------------------------------------------------------------
def test_replayed_capture_reads_like_the_live_jvm(captured: Capture) -> None:
    # GIVEN the captured bytes, served unchanged
    jvm = captured.on(captured.memory())
    cache = CodeCache(jvm)
    # WHEN the code cache is walked, PCs looked up and inlining decoded from them
    snap = cache.walk()
    debug = DebugInfo(jvm.reader, jvm.layout, cache.resolver)
    # THEN everything matches what the live JVM gave (so corrupted replays test real decoding paths)
    assert [blob_key(b) for b in snap.blobs] == [blob_key(b) for b in captured.snapshot.blobs]
    assert len(snap.nmethods) > 50 and snap.stats.invalid_total == 0 and snap.stats.method_failures == 0
    for pc, blob in captured.pcs:
        assert cache.blob_at(pc) == blob
        assert debug.scopes_at(blob, pc) == captured.scopes[pc]
    assert any(len(chain) > 0 for chain in captured.scopes.values())


# ---- seeded corruption --------------------------------------------------------------------------------
MODES = {
    "flip": lambda cap, seed: flip_bytes(0.002, seed),
    "random-reads": lambda cap, seed: random_reads(0.05, seed),
    "self-references": lambda cap, seed: self_references(0.02, seed, cap.targets()),
    "zeros": lambda cap, seed: constant_bytes(0.05, seed, 0x00),
    "ones": lambda cap, seed: constant_bytes(0.05, seed, 0xFF),
    "dying": lambda cap, seed: dying(random.Random(seed).randrange(1, 400)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_reader_survives_corrupted_memory(captured: Capture, mode: str) -> None:
    walks = [_corrupted_run(captured, MODES[mode](captured, seed), seed) for seed in range(SEEDS)]
    # AND over the seeds, the corruption was felt: damaged blob headers were refused and counted in
    # WalkStats (modes that damage bytes inside reads), or walks came out different or failed (the others)
    clean = len(captured.snapshot.blobs)
    if mode in ("flip", "self-references"):
        assert sum(w.stats.invalid_total for w in walks if w is not None) > 0, "no header was ever hit"
    assert any(w is None or w.stats.invalid_total or w.stats.method_failures or len(w.blobs) != clean
               for w in walks), "the corruption changed nothing"


def _corrupted_run(captured: Capture, corrupt: Corruption, seed: int) -> Optional[CodeCacheSnapshot]:
    # GIVEN the captured memory, corrupted reproducibly
    jvm = captured.on(captured.memory(corrupt))
    cache = CodeCache(jvm)
    # WHEN it is walked
    snap, error = timed(cache.walk)
    # THEN the walk either fails on the heap table alone, or returns only blobs that pass validation
    if error is not None:
        assert _raised_in(error) & {"heaps", "_read_heaps", "_read_heap"}, error
    else:
        assert isinstance(snap, CodeCacheSnapshot)
        _assert_plausible(snap)
    # AND PC lookups, method resolution and debug info answer or refuse, in bounded time
    rng = random.Random(seed)
    debug = DebugInfo(jvm.reader, jvm.layout, cache.resolver)
    for pc, blob in rng.sample(captured.pcs, min(PCS, len(captured.pcs))):
        found, _ = timed(cache.blob_at, pc)
        assert found is None or (isinstance(found, CodeBlobInfo) and found.contains(pc))
        if blob.is_nmethod:
            info, _ = timed(cache.resolver.resolve, blob.method_ptr)
            assert info is None or isinstance(info, MethodInfo)
            info, error = timed(cache.resolver.try_resolve, blob.method_ptr)
            assert error is None and (info is None or isinstance(info, MethodInfo))
        chain, error = timed(debug.scopes_at, blob, pc)
        assert error is None and isinstance(chain, tuple) and len(chain) <= MAX_SCOPES
        for scope in chain:
            assert isinstance(scope, JavaScope) and isinstance(scope.line, int)
            line, error = timed(debug.line_of, scope.method, scope.bci)
            assert error is None and isinstance(line, int)
    return snap


def _assert_plausible(snap: CodeCacheSnapshot) -> None:
    """What validation guarantees of every returned blob, whatever the bytes were."""
    previous_end = 0
    for b in snap.blobs:
        assert b.size > 0 and b.address <= b.code_begin <= b.code_end <= b.address + b.size
        assert b.address >= previous_end, "blobs overlap"
        previous_end = b.address + b.size
        heap = snap.heaps[b.heap]
        assert heap.low_boundary <= b.address and b.address + b.size <= heap.committed_end
        if b.is_nmethod and b.method is not None:
            assert isinstance(b.method_name, str)
    stats = snap.stats
    assert isinstance(stats, WalkStats) and stats.blocks >= len(snap.blobs)


# ---- targeted damage ----------------------------------------------------------------------------------
def _first(cap: Capture, predicate: Callable[[CodeBlobInfo], bool], skip: int = 0) -> CodeBlobInfo:
    return [b for b in cap.snapshot.blobs if predicate(b)][skip]


def test_blobs_failing_validation_are_counted_not_returned(captured: Capture) -> None:
    # GIVEN one nmethod whose name pointer leaves libjvm and another whose size exceeds its block
    lay = captured.jvm.layout
    bad_name = _first(captured, lambda b: b.is_nmethod, 3)
    too_big = _first(captured, lambda b: b.is_nmethod, 7)
    mem = captured.memory()
    name = lay["CodeBlob._name"]
    mem.patch(bad_name.address + name.offset, (0x10).to_bytes(name.size, "little"))
    size = lay["CodeBlob._size"]
    mem.patch(too_big.address + size.offset, (too_big.size + (1 << 20)).to_bytes(size.size, "little"))
    # WHEN the heap is walked
    snap = CodeCache(captured.on(mem)).walk()
    # THEN exactly those two are missing and counted, with their reasons, and the rest is intact
    assert {b.address for b in captured.snapshot.blobs} - {b.address for b in snap.blobs} == {
        bad_name.address, too_big.address}
    assert snap.stats.invalid_total == 2
    assert any("name pointer" in reason for reason in snap.stats.invalid)
    assert any(reason.startswith("blob size") for reason in snap.stats.invalid)


def test_method_pointing_at_itself_resolves_to_nothing(captured: Capture) -> None:
    # GIVEN an nmethod whose Method* points at the nmethod itself, and a Method whose ConstMethod* points
    # back at the Method
    lay = captured.jvm.layout
    victim = _first(captured, lambda b: b.is_nmethod and b.method is not None, 5)
    other = _first(captured, lambda b: b.is_nmethod and b.method is not None, 9)
    mem = captured.memory()
    method = lay["nmethod._method"]
    mem.patch(victim.address + method.offset, victim.address.to_bytes(8, "little"))
    mem.patch(other.method_ptr + lay.offset("Method._constMethod"), other.method_ptr.to_bytes(8, "little"))
    # WHEN the heap is walked
    snap, error = timed(CodeCache(captured.on(mem)).walk)
    # THEN both are still listed (their headers are valid) and neither gets a made-up name from itself
    assert error is None
    got = {b.address: b for b in snap.blobs}
    for b in (victim, other):
        assert b.address in got
        assert got[b.address].method is None or got[b.address].method_name != b.method_name
    assert snap.stats.method_failures >= 1


def test_segment_map_that_only_hops_back_is_bounded(captured: Capture) -> None:
    # GIVEN a segment map whose every byte says "hop back one segment"
    heap = max(captured.heaps, key=lambda h: h.committed)
    mem = captured.memory()
    mem.patch(heap.segmap_low, b"\x01" * (heap.committed // heap.segment_size))
    cache = CodeCache(captured.on(mem))
    pcs = [pc for pc, _ in captured.pcs if heap.contains(pc)][:10]
    assert pcs
    for pc in pcs:
        # WHEN a PC in that heap is looked up
        found, error = timed(cache.blob_at, pc)
        # THEN it hops back to before the heap's start (None), or gives up at the hop limit
        segment = (pc - heap.low_boundary) // heap.segment_size
        if segment + 1 <= MAX_SEGMAP_HOPS:
            assert found is None and error is None
        else:
            assert error is not None and "hop limit" in str(error)


def test_heap_block_lengths_that_loop_or_overflow_end_the_walk(captured: Capture) -> None:
    # GIVEN a HeapBlock in the middle of a heap whose length is zero, and (separately) one of 2^32 - 1
    heap = max(captured.heaps, key=lambda h: len([b for b in captured.snapshot.blobs if b.heap == h.index]))
    in_heap = [b for b in captured.snapshot.blobs if b.heap == heap.index]
    middle = in_heap[len(in_heap) // 2]
    lay = captured.jvm.layout
    block = middle.address - lay.heap_block_size
    # {size_t _length; bool _used} on 17/21; HeapBlock::Header {u4 _length; bool _used} (published) on 25
    field = lay.fields.get("HeapBlock._length")
    offset, width = (field.offset, field.size) if field else (0, 8)
    for length in (0, 2**32 - 1):
        mem = captured.memory()
        mem.patch(block + offset, length.to_bytes(width, "little"))
        # WHEN the heap is walked
        snap, error = timed(CodeCache(captured.on(mem)).walk)
        # THEN the walk stops there (never loops), keeping every blob before it
        assert error is None
        kept = [b.address for b in snap.blobs if b.heap == heap.index]
        assert kept == [b.address for b in in_heap if b.address < middle.address]


def test_implausible_heap_table_is_a_memory_read_error(captured: Capture) -> None:
    # GIVEN CodeCache::_heaps claiming 1000 heaps
    lay = captured.jvm.layout
    mem = captured.memory()
    array = Reader(mem).ptr(lay["CodeCache._heaps"].address)
    mem.patch(array + lay.offset("GrowableArray._len"), (1000).to_bytes(4, "little"))
    # WHEN the cache is walked
    # THEN the documented MemoryReadError, nothing else
    with pytest.raises(MemoryReadError, match="code heaps"):
        CodeCache(captured.on(mem)).walk()


def test_truncated_regions_fail_reads_not_the_reader(captured: Capture) -> None:
    # GIVEN every captured region cut to its first half (BytesMemory: the plain test double)
    mem = BytesMemory({a: d[: max(1, len(d) // 2)] for a, d in captured.regions})
    jvm = captured.on(mem)
    # WHEN walked, looked up and resolved
    snap, error = timed(CodeCache(jvm).walk)
    # THEN fewer blobs or the heap-table error, never anything else
    assert error is not None or len(snap.blobs) < len(captured.snapshot.blobs)
    resolver = MethodResolver(jvm.reader, jvm.layout)
    for _pc, blob in captured.pcs[:10]:
        assert timed(resolver.try_resolve, blob.method_ptr)[1] is None


def test_unsigned5_garbage_never_escapes_as_index_error() -> None:
    # GIVEN scope streams made of random bytes, in both encodings
    from pyprof.hotspot.debuginfo import parse_line_table, read_unsigned5
    rng = random.Random(7)
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(1, 12))
        for x1 in (False, True):
            # WHEN decoded THEN it is a value, or MemoryReadError / IndexError (what DebugInfo catches)
            try:
                read_unsigned5(data, 0, x1)
                parse_line_table(data, x1)
            except (MemoryReadError, IndexError):
                pass


# ---- the JVM exits in the middle of a walk ------------------------------------------------------------
def test_walk_of_a_dying_process_is_partial_and_counted(captured: Capture) -> None:
    # GIVEN memory that stops answering after the heap table and one read window
    reads_for_heaps = ReplayMemory(captured.regions)
    CodeCache(captured.on(reads_for_heaps)).heaps()
    mem = captured.memory(dying(reads_for_heaps.reads + 60))
    # WHEN walked
    snap, error = timed(CodeCache(captured.on(mem)).walk)
    # THEN the walk returns what it read before, and says the rest was unreadable
    assert error is None
    assert len(snap.blobs) < len(captured.snapshot.blobs)
    assert snap.stats.invalid["unreadable block"] >= 1 or snap.stats.method_failures > 0


def test_cli_reports_a_jvm_that_exits_mid_walk_in_one_line(monkeypatch, capsys) -> None:
    # GIVEN a process that will exit (killed, then left unreaped: a zombie) while its code cache is read
    victim = subprocess.Popen(["sleep", "60"])
    import pyprof.cli.codecache as cli_codecache
    from pyprof.cli.main import main
    from pyprof.sources.base import SourceChoice

    class DyingSource:
        name = "vmstructs"

        def snapshot(self) -> CodeCacheSnapshot:
            victim.kill()
            time.sleep(0.2)
            return CodeCacheSnapshot([], [], {}, WalkStats(invalid={"unreadable block": 1}), time.time())

        def close(self) -> None:
            pass

    monkeypatch.setattr(cli_codecache, "open_source", lambda pid, name: SourceChoice(DyingSource(), "test"))
    try:
        # WHEN ls runs
        code = main(["codecache", "ls", str(victim.pid), "--json"])
    finally:
        victim.wait()
    # THEN it exits 8 (the JVM exited) with one line and no partial JSON
    out = capsys.readouterr()
    assert code == ProcessExited.exit_code == 8
    assert out.out == ""
    expected = f"pyprof: error: process {victim.pid} exited while its code cache was read"
    assert out.err.strip().splitlines() == [expected]


def test_struct_errors_do_not_leak_from_short_buffers(captured: Capture) -> None:
    # GIVEN blob bytes cut short at every length below a full header
    cache = CodeCache(captured.on(captured.memory()))
    blob = _first(captured, lambda b: b.is_nmethod and b.method is not None)
    raw = Reader(captured.memory()).bytes(blob.address, 512)
    for cut in range(0, 512, 7):
        # WHEN decoded THEN MemoryReadError or a blob, never struct.error / IndexError
        try:
            cache.decode_blob(raw[:cut], 0, blob.address, 0)
        except MemoryReadError:
            pass
        except (struct.error, IndexError) as e:   # pragma: no cover - the failure being tested for
            pytest.fail(f"decode_blob leaked {e!r} at {cut} bytes")
