"""The one place where HotSpot versions differ.

Every structure pyprof reads is described here by the *names* HotSpot publishes in VMStructs, with the
aliases later JDKs renamed them to. Offsets and sizes always come from the running JVM. Where the
*meaning* of a field changed (absolute pointer on one JDK, offset from the blob on another), the
decoding lives here too, so the rest of pyprof sees one shape.

Version notes (x86_64), see docs/hotspot-versions.md:
- JDK 17/21: CodeBlob::_code_begin/_code_end are absolute pointers; nmethod's superclass is
  CompiledMethod (_method lives there); HeapBlock is 16 bytes (size_t length, bool used).
- JDK 21: nmethod::_comp_level shrinks from int to CompLevel (1 byte); ConstMethod::_flags becomes
  `_flags._flags` (u4).
- JDK 23+/25: CodeBlob holds int offsets (_code_offset, _data_offset) from the blob start; CodeBlob::_kind
  (CodeBlobKind::* constants) replaces name-based kinds; CompiledMethod is gone; nmethod's verified entry
  is a u2 offset (_verified_entry_offset) from code begin; HeapBlock is 8 bytes (u4 length, bool used,
  published as HeapBlock::Header); _frame_complete_offset is int16; Thread::_osthread moved up.
"""

from __future__ import annotations

import operator
import struct
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from pyprof.errors import UnsupportedJvm
from pyprof.hotspot.vmstructs import VMStructs


@dataclass(frozen=True)
class Field:
    """An instance field (offset/size in its object) or a static field (absolute address)."""

    name: str
    offset: int
    size: int
    address: int = 0
    signed: bool = False

    def get(self, buf: bytes, base: int = 0) -> int:
        """Decode this field from `buf`, where the object starts at `base` inside `buf`."""
        start = base + self.offset
        return int.from_bytes(buf[start : start + self.size], "little", signed=self.signed)


