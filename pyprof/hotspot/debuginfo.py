"""Inlining and line numbers: an nmethod's PcDescs and scopes, a method's line-number table.

A compiled PC stands for a chain of Java methods (C2 inlines aggressively). HotSpot records, per
safepoint/call PC, a PcDesc {pc_offset, scope_decode_offset, obj_decode_offset, flags}; the scope at
scope_decode_offset in the scopes data is a compressed stream of (sender scope offset, metadata index,
bci + 1, ...) with the innermost method first; sender offset 0 ends the chain.
(src/hotspot/share/code/{pcDesc,scopeDesc,debugInfo,compressedStream}.cpp, utilities/unsigned5.hpp)

Return addresses have an exact PcDesc; for the top frame we take the first PcDesc at or after the PC
(the debug info of the next safepoint, as JFR does), or the last one before it (see nearest_scope).
Every read is bounded: PcDesc tables, scope chains
(MAX_SCOPES), stream lengths and metadata indexes are validated; a failure yields the nmethod's own
method with an unknown line, never an exception the caller did not ask for.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import Optional

from pyprof.errors import MemoryReadError
from pyprof.hotspot.codecache import CodeBlobInfo
from pyprof.hotspot.layout import DebugRanges, Layout
from pyprof.hotspot.method import MethodInfo, MethodResolver
from pyprof.lru import LRUCache
from pyprof.procfs.memory import Reader

MAX_SCOPES = 64
MAX_PCDESC_BYTES = 4 << 20
MAX_SCOPE_BYTES = 8 << 20
MAX_LINE_TABLE = 64 << 10
MAX_METADATA = 1 << 20
SCOPE_READ = 32            # bytes of scope stream read per scope record (3 ints of <= 5 bytes each)
BULK_DEBUG_BYTES = 32 << 10    # an nmethod's scopes and metadata up to this size are read in one go each
_PCDESC = struct.Struct("<iiii")
SYNCHRONIZATION_ENTRY_BCI = -1


@dataclass(frozen=True)
class JavaScope:
    """One Java frame inside a compiled frame."""

    method: MethodInfo
    method_ptr: int
    bci: int
    line: int        # 0 = unknown


def read_unsigned5(data: bytes, pos: int, excludes_zero: bool) -> tuple[int, int]:
    """One int of HotSpot's compressed stream; returns (value, new position).

    JDK <= 19: bytes < 192 end a value (L = 192), up to 5 bytes of base-64 digits.
    JDK 20+ (UNSIGNED5): every byte is offset by X = 1 so the stream never contains 0; L = 191.
    """
    x = 1 if excludes_zero else 0
    low = 192 - x                     # L
    b0 = data[pos] - x
    if b0 < 0:
        raise MemoryReadError("zero byte in an UNSIGNED5 stream")
    if b0 < low:
        return b0, pos + 1
    total = b0
    shift = 6
    for i in range(1, 5):
        bi = data[pos + i] - x
        if bi < 0:
            raise MemoryReadError("zero byte in an UNSIGNED5 stream")
        total += bi << shift
        if bi < low or i == 4:
            return total & 0xFFFFFFFF, pos + i + 1
        shift += 6
    raise MemoryReadError("unterminated compressed int")   # unreachable: i == 4 returns


def _signed(value: int) -> int:
    """Zig-zag decoding (CompressedReadStream::read_signed_int)."""
    return (value >> 1) ^ -(value & 1)


def _as_int32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def parse_line_table(data: bytes, excludes_zero: bool) -> list[tuple[int, int]]:
    """(bci, line) pairs of a CompressedLineNumberReadStream, up to its 0 terminator.

    0xFF escapes two zig-zag compressed ints (bci delta, line delta); any other byte packs
    bci delta = b >> 3 and line delta = b & 7. Raises IndexError when `data` ends first.
    """
    pos, bci, line = 0, 0, 0
    out: list[tuple[int, int]] = []
    while True:
        tag = data[pos]
        if tag == 0:
            return out
        if tag == 0xFF:
            d_bci, pos = read_unsigned5(data, pos + 1, excludes_zero)
            d_line, pos = read_unsigned5(data, pos, excludes_zero)
            bci += _signed(d_bci)
            line += _signed(d_line)
        else:
            bci += tag >> 3
            line += tag & 7
            pos += 1
        out.append((bci, line))


def nearest_scope(offsets: list[int], scopes: list[int], pc_offset: int) -> int:
    """The scope offset describing `pc_offset` (0: none).

    A return address has a PcDesc of its own. Other PCs (the top frame, or a call without debug info)
    take the first PcDesc at or after them that has a scope, as HotSpot's pc_desc_near() does; past the
    last one (the tail of a loop after its safepoint poll, or the epilogue: only the end sentinel, with
    no scope, follows) the last PcDesc before them, which keeps the right inlining chain where HotSpot
    would fall back to bci 0 of the outer method."""
    i = bisect.bisect_left(offsets, pc_offset)
    for j in range(i, len(offsets)):
        if scopes[j] > 0:
            return scopes[j]
    for j in range(min(i, len(offsets)) - 1, -1, -1):
        if scopes[j] > 0:
            return scopes[j]
    return 0


class DebugInfo:
    """Decodes inlining chains and lines with caches; one per JVM."""

    def __init__(self, reader: Reader, layout: Layout, resolver: MethodResolver) -> None:
        self.r = reader
        self.lay = layout
        self.resolver = resolver
        self.const_method_size = layout.type_size("ConstMethod", 56)
        self.line_bit = layout.has_linenumber_table_bit()
        self._pcdescs: LRUCache[tuple[int, int], tuple[list[int], list[int], DebugRanges]] = LRUCache(
            "nmethod -> PcDescs", 100_000)
        self._chains: LRUCache[tuple[int, int, int], tuple[JavaScope, ...]] = LRUCache(
            "pc -> inlining chain", 200_000)
        self._lines: LRUCache[int, Optional[list[tuple[int, int]]]] = LRUCache(
            "ConstMethod* -> lines", 200_000)
        # (nmethod, compile id, scope offset) -> chain: the many pcs a top frame lands on between two
        # PcDescs share the nearest one's scope, decoded once
        self._scope_chains: LRUCache[tuple[int, int, int], tuple[JavaScope, ...]] = LRUCache(
            "scope -> inlining chain", 200_000)
        # (nmethod, compile id) -> its scope stream and metadata array, read whole when the nmethod is
        # first decoded (two reads instead of two per scope of every new pc); None when too large
        self._bulk: LRUCache[tuple[int, int], Optional[tuple[bytes, bytes]]] = LRUCache(
            "nmethod -> scopes and metadata", 1_024)   # at most 64 MiB, typically a few
        self._generation = resolver.generation
        self.failures = 0
        self.available = layout.supports("debug info")
        self.lines_available = layout.supports("line numbers")

    # ---- compiled frames -------------------------------------------------------------------------
    def scopes_at(self, blob: CodeBlobInfo, pc: int) -> tuple[JavaScope, ...]:
        """Java frames at `pc` in nmethod `blob`, innermost first (empty if unknown)."""
        if not self.available or not blob.is_nmethod:
            return ()
        key = (blob.address, blob.compile_id, pc)
        cached = self._chains.get(key)
        if cached is not None:
            return cached
        try:
            chain = self._decode_chain(blob, pc - blob.code_begin)
        except (MemoryReadError, IndexError, struct.error):
            self.failures += 1
            chain = ()
        self._chains.put(key, chain)
        return chain

    def is_call_site(self, blob: CodeBlobInfo, pc: int) -> Optional[bool]:
        """Is return address `pc` a call site of nmethod `blob`, i.e. has it a PcDesc exactly there
        (HotSpot records one at the return address of every call that can reach a safepoint)? None when
        the PcDescs cannot be read (no debug info layout, or unreadable memory). For the unwinder: a
        caller is accepted only at a call site (pyprof.sampling.unwind)."""
        if not self.available or not blob.is_nmethod:
            return None
        try:
            offsets, _scopes, _ranges = self._pcdesc_table(blob)
        except (MemoryReadError, IndexError, struct.error):
            return None
        offset = pc - blob.code_begin
        i = bisect.bisect_left(offsets, offset)
        return i < len(offsets) and offsets[i] == offset

    def _pcdesc_table(self, blob: CodeBlobInfo) -> tuple[list[int], list[int], DebugRanges]:
        key = (blob.address, blob.compile_id)
        table = self._pcdescs.get(key)
        if table is None:
            head = self.r.bytes(blob.address, self.lay.nmethod_read_size)
            ranges = self.lay.debug_ranges(head, 0, blob.address)
            size = ranges.pcs_end - ranges.pcs_begin
            if not 0 < size <= MAX_PCDESC_BYTES or size % _PCDESC.size:
                raise MemoryReadError(f"implausible PcDesc table size {size}")
            raw = self.r.bytes(ranges.pcs_begin, size)
            offsets, scopes = [], []
            for pc_offset, scope_offset, _obj, _flags in _PCDESC.iter_unpack(raw):
                offsets.append(pc_offset)
                scopes.append(scope_offset)
            table = (offsets, scopes, ranges)
            self._pcdescs.put(key, table)
        return table

    def _decode_chain(self, blob: CodeBlobInfo, pc_offset: int) -> tuple[JavaScope, ...]:
        offsets, scopes, ranges = self._pcdesc_table(blob)
        scope_offset = nearest_scope(offsets, scopes, pc_offset)
        key = (blob.address, blob.compile_id, scope_offset)
        chain = self._scope_chains.get(key)
        if chain is None:
            chain = self._scope_chains.put(key, self._decode_scopes(blob, ranges, scope_offset))
        return chain

    def _decode_scopes(self, blob: CodeBlobInfo, ranges: DebugRanges, scope_offset: int
                       ) -> tuple[JavaScope, ...]:
        bulk = self._bulk_data(blob, ranges) if scope_offset > 0 else None
        chain: list[JavaScope] = []
        for _ in range(MAX_SCOPES):
            if scope_offset <= 0:   # serialized_null: no (more) scopes
                break
            sender, method_ptr, bci = self._read_scope(ranges, scope_offset, bulk)
            info = self.resolver.resolve(method_ptr)
            chain.append(JavaScope(info, method_ptr, bci, self.line_of(info, bci)))
            if sender >= scope_offset:   # senders are written before their callees: must go back
                break
            scope_offset = sender
        return tuple(chain)

    def _bulk_data(self, blob: CodeBlobInfo, ranges: DebugRanges) -> Optional[tuple[bytes, bytes]]:
        """The nmethod's whole scope stream and metadata array, read once (bounded); None when either is
        larger than BULK_DEBUG_BYTES or unreadable as a whole (then each scope is read on its own)."""
        key = (blob.address, blob.compile_id)
        found, bulk = self._bulk.lookup(key)
        if found:
            return bulk
        scopes_size = ranges.scopes_end - ranges.scopes_begin
        meta_size = ranges.metadata_end - ranges.metadata_begin
        bulk = None
        if 0 < scopes_size <= BULK_DEBUG_BYTES and 0 < meta_size <= BULK_DEBUG_BYTES:
            try:
                bulk = (self.r.bytes(ranges.scopes_begin, scopes_size),
                        self.r.bytes(ranges.metadata_begin, meta_size))
            except MemoryReadError:
                bulk = None
        return self._bulk.put(key, bulk)

    def _read_scope(self, ranges: DebugRanges, offset: int, bulk: Optional[tuple[bytes, bytes]] = None
                    ) -> tuple[int, int, int]:
        address = ranges.scopes_begin + offset
        if not ranges.scopes_begin <= address < ranges.scopes_begin + MAX_SCOPE_BYTES:
            raise MemoryReadError("scope offset out of range")
        if bulk is not None and offset + SCOPE_READ <= len(bulk[0]):
            data = bulk[0][offset:offset + SCOPE_READ]
        else:
            data = self.r.bytes(address, SCOPE_READ)
        x1 = ranges.unsigned5_excludes_zero
        sender, pos = read_unsigned5(data, 0, x1)
        index, pos = read_unsigned5(data, pos, x1)
        bci_plus_1, pos = read_unsigned5(data, pos, x1)
        count = (ranges.metadata_end - ranges.metadata_begin) // 8
        if not 0 < index <= min(count, MAX_METADATA):
            raise MemoryReadError(f"metadata index {index} outside 1..{count}")
        slot = 8 * (index - 1)
        if bulk is not None and slot + 8 <= len(bulk[1]):
            method_ptr = int.from_bytes(bulk[1][slot:slot + 8], "little")
        else:
            method_ptr = self.r.ptr(ranges.metadata_begin + slot)
        return sender, method_ptr, _as_int32(bci_plus_1) - 1

    # ---- line numbers ----------------------------------------------------------------------------
    def line_of(self, method: MethodInfo, bci: int) -> int:
        """The source line of `bci` (Method::line_number_from_bci), 0 if unknown.

        bci -1 (InvocationEntryBci / SynchronizationEntryBCI: a PcDesc at method entry, common for the
        top frame's nearest PcDesc) counts as bci 0, as HotSpot (and so JFR and stack traces) does."""
        if bci == SYNCHRONIZATION_ENTRY_BCI:
            bci = 0
        if bci < 0 or not method.const_method:
            return 0
        table = self._line_table(method)
        if not table:
            return 0
        best_bci, best_line = -1, 0
        for entry_bci, line in table:
            if entry_bci == bci:
                return line
            if best_bci < entry_bci <= bci:
                best_bci, best_line = entry_bci, line
        return best_line

    def bci_of_bcp(self, method: MethodInfo, bcp: int) -> int:
        """Interpreted frames: bci = bcp - (ConstMethod* + sizeof(ConstMethod))."""
        bci = bcp - (method.const_method + self.const_method_size)
        return bci if 0 <= bci < max(method.code_size, 1) else -1

    def _line_table(self, method: MethodInfo) -> Optional[list[tuple[int, int]]]:
        key = method.const_method
        if self._generation != self.resolver.generation:   # ConstMethods may have been freed and reused
            self._lines.clear()
            self._generation = self.resolver.generation
        found, cached = self._lines.lookup(key)
        if found:
            return cached
        table = None
        if self.lines_available and method.flags & self.line_bit:
            try:
                table = self._read_line_table(method)
            except (MemoryReadError, IndexError):
                self.failures += 1
        return self._lines.put(key, table)

    def _read_line_table(self, method: MethodInfo) -> list[tuple[int, int]]:
        """Read a growing prefix of the table until it parses to its terminator (bounded)."""
        start = method.const_method + self.const_method_size + method.code_size
        size = 256
        while True:
            data = self._fetch(start, size) or self._fetch(start, 16)
            if data is None:
                raise MemoryReadError("line-number table unreadable")
            try:
                return parse_line_table(data, bool(self.lay.unsigned5_excludes_zero))
            except IndexError:
                if len(data) < size or size >= MAX_LINE_TABLE:
                    raise MemoryReadError("line-number table without terminator") from None
                size *= 4

    def _fetch(self, address: int, size: int) -> Optional[bytes]:
        try:
            return self.r.bytes(address, size)
        except MemoryReadError:
            return None