# (type, field names to try in order). The first name present in the JVM wins.
FIELD_SPECS: dict[str, tuple[str, tuple[str, ...]]] = {
    # CodeCache and its heaps
    "CodeCache._heaps": ("CodeCache", ("_heaps",)),
    "CodeCache._low_bound": ("CodeCache", ("_low_bound",)),
    "CodeCache._high_bound": ("CodeCache", ("_high_bound",)),
    "GrowableArray._len": ("GrowableArrayBase", ("_len",)),
    "GrowableArray._data": ("GrowableArray<int>", ("_data",)),  # same layout for every element type
    "CodeHeap._memory": ("CodeHeap", ("_memory",)),
    "CodeHeap._segmap": ("CodeHeap", ("_segmap",)),
    "CodeHeap._log2_segment_size": ("CodeHeap", ("_log2_segment_size",)),
    "VirtualSpace._low_boundary": ("VirtualSpace", ("_low_boundary",)),
    "VirtualSpace._high_boundary": ("VirtualSpace", ("_high_boundary",)),
    "VirtualSpace._low": ("VirtualSpace", ("_low",)),
    "VirtualSpace._high": ("VirtualSpace", ("_high",)),
    "HeapBlock._length": ("HeapBlock::Header", ("_length",)),   # 17 and 21 publish it too (16 bytes)
    "HeapBlock._used": ("HeapBlock::Header", ("_used",)),
    # CodeBlob
    "CodeBlob._name": ("CodeBlob", ("_name",)),
    "CodeBlob._size": ("CodeBlob", ("_size",)),
    "CodeBlob._header_size": ("CodeBlob", ("_header_size",)),
    "CodeBlob._frame_size": ("CodeBlob", ("_frame_size",)),
    "CodeBlob._frame_complete_offset": ("CodeBlob", ("_frame_complete_offset",)),
    "CodeBlob._code_begin": ("CodeBlob", ("_code_begin",)),     # absolute, JDK <= 22
    "CodeBlob._code_end": ("CodeBlob", ("_code_end",)),         # absolute, JDK <= 22
    "CodeBlob._code_offset": ("CodeBlob", ("_code_offset",)),   # relative, JDK 23+
    "CodeBlob._data_offset": ("CodeBlob", ("_data_offset",)),
    "CodeBlob._kind": ("CodeBlob", ("_kind",)),                 # JDK 23+
    "CodeBlob._mutable_data": ("CodeBlob", ("_mutable_data",)),  # JDK 25
    "CodeBlob._relocation_size": ("CodeBlob", ("_relocation_size",)),
    # nmethod (fields of CompiledMethod on 17/21 are found through the superclass chain)
    "nmethod._method": ("nmethod", ("_method",)),
    "nmethod._compile_id": ("nmethod", ("_compile_id",)),
    "nmethod._comp_level": ("nmethod", ("_comp_level",)),
    "nmethod._state": ("nmethod", ("_state",)),
    "nmethod._entry_bci": ("nmethod", ("_entry_bci",)),
    "nmethod._verified_entry_point": ("nmethod", ("_verified_entry_point",)),    # absolute, <= 24
    "nmethod._verified_entry_offset": ("nmethod", ("_verified_entry_offset",)),  # from code begin, 25
    "nmethod._orig_pc_offset": ("nmethod", ("_orig_pc_offset",)),
    "nmethod._deopt_handler_begin": ("nmethod", ("_deopt_handler_begin",)),      # absolute, <= 24
    "nmethod._deopt_handler_offset": ("nmethod", ("_deopt_handler_offset",)),    # from code begin, 25
    "nmethod._scopes_pcs_offset": ("nmethod", ("_scopes_pcs_offset",)),
    "nmethod._scopes_data_offset": ("nmethod", ("_scopes_data_offset",)),
    "nmethod._scopes_data_begin": ("nmethod", ("_scopes_data_begin",)),
    "nmethod._metadata_offset": ("nmethod", ("_metadata_offset",)),
    "nmethod._dependencies_offset": ("nmethod", ("_dependencies_offset",)),
    "nmethod._immutable_data": ("nmethod", ("_immutable_data",)),
    "nmethod._immutable_data_size": ("nmethod", ("_immutable_data_size",)),
    "CodeBlob._mutable_data_size": ("CodeBlob", ("_mutable_data_size",)),
    # Method metadata
    "Method._constMethod": ("Method", ("_constMethod",)),
    "Method._access_flags": ("Method", ("_access_flags",)),
    "ConstMethod._constants": ("ConstMethod", ("_constants",)),
    "ConstMethod._flags": ("ConstMethod", ("_flags._flags", "_flags")),
    "ConstMethod._code_size": ("ConstMethod", ("_code_size",)),
    "ConstMethod._name_index": ("ConstMethod", ("_name_index",)),
    "ConstMethod._signature_index": ("ConstMethod", ("_signature_index",)),
    "ConstantPool._pool_holder": ("ConstantPool", ("_pool_holder",)),
    "ConstantPool._length": ("ConstantPool", ("_length",)),
    "ConstantPool._source_file_name_index": ("ConstantPool", ("_source_file_name_index",)),
    "Klass._name": ("Klass", ("_name",)),
    "Symbol._length": ("Symbol", ("_length",)),
    "Symbol._body": ("Symbol", ("_body",)),
    # GC count: metaspace (Method*, ConstantPool*, Symbol*) is only freed and reused after a GC
    "Universe._collectedHeap": ("Universe", ("_collectedHeap",)),
    "CollectedHeap._total_collections": ("CollectedHeap", ("_total_collections",)),
    # VM identity
    "Abstract_VM_Version._s_vm_release": ("Abstract_VM_Version", ("_s_vm_release",)),
    "Abstract_VM_Version._vm_major_version": ("Abstract_VM_Version", ("_vm_major_version",)),
    "JVMFlag.flags": ("JVMFlag", ("flags",)),
    "JVMFlag.numFlags": ("JVMFlag", ("numFlags",)),
    "JVMFlag._name": ("JVMFlag", ("_name",)),
    "JVMFlag._addr": ("JVMFlag", ("_addr",)),
    # interpreter, stubs, threads (used by the unwinder)
    "AbstractInterpreter._code": ("AbstractInterpreter", ("_code",)),
    "StubQueue._stub_buffer": ("StubQueue", ("_stub_buffer",)),
    "StubQueue._buffer_limit": ("StubQueue", ("_buffer_limit",)),
    "StubRoutines._call_stub_return_address": ("StubRoutines", ("_call_stub_return_address",)),
    "ThreadsSMRSupport._java_thread_list": ("ThreadsSMRSupport", ("_java_thread_list",)),
    "ThreadsList._length": ("ThreadsList", ("_length",)),
    "ThreadsList._threads": ("ThreadsList", ("_threads",)),
    "JavaThread._osthread": ("JavaThread", ("_osthread",)),   # Thread::_osthread on 25 (superclass)
    "JavaThread._anchor": ("JavaThread", ("_anchor",)),
    "JavaThread._threadObj": ("JavaThread", ("_threadObj",)),
    "JavaThread._thread_state": ("JavaThread", ("_thread_state",)),
    "JavaThread._stack_base": ("JavaThread", ("_stack_base",)),
    "JavaThread._stack_size": ("JavaThread", ("_stack_size",)),
    "JavaFrameAnchor._last_Java_sp": ("JavaFrameAnchor", ("_last_Java_sp",)),
    "JavaFrameAnchor._last_Java_pc": ("JavaFrameAnchor", ("_last_Java_pc",)),
    "JavaFrameAnchor._last_Java_fp": ("JavaFrameAnchor", ("_last_Java_fp",)),
    "OSThread._thread_id": ("OSThread", ("_thread_id",)),
    "OopHandle._obj": ("OopHandle", ("_obj",)),
    # compressed oops: 17 and 21 publish the NarrowPtrStruct members (_narrow_oop._base), 25 flat statics
    "CompressedOops._base": ("CompressedOops", ("_base", "_narrow_oop._base")),
    "CompressedOops._shift": ("CompressedOops", ("_shift", "_narrow_oop._shift")),
}

# Fields without which the code-cache map cannot work at all.
REQUIRED = (
    "CodeCache._heaps", "GrowableArray._len", "GrowableArray._data", "CodeHeap._memory",
    "CodeHeap._segmap", "CodeHeap._log2_segment_size", "VirtualSpace._low", "VirtualSpace._high",
    "VirtualSpace._low_boundary", "VirtualSpace._high_boundary", "CodeBlob._name", "CodeBlob._size",
    "CodeBlob._frame_size", "nmethod._method", "nmethod._compile_id", "nmethod._comp_level",
    "nmethod._state", "nmethod._entry_bci", "Method._constMethod", "ConstMethod._constants",
    "ConstMethod._name_index", "ConstMethod._signature_index", "ConstantPool._pool_holder",
    "Klass._name", "Symbol._length",
)

SIGNED_TYPES = ("int", "jint", "int16_t", "int32_t", "int64_t", "intx", "signed char", "long", "short")


def _is_signed(type_string: str) -> bool:
    t = type_string.replace("volatile ", "").replace("const ", "").strip()
    return t in SIGNED_TYPES


@dataclass(frozen=True)
class DebugRanges:
    """Where an nmethod's debug information lives (absolute addresses, [begin, end))."""

    pcs_begin: int
    pcs_end: int
    scopes_begin: int
    scopes_end: int
    metadata_begin: int
    metadata_end: int
    unsigned5_excludes_zero: bool   # JDK 20+: UNSIGNED5 with X = 1


def nmethod_state_name(major: int, state: int) -> str:
    """nmethod::_state values: 17: 0 in_use, 1 not_used, 2 not_entrant, 3 unloaded, 4 zombie;
    21: 0 in_use, 1 not_used, 2 not_entrant; 25: 0 in_use, 1 not_entrant."""
    if major >= 23:
        names = {0: "in_use", 1: "not_entrant"}
    else:
        names = {0: "in_use", 1: "not_used", 2: "not_entrant", 3: "unloaded", 4: "zombie"}
    return names.get(state, f"state_{state}")


class Layout:
    """Resolved fields of one running JVM, plus decoders for the structures whose meaning moved."""

    def __init__(self, vm: VMStructs, major: int = 0) -> None:
        self.vm = vm
        self.major = major   # set by HotSpotJvm once the version is read (stream encodings differ)
        self.fields: dict[str, Field] = {}
        for key, (type_name, names) in FIELD_SPECS.items():
            resolved = self._resolve(type_name, names)
            if resolved is not None:
                self.fields[key] = resolved
        missing = [k for k in REQUIRED if k not in self.fields]
        if missing:
            raise UnsupportedJvm(f"JVM symbol(s) not found in VMStructs: {', '.join(missing)}")
        self.heap_block_size = self.type_size("HeapBlock", 16)
        self.blob_read_size = self._extent("CodeBlob.", "CodeBlob")
        self.nmethod_read_size = self._extent("nmethod.", "nmethod")
        self.codeblob_kinds = {
            value: name.split("::", 1)[1]
            for name, value in vm.int_constants.items()
            if name.startswith("CodeBlobKind::")
        }
        self._blob_struct_cache: dict[str, struct.Struct] = {}

    # ---- generic ---------------------------------------------------------------------------------
    def _resolve(self, type_name: str, names: tuple[str, ...]) -> Optional[Field]:
        for name in names:
            entry = self.vm.find_field(type_name, name)
            if entry is None:
                continue
            size = self.vm.type_size(entry.type_string) or 8
            if entry.is_static:
                return Field(name, 0, size, entry.address, _is_signed(entry.type_string))
            return Field(name, entry.offset, size, 0, _is_signed(entry.type_string))
        return None

    def has(self, key: str) -> bool:
        return key in self.fields

    def __getitem__(self, key: str) -> Field:
        try:
            return self.fields[key]
        except KeyError:
            raise UnsupportedJvm(f"JVM symbol {key} not found in VMStructs") from None

    def offset(self, key: str) -> int:
        return self[key].offset

    def type_size(self, type_name: str, default: int = 0) -> int:
        return self.vm.type_size(type_name) or default

    def _extent(self, prefix: str, type_name: str) -> int:
        """Bytes to read to cover every field we decode of a type (at least its sizeof)."""
        ends = [f.offset + f.size for k, f in self.fields.items() if k.startswith(prefix) and not f.address]
        return max([self.type_size(type_name, 64)] + ends)

    def unpacker(self, keys: Sequence[str]) -> Callable[[bytes, int], tuple]:
        """A decoder of several instance fields at once: f(buf, base) -> their values in `keys` order.

        One struct.unpack_from instead of one Field.get per field (the code-cache walk decodes ~10 fields
        of 50k blobs). Keys this JVM does not publish decode as 0. Raises struct.error when `buf` is too
        short from `base`.
        """
        fields = [self.fields.get(k) for k in keys]
        slots: dict[tuple[int, int, bool], int] = {}
        for f in sorted({(f.offset, f.size, f.signed) for f in fields if f is not None}):
            slots[f] = len(slots)
        fmt, pos = "<", 0
        for offset, size, signed in slots:
            if offset < pos or size not in (1, 2, 4, 8):   # overlapping or odd-sized: decode one by one
                return self._slow_unpacker(fields)
            fmt += f"{offset - pos}x" if offset > pos else ""
            code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
            fmt += code if signed else code.upper()
            pos = offset + size
        unpack = struct.Struct(fmt).unpack_from
        missing = len(slots)
        order = [slots[(f.offset, f.size, f.signed)] if f is not None else missing for f in fields]
        if len(order) == 1:
            only = order[0]
            return lambda buf, base=0: ((unpack(buf, base) + (0,))[only],)
        pick = operator.itemgetter(*order)
        if missing in order:
            return lambda buf, base=0: pick(unpack(buf, base) + (0,))
        return lambda buf, base=0: pick(unpack(buf, base))

    @staticmethod
    def _slow_unpacker(fields: list[Optional[Field]]) -> Callable[[bytes, int], tuple]:
        def unpack(buf: bytes, base: int = 0) -> tuple:
            out = []
            for f in fields:
                if f is None:
                    out.append(0)
                    continue
                start = base + f.offset
                if start + f.size > len(buf):
                    raise struct.error("buffer too short")
                out.append(f.get(buf, base))
            return tuple(out)
        return unpack

    # ---- HeapBlock, CodeBlob, nmethod headers ------------------------------------------------------
    def heap_block_decoder(self) -> Callable[[bytes, int], tuple[int, int]]:
        """f(buf, off) -> (length in segments, used) of the HeapBlock at buf[off:].

        23+ publish HeapBlock::Header; before, the header is {size_t _length; bool _used} (16 bytes).
        """
        if not self.has("HeapBlock._length"):
            return struct.Struct("<QB").unpack_from
        fields = self.unpacker(["HeapBlock._length", "HeapBlock._used"])
        if self.has("HeapBlock._used"):
            return fields
        return lambda buf, off: (fields(buf, off)[0], 1)

    def blob_decoder(self) -> Callable[[bytes, int, int], tuple]:
        """f(buf, off, blob_address) -> the CodeBlob header at buf[off:], and the nmethod fields after it
        when the buffer holds them (one struct unpack: the walk decodes 50k of these):

          (name_ptr, size, frame_size, frame_complete_offset, code_begin, code_end, kind_id,
           [method, compile_id, comp_level, state, entry_bci, verified_entry, orig_pc_offset, deopt_handler])

        Addresses come out absolute on every JDK: <= 22 store code_begin/code_end and the verified entry /
        deopt handler as pointers; 23+ store the code range as offsets from the blob, 25 the entries as
        offsets from code_begin. kind_id is CodeBlob::_kind (23+) or None. Raises struct.error when even
        the CodeBlob part does not fit.
        """
        relative_code = self.has("CodeBlob._code_offset")
        relative_entry = self.has("nmethod._verified_entry_offset")
        relative_deopt = self.has("nmethod._deopt_handler_offset")
        has_kind = self.has("CodeBlob._kind")
        code = ("CodeBlob._code_offset", "CodeBlob._data_offset") if relative_code else (
            "CodeBlob._code_begin", "CodeBlob._code_end")
        blob = ["CodeBlob._name", "CodeBlob._size", "CodeBlob._frame_size", "CodeBlob._frame_complete_offset",
                *code, "CodeBlob._kind"]
        nmethod = [
            "nmethod._method", "nmethod._compile_id", "nmethod._comp_level", "nmethod._state",
            "nmethod._entry_bci",
            "nmethod._verified_entry_offset" if relative_entry else "nmethod._verified_entry_point",
            "nmethod._orig_pc_offset",
            "nmethod._deopt_handler_offset" if relative_deopt else "nmethod._deopt_handler_begin",
        ]
        blob_only, blob_and_nmethod = self.unpacker(blob), self.unpacker(blob + nmethod)

        def decode(buf: bytes, off: int, address: int) -> tuple:
            try:
                v = list(blob_and_nmethod(buf, off))
            except struct.error:   # too short for an nmethod: may still be a smaller blob
                v = list(blob_only(buf, off))
            if relative_code:
                v[4] += address
                v[5] += address
            if not has_kind:
                v[6] = None
            if len(v) > 7:
                if relative_entry:
                    v[12] += v[4]
                if relative_deopt:
                    v[14] += v[4]
            return tuple(v)

        return decode

    def dead_nmethod_states(self) -> frozenset[int]:
        """nmethod::_state values of nmethods that are no longer code (`jcmd Compiler.codelist` skips
        them): unloaded (3) and zombie (4) before JDK 20 removed the sweeper; none since (freed at once)."""
        return frozenset((3, 4)) if self.major < 20 else frozenset()

    def debug_ranges(self, buf: bytes, off: int, nmethod: int) -> DebugRanges:
        """PcDescs, scope data and metadata of the nmethod whose bytes are buf[off:].

        <= 22: offsets from the nmethod (metadata, pcs, dependencies), scopes data an absolute pointer
        (CompiledMethod::_scopes_data_begin), metadata ending where scopes data begins.
        23/24: `_immutable_data`; 25: pcs and scopes in the immutable data, metadata in the mutable data
        after the relocations (src/hotspot/share/code/nmethod.hpp).
        """
        f = self.fields
        x1 = self.major >= 20
        if "nmethod._immutable_data" in f:
            imm = f["nmethod._immutable_data"].get(buf, off)
            imm_size = self._optional(buf, off, "nmethod._immutable_data_size")
            pcs_begin = imm + f["nmethod._scopes_pcs_offset"].get(buf, off)
            scopes_begin = imm + f["nmethod._scopes_data_offset"].get(buf, off)
            mutable = self._optional(buf, off, "CodeBlob._mutable_data")
            meta_begin = mutable + self._optional(buf, off, "CodeBlob._relocation_size")
            meta_end = mutable + self._optional(buf, off, "CodeBlob._mutable_data_size")
            return DebugRanges(pcs_begin, scopes_begin, scopes_begin, imm + imm_size,
                               meta_begin, meta_end, x1)
        scopes_begin = f["nmethod._scopes_data_begin"].get(buf, off)
        pcs_begin = nmethod + f["nmethod._scopes_pcs_offset"].get(buf, off)
        pcs_end = nmethod + f["nmethod._dependencies_offset"].get(buf, off)
        meta_begin = nmethod + f["nmethod._metadata_offset"].get(buf, off)
        return DebugRanges(pcs_begin, pcs_end, scopes_begin, pcs_begin, meta_begin, scopes_begin, x1)

    def _optional(self, buf: bytes, off: int, key: str, default: int = 0) -> int:
        f = self.fields.get(key)
        return f.get(buf, off) if f is not None else default

    def is_nmethod_kind(self, kind_id: Optional[int], name: str) -> bool:
        """nmethods are told apart by CodeBlobKind on 23+, by their _name before."""
        if kind_id is not None and self.codeblob_kinds:
            return self.codeblob_kinds.get(kind_id) == "Nmethod"
        return name in ("nmethod", "native nmethod")

    def blob_kind_name(self, kind_id: Optional[int]) -> Optional[str]:
        if kind_id is None:
            return None
        return self.codeblob_kinds.get(kind_id)

    # ---- interpreter frames ----------------------------------------------------------------------
    def interpreter_frame_slots(self) -> dict[str, int]:
        """Word offsets from rbp of an interpreter frame (x86_64, src/hotspot/cpu/x86/frame_x86.hpp).

        HotSpot publishes sender_sp (-1) and last_sp (-2); the slots below last_sp follow in a fixed
        order that has not changed from 17 to 25: method, mirror, mdp, cache, locals, bcp.
        """
        sender_sp = self.vm.constant("frame::interpreter_frame_sender_sp_offset")
        last_sp = self.vm.constant("frame::interpreter_frame_last_sp_offset")
        sender_sp = -1 if sender_sp is None else sender_sp
        last_sp = -2 if last_sp is None else last_sp
        return {"return_address": 1, "saved_fp": 0, "sender_sp": sender_sp, "last_sp": last_sp,
                "method": last_sp - 1, "bcp": last_sp - 6}

    # ---- ConstMethod flags -----------------------------------------------------------------------
    def has_linenumber_table_bit(self) -> int:
        """The ConstMethod flag bit that says a line-number table follows the bytecodes."""
        for name in ("ConstMethodFlags::_misc_has_linenumber_table", "ConstMethod::_has_linenumber_table"):
            value = self.vm.constant(name)
            if value is not None:
                return value
        return 1
