"""The one place where HotSpot versions differ: one `Layout` per JVM, complete when built.

Every structure pyprof reads is described here by the *names* HotSpot publishes in VMStructs, with the
aliases other JDKs use (a renamed field, or a field of another type). Offsets and sizes always come from
the running JVM. Where the *meaning* of a field changed (absolute pointer on one JDK, offset from the
blob on another), the decoding lives here too, so the rest of pyprof sees one shape. What VMStructs
does not describe (nmethod state names, the compressed-stream flavour, blob kinds by C++ class, GC heap
classes and the probe symbols) is asked from the tables of `pyprof.hotspot.versions` through the Layout.

A JVM whose VMStructs lack what a feature needs loses that feature, with one note saying so (`notes`);
only a JVM whose compiled methods cannot be found and named at all is refused (UnsupportedJvm, exit 5).

Version notes (x86_64), see docs/hotspot-versions.md:
- JDK 11: GrowableArray's length is GenericGrowableArray::_len; Java threads are a linked list
  (Threads::_thread_list, JavaThread::_next); JavaThread::_threadObj is an oop, not an OopHandle; the
  source file index is InstanceKlass's; compressed oops are Universe::_narrow_oop._base/_shift.
- JDK 11-21: CodeBlob::_code_begin/_code_end are absolute pointers; nmethod's superclass is
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
import re
import struct
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

from pyprof.errors import MemoryReadError, UnsupportedJvm
from pyprof.hotspot import versions
from pyprof.hotspot.versions import BlobKind
from pyprof.hotspot.vmstructs import VMStructs
from pyprof.procfs.elf import ElfSymbols, Symbol
from pyprof.procfs.memory import Reader

__all__ = ["BlobKind", "CodeBlobHeader", "DebugRanges", "Field", "JvmVersion", "Layout", "read_version"]


@dataclass(frozen=True)
class Field:
    """An instance field (offset/size in its object) or a static field (absolute address)."""

    name: str
    offset: int
    size: int
    address: int = 0
    signed: bool = False
    type_string: str = ""

    def get(self, buf: bytes, base: int = 0) -> int:
        """Decode this field from `buf`, where the object starts at `base` inside `buf`."""
        start = base + self.offset
        return int.from_bytes(buf[start : start + self.size], "little", signed=self.signed)


def _in(type_name: str, *names: str) -> tuple[tuple[str, str], ...]:
    return tuple((type_name, n) for n in names)


# key -> (type, field) candidates in order; the first one the JVM publishes wins (through the superclass
# chain). Newest names first; the comment says which JDK uses an alias.
FIELD_SPECS: dict[str, tuple[tuple[str, str], ...]] = {
    # CodeCache and its heaps
    "CodeCache._heaps": _in("CodeCache", "_heaps"),
    "CodeCache._low_bound": _in("CodeCache", "_low_bound"),
    "CodeCache._high_bound": _in("CodeCache", "_high_bound"),
    "GrowableArray._len": _in("GrowableArrayBase", "_len") + _in("GenericGrowableArray", "_len"),  # 11
    "GrowableArray._data": _in("GrowableArray<int>", "_data"),  # same layout for every element type
    "CodeHeap._memory": _in("CodeHeap", "_memory"),
    "CodeHeap._segmap": _in("CodeHeap", "_segmap"),
    "CodeHeap._log2_segment_size": _in("CodeHeap", "_log2_segment_size"),
    "VirtualSpace._low_boundary": _in("VirtualSpace", "_low_boundary"),
    "VirtualSpace._high_boundary": _in("VirtualSpace", "_high_boundary"),
    "VirtualSpace._low": _in("VirtualSpace", "_low"),
    "VirtualSpace._high": _in("VirtualSpace", "_high"),
    "HeapBlock._length": _in("HeapBlock::Header", "_length"),   # 11-21 publish it too (16 bytes)
    "HeapBlock._used": _in("HeapBlock::Header", "_used"),
    # CodeBlob
    "CodeBlob._name": _in("CodeBlob", "_name"),
    "CodeBlob._size": _in("CodeBlob", "_size"),
    "CodeBlob._header_size": _in("CodeBlob", "_header_size"),
    "CodeBlob._frame_size": _in("CodeBlob", "_frame_size"),
    "CodeBlob._frame_complete_offset": _in("CodeBlob", "_frame_complete_offset"),
    "CodeBlob._code_begin": _in("CodeBlob", "_code_begin"),     # absolute, JDK <= 22
    "CodeBlob._code_end": _in("CodeBlob", "_code_end"),         # absolute, JDK <= 22
    "CodeBlob._code_offset": _in("CodeBlob", "_code_offset"),   # relative, JDK 23+
    "CodeBlob._data_offset": _in("CodeBlob", "_data_offset"),
    "CodeBlob._kind": _in("CodeBlob", "_kind"),                 # JDK 23+
    "CodeBlob._mutable_data": _in("CodeBlob", "_mutable_data"),  # JDK 25
    "CodeBlob._relocation_size": _in("CodeBlob", "_relocation_size"),
    "CodeBlob._mutable_data_size": _in("CodeBlob", "_mutable_data_size"),
    # nmethod (fields of CompiledMethod on 11-21 are found through the superclass chain)
    "nmethod._method": _in("nmethod", "_method"),
    "nmethod._compile_id": _in("nmethod", "_compile_id"),
    "nmethod._comp_level": _in("nmethod", "_comp_level"),
    "nmethod._state": _in("nmethod", "_state"),
    "nmethod._entry_bci": _in("nmethod", "_entry_bci"),
    "nmethod._verified_entry_point": _in("nmethod", "_verified_entry_point"),    # absolute, <= 24
    "nmethod._verified_entry_offset": _in("nmethod", "_verified_entry_offset"),  # from code begin, 25
    "nmethod._orig_pc_offset": _in("nmethod", "_orig_pc_offset"),
    "nmethod._deopt_handler_begin": _in("nmethod", "_deopt_handler_begin"),      # absolute, <= 24
    "nmethod._deopt_handler_offset": _in("nmethod", "_deopt_handler_offset"),    # from code begin, 25
    "nmethod._scopes_pcs_offset": _in("nmethod", "_scopes_pcs_offset"),
    "nmethod._scopes_data_offset": _in("nmethod", "_scopes_data_offset"),
    "nmethod._scopes_data_begin": _in("nmethod", "_scopes_data_begin"),
    "nmethod._metadata_offset": _in("nmethod", "_metadata_offset"),
    "nmethod._dependencies_offset": _in("nmethod", "_dependencies_offset"),
    "nmethod._immutable_data": _in("nmethod", "_immutable_data"),
    "nmethod._immutable_data_size": _in("nmethod", "_immutable_data_size"),
    # Method metadata
    "Method._constMethod": _in("Method", "_constMethod"),
    "Method._access_flags": _in("Method", "_access_flags"),
    "ConstMethod._constants": _in("ConstMethod", "_constants"),
    "ConstMethod._flags": _in("ConstMethod", "_flags._flags", "_flags"),   # u4 bit set 21+, u2 before
    "ConstMethod._code_size": _in("ConstMethod", "_code_size"),
    "ConstMethod._name_index": _in("ConstMethod", "_name_index"),
    "ConstMethod._signature_index": _in("ConstMethod", "_signature_index"),
    "ConstantPool._pool_holder": _in("ConstantPool", "_pool_holder"),
    "ConstantPool._length": _in("ConstantPool", "_length"),
    "ConstantPool._source_file_name_index": _in("ConstantPool", "_source_file_name_index"),   # 15+
    "InstanceKlass._source_file_name_index": _in("InstanceKlass", "_source_file_name_index"),  # 11
    "InstanceKlass._misc_flags": _in("InstanceKlass", "_misc_flags"),   # 11: the unsafe-anonymous bit
    "Klass._name": _in("Klass", "_name"),
    "Symbol._length": _in("Symbol", "_length"),
    "Symbol._body": _in("Symbol", "_body"),
    # GC count: metaspace (Method*, ConstantPool*, Symbol*) is only freed and reused after a GC
    "Universe._collectedHeap": _in("Universe", "_collectedHeap"),
    "CollectedHeap._total_collections": _in("CollectedHeap", "_total_collections"),
    # ... and exactly when classes are unloaded: the unloaded-classes counter in the perf data region
    # (pyprof.hotspot.perfdata), unless an agent may redefine classes (which frees metadata too)
    "PerfMemory._prologue": _in("PerfMemory", "_prologue"),
    "JvmtiExport._can_hotswap_or_post_breakpoint": _in("JvmtiExport", "_can_hotswap_or_post_breakpoint"),
    # VM identity
    "Abstract_VM_Version._s_vm_release": _in("Abstract_VM_Version", "_s_vm_release"),
    "Abstract_VM_Version._vm_major_version": _in("Abstract_VM_Version", "_vm_major_version"),
    "JVMFlag.flags": _in("JVMFlag", "flags"),
    "JVMFlag.numFlags": _in("JVMFlag", "numFlags"),
    "JVMFlag._name": _in("JVMFlag", "_name"),
    "JVMFlag._addr": _in("JVMFlag", "_addr"),
    # interpreter, stubs, threads (used by the unwinder)
    "AbstractInterpreter._code": _in("AbstractInterpreter", "_code"),
    "StubQueue._stub_buffer": _in("StubQueue", "_stub_buffer"),
    "StubQueue._buffer_limit": _in("StubQueue", "_buffer_limit"),
    "StubRoutines._call_stub_return_address": _in("StubRoutines", "_call_stub_return_address"),
    "ThreadsSMRSupport._java_thread_list": _in("ThreadsSMRSupport", "_java_thread_list"),   # 12+
    "ThreadsList._length": _in("ThreadsList", "_length"),
    "ThreadsList._threads": _in("ThreadsList", "_threads"),
    "Threads._thread_list": _in("Threads", "_thread_list"),   # 11: a linked list through JavaThread::_next
    "JavaThread._next": _in("JavaThread", "_next"),
    "JavaThread._osthread": _in("JavaThread", "_osthread"),   # Thread::_osthread on 25 (superclass)
    "JavaThread._anchor": _in("JavaThread", "_anchor"),
    "JavaThread._threadObj": _in("JavaThread", "_threadObj"),  # OopHandle 16+, oop on 11
    "JavaThread._vthread": _in("JavaThread", "_vthread"),      # 21+: the mounted virtual thread
    "JavaThread._thread_state": _in("JavaThread", "_thread_state"),
    "JavaThread._stack_base": _in("JavaThread", "_stack_base"),
    "JavaThread._stack_size": _in("JavaThread", "_stack_size"),
    "JavaFrameAnchor._last_Java_sp": _in("JavaFrameAnchor", "_last_Java_sp"),
    "JavaFrameAnchor._last_Java_pc": _in("JavaFrameAnchor", "_last_Java_pc"),
    "JavaFrameAnchor._last_Java_fp": _in("JavaFrameAnchor", "_last_Java_fp"),
    "OSThread._thread_id": _in("OSThread", "_thread_id"),
    "OSThread._state": _in("OSThread", "_state"),   # ThreadState: SLEEPING, OBJECT_WAIT, MONITOR_WAIT...
    "OopHandle._obj": _in("OopHandle", "_obj"),
    # compressed oops: 25 flat statics, 17 and 21 the NarrowPtrStruct members, 11 Universe's
    "CompressedOops._base": (_in("CompressedOops", "_base", "_narrow_oop._base")
                             + _in("Universe", "_narrow_oop._base")),
    "CompressedOops._shift": (_in("CompressedOops", "_shift", "_narrow_oop._shift")
                              + _in("Universe", "_narrow_oop._shift")),
    # an object's class (`-e lock`: the monitor's): 21+ flat statics, 17 NarrowPtrStruct members, 11
    # Universe's
    "CompressedKlassPointers._base": (_in("CompressedKlassPointers", "_base", "_narrow_klass._base")
                                      + _in("Universe", "_narrow_klass._base")),
    "CompressedKlassPointers._shift": (_in("CompressedKlassPointers", "_shift", "_narrow_klass._shift")
                                       + _in("Universe", "_narrow_klass._shift")),
    "oopDesc._compressed_klass": _in("oopDesc", "_metadata._compressed_klass"),
    "oopDesc._klass": _in("oopDesc", "_metadata._klass"),
    "ObjectMonitor._object": _in("ObjectMonitor", "_object"),   # an oop on 11, a WeakHandle on 16+
}

# What finding and naming compiled methods needs: without one of these, pyprof refuses the JVM (exit 5).
# A tuple inside is a choice: any one of its groups (tuples of keys) fully published will do.
Need = tuple  # of str | tuple[tuple[str, ...], ...]
REQUIRED: Need = (
    "CodeCache._heaps", "GrowableArray._len", "GrowableArray._data", "CodeHeap._memory",
    "CodeHeap._segmap", "CodeHeap._log2_segment_size", "VirtualSpace._low", "VirtualSpace._high",
    "VirtualSpace._low_boundary", "VirtualSpace._high_boundary", "CodeBlob._name", "CodeBlob._size",
    (("CodeBlob._code_begin", "CodeBlob._code_end"), ("CodeBlob._code_offset", "CodeBlob._data_offset")),
    "nmethod._method", "Method._constMethod", "ConstMethod._constants", "ConstMethod._name_index",
    "ConstMethod._signature_index", "ConstantPool._pool_holder", "Klass._name", "Symbol._length",
)


@dataclass(frozen=True)
class Feature:
    """A part of pyprof that needs some fields; when one is missing, the part is off and `loss` says so."""

    name: str
    needs: Need
    loss: str
    needs_version: bool = False   # also needs the JDK version (the compressed-stream flavour)


FEATURES = (
    Feature("compiled frames", ("CodeBlob._frame_size", "CodeBlob._frame_complete_offset"),
            "compiled frames are unwound through frame pointers only (stacks may end there)"),
    Feature("tiers", ("nmethod._compile_id", "nmethod._comp_level", "nmethod._state", "nmethod._entry_bci"),
            "no compile ids, tiers, states or OSR bcis of compiled methods"),
    Feature("debug info", (
        "nmethod._scopes_pcs_offset",
        (("nmethod._immutable_data", "nmethod._immutable_data_size", "nmethod._scopes_data_offset",
          "CodeBlob._mutable_data", "CodeBlob._relocation_size", "CodeBlob._mutable_data_size"),
         ("nmethod._scopes_data_begin", "nmethod._metadata_offset", "nmethod._dependencies_offset"))),
        "no inlined frames and no line numbers in compiled code (frames show their nmethod's method)",
        needs_version=True),
    Feature("line numbers", ("ConstMethod._flags", "ConstMethod._code_size"),
            "no line numbers", needs_version=True),
    Feature("source files", ((("ConstantPool._source_file_name_index",),
                              ("InstanceKlass._source_file_name_index",)),),
            "no source file names"),
    Feature("Java threads", (
        (("ThreadsSMRSupport._java_thread_list", "ThreadsList._length", "ThreadsList._threads"),
         ("Threads._thread_list", "JavaThread._next")),
        "JavaThread._osthread", "OSThread._thread_id", "JavaThread._anchor", "JavaFrameAnchor._last_Java_sp",
        "JavaFrameAnchor._last_Java_pc", "JavaFrameAnchor._last_Java_fp"),
        "Java threads cannot be listed: stacks in native code stop there, thread names come from /proc"),
    Feature("GC count", ("Universe._collectedHeap", "CollectedHeap._total_collections"),
            "method names are not re-read after class unloading (a reused Method* may be misnamed)"),
)

SIGNED_TYPES = ("int", "jint", "int16_t", "int32_t", "int64_t", "intx", "signed char", "long", "short")


def _is_signed(type_string: str) -> bool:
    t = type_string.replace("volatile ", "").replace("const ", "").strip()
    return t in SIGNED_TYPES


@dataclass(frozen=True)
class JvmVersion:
    major: int        # 0: unknown
    release: str      # "17.0.15+6-Debian-1deb12u1", "" when unknown

    def __str__(self) -> str:
        return f"JDK {self.major or '?'} ({self.release or 'unknown release'})"


def read_version(vm: VMStructs, reader: Reader) -> JvmVersion:
    """Abstract_VM_Version::_vm_major_version and _s_vm_release (statics), or the release's first number."""
    release = ""
    entry = vm.find_field("Abstract_VM_Version", "_s_vm_release")
    if entry is not None and entry.is_static:
        try:
            release = reader.cstring(reader.ptr(entry.address), 128)
        except MemoryReadError:
            release = ""
    major = 0
    entry = vm.find_field("Abstract_VM_Version", "_vm_major_version")
    if entry is not None and entry.is_static:
        try:
            major = reader.i32(entry.address)
        except MemoryReadError:
            major = 0
    if not 0 < major < 1000:
        m = re.match(r"(\d+)", release)
        major = int(m.group(1)) if m else 0
    return JvmVersion(major, release)


def nmethod_state_names(major: int) -> dict[int, str]:
    """nmethod::_state -> name on JDK `major` (0: unknown), for sources without a Layout (jcmd)."""
    return versions.nmethod_states(major)


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


class CodeBlobHeader(NamedTuple):
    """A CodeBlob header, and the nmethod fields after it (None when the bytes held only the CodeBlob).

    Addresses are absolute on every JDK."""

    name_ptr: int
    size: int
    frame_size: int                 # words
    frame_complete_offset: int
    code_begin: int
    code_end: int
    kind_word: int                  # what tells the kind (Layout.blob_kind): CodeBlob::_kind (23+), or
                                    # the blob's C++ vtable pointer, its first word (<= 22)
    method_ptr: Optional[int] = None
    compile_id: Optional[int] = None
    level: Optional[int] = None
    state: Optional[int] = None
    entry_bci: Optional[int] = None
    verified_entry: Optional[int] = None
    orig_pc_offset: Optional[int] = None
    deopt_handler: Optional[int] = None


# Where the decoder patches values in place before building the record (by field name, not by number)
_CODE_BEGIN, _CODE_END, _METHOD, _LEVEL, _ENTRY_BCI, _VERIFIED, _DEOPT = map(CodeBlobHeader._fields.index, (
    "code_begin", "code_end", "method_ptr", "level", "entry_bci", "verified_entry", "deopt_handler"))
_NO_NMETHOD = (None,) * (len(CodeBlobHeader._fields) - _METHOD)
MAX_PACKED_OFFSET = 1 << 16   # fields of the headers pyprof decodes sit within their first few KiB
_new_tuple = tuple.__new__      # CodeBlobHeader from a sequence without _make's checks (50k per walk)


def _satisfied(need: Need, published: Callable[[str], bool]) -> list[str]:
    """The keys of `need` this JVM lacks ([] when satisfied); of an unmet choice, those of the group
    that lacks fewest."""
    missing: list[str] = []
    for item in need:
        if isinstance(item, str):
            if not published(item):
                missing.append(item)
            continue
        groups = [[k for k in group if not published(k)] for group in item]
        if not any(not g for g in groups):
            missing.extend(min(groups, key=len))
    return missing


class Layout:
    """Resolved fields of one running JVM, its version, and decoders for the structures whose meaning moved.

    Complete when built: `version` is required (the stream flavour and state names depend on it), and
    `symbols`/`libjvm_base` (libjvm's ELF symbols and load base) give the C++ blob classes and probe
    symbols. Raises UnsupportedJvm when compiled methods cannot be found and named (REQUIRED).
    """

    def __init__(self, vm: VMStructs, version: JvmVersion, symbols: Optional[ElfSymbols] = None,
                 libjvm_base: int = 0) -> None:
        self.vm = vm
        self.version = version
        self.symbols = symbols
        self.libjvm_base = libjvm_base
        self.fields: dict[str, Field] = {}
        for key, candidates in FIELD_SPECS.items():
            resolved = self._resolve(candidates)
            if resolved is not None:
                self.fields[key] = resolved
        missing = _satisfied(REQUIRED, self.has)
        if missing:
            raise UnsupportedJvm(f"JVM symbol(s) not found in VMStructs: {', '.join(missing)}")
        self.unsigned5_excludes_zero = versions.unsigned5_excludes_zero(version.major)
        self.missing_features = self._missing_features()
        self.heap_block_size = self.type_size("HeapBlock", 16)
        self.blob_read_size = self._extent("CodeBlob.", "CodeBlob")
        self.nmethod_read_size = self._extent("nmethod.", "nmethod")
        self.nmethod_states = versions.nmethod_states(version.major)
        self.dead_nmethod_states = frozenset(
            s for s, name in self.nmethod_states.items() if name in versions.DEAD_STATE_NAMES)
        self.has_blob_kind_field = self.has("CodeBlob._kind")
        if not self.has_blob_kind_field:   # a polymorphic CodeBlob (<= 22): its vtable pointer says the kind
            self.fields["CodeBlob.vptr"] = Field("<vptr>", 0, 8)
        self._kind_constants = {
            value: versions.BLOB_KIND_CONSTANTS.get(name.split("::", 1)[1], BlobKind.OTHER)
            for name, value in vm.int_constants.items() if name.startswith("CodeBlobKind::")
        }
        self._blob_vtables = self._read_blob_vtables()
        # JavaThread::_threadObj: an OopHandle (16+: the handle points to the oop) or the oop itself (11)
        thread_obj = self.fields.get("JavaThread._threadObj")
        self.thread_obj_is_handle = thread_obj is not None and "OopHandle" in thread_obj.type_string
        self.anonymous_class_flag = self._anonymous_class_flag()

    @property
    def major(self) -> int:
        return self.version.major

    # ---- features and notes ----------------------------------------------------------------------
    def _missing_features(self) -> dict[str, str]:
        """feature name -> one line saying what is lost and why."""
        out: dict[str, str] = {}
        for feature in FEATURES:
            lacking = _satisfied(feature.needs, self.has)
            if lacking:
                out[feature.name] = f"{feature.loss}: VMStructs lacks {', '.join(lacking)}"
            elif feature.needs_version and self.unsigned5_excludes_zero is None:
                out[feature.name] = f"{feature.loss}: the JDK version is unknown (its stream encoding too)"
        return out

    def supports(self, feature: str) -> bool:
        """Whether this JVM publishes what `feature` (a FEATURES name) needs."""
        return feature not in self.missing_features

    @property
    def notes(self) -> list[str]:
        """One line per part that cannot be decoded on this JVM (for the CLI to print once)."""
        return list(self.missing_features.values())

    # ---- generic ---------------------------------------------------------------------------------
    def _resolve(self, candidates: tuple[tuple[str, str], ...]) -> Optional[Field]:
        for type_name, name in candidates:
            entry = self.vm.find_field(type_name, name)
            if entry is None:
                continue
            size = self.vm.type_size(entry.type_string) or 8
            signed = _is_signed(entry.type_string)
            if entry.is_static:
                return Field(name, 0, size, entry.address, signed, entry.type_string)
            return Field(name, entry.offset, size, 0, signed, entry.type_string)
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
            # overlapping, odd-sized, or an offset no HotSpot header has (corrupt VMStructs: a struct
            # format padded to it would not compile): decode one by one, each field bounds-checked
            if offset < pos or size not in (1, 2, 4, 8) or offset > MAX_PACKED_OFFSET:
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

        11-21 publish HeapBlock::Header {size_t _length; bool _used} (16 bytes); 23+ a u4 length.
        """
        if not self.has("HeapBlock._length"):
            return struct.Struct("<QB").unpack_from
        fields = self.unpacker(["HeapBlock._length", "HeapBlock._used"])
        if self.has("HeapBlock._used"):
            return fields
        return lambda buf, off: (fields(buf, off)[0], 1)

    def blob_decoder(self) -> Callable[[bytes, int, int], CodeBlobHeader]:
        """f(buf, off, blob_address) -> the CodeBlobHeader at buf[off:], with the nmethod fields after it
        when the buffer holds them (one struct unpack: the walk decodes 50k of these).

        Addresses come out absolute on every JDK: <= 22 store code_begin/code_end and the verified entry /
        deopt handler as pointers; 23+ store the code range as offsets from the blob, 25 the entries as
        offsets from code_begin. Chosen by which fields the JVM publishes, not by its version. Raises
        struct.error when even the CodeBlob part does not fit.
        """
        relative_code = not self.has("CodeBlob._code_begin")
        relative_entry = self.has("nmethod._verified_entry_offset")
        relative_deopt = self.has("nmethod._deopt_handler_offset")
        code = ("CodeBlob._code_offset", "CodeBlob._data_offset") if relative_code else (
            "CodeBlob._code_begin", "CodeBlob._code_end")
        blob = ["CodeBlob._name", "CodeBlob._size", "CodeBlob._frame_size", "CodeBlob._frame_complete_offset",
                *code, "CodeBlob._kind" if self.has_blob_kind_field else "CodeBlob.vptr"]
        nmethod = [
            "nmethod._method", "nmethod._compile_id", "nmethod._comp_level", "nmethod._state",
            "nmethod._entry_bci",
            "nmethod._verified_entry_offset" if relative_entry else "nmethod._verified_entry_point",
            "nmethod._orig_pc_offset",
            "nmethod._deopt_handler_offset" if relative_deopt else "nmethod._deopt_handler_begin",
        ]
        blob_only, blob_and_nmethod = self.unpacker(blob), self.unpacker(blob + nmethod)
        # Unpublished fields decode as 0; these must not: level 0 is a native wrapper, bci 0 an OSR entry.
        unknown = [(i, -1) for i, key in ((_LEVEL, "nmethod._comp_level"), (_ENTRY_BCI, "nmethod._entry_bci"))
                   if not self.has(key)]
        patch = relative_code or relative_entry or relative_deopt or unknown
        record = CodeBlobHeader
        if relative_code and relative_entry and relative_deopt and not unknown:
            return self._relative_blob_decoder(blob_only, blob_and_nmethod)

        def decode(buf: bytes, off: int, address: int) -> CodeBlobHeader:
            try:
                values = blob_and_nmethod(buf, off)
            except struct.error:   # too short for an nmethod: may still be a smaller blob
                values = blob_only(buf, off) + _NO_NMETHOD
            if not patch:
                return _new_tuple(record, values)
            v = list(values)
            if relative_code:
                v[_CODE_BEGIN] += address
                v[_CODE_END] += address
            if v[_METHOD] is not None:
                if relative_entry:
                    v[_VERIFIED] += v[_CODE_BEGIN]
                if relative_deopt:
                    v[_DEOPT] += v[_CODE_BEGIN]
                for i, value in unknown:
                    v[i] = value
            return _new_tuple(record, v)

        return decode

    @staticmethod
    def _relative_blob_decoder(blob_only: Callable[[bytes, int], tuple],
                               blob_and_nmethod: Callable[[bytes, int], tuple]
                               ) -> Callable[[bytes, int, int], CodeBlobHeader]:
        """blob_decoder() for 25's layout (code range from the blob, entries from code begin), with the
        arithmetic in one expression: the common case of the hot loop, ~15 % faster than the generic."""
        record = CodeBlobHeader

        def decode(buf: bytes, off: int, address: int) -> CodeBlobHeader:
            try:
                (name, size, frame_size, frame_complete, code, data, kind, method, compile_id, level, state,
                 entry_bci, verified, orig_pc, deopt) = blob_and_nmethod(buf, off)
            except struct.error:   # too short for an nmethod: may still be a smaller blob
                name, size, frame_size, frame_complete, code, data, kind = blob_only(buf, off)
                return _new_tuple(record, (name, size, frame_size, frame_complete, address + code,
                                           address + data, kind) + _NO_NMETHOD)
            code += address
            return _new_tuple(record, (name, size, frame_size, frame_complete, code, address + data, kind,
                                       method, compile_id, level, state, entry_bci, code + verified,
                                       orig_pc, code + deopt))

        return decode

    def blob_kind(self, kind_word: int, name: str) -> Optional[BlobKind]:
        """A blob's kind from its CodeBlobHeader.kind_word (CodeBlob::_kind on 23+, its C++ vtable pointer
        before), refined by its name; None when neither tells (an unknown blob class). nmethods are
        known by name on every JDK."""
        kinds = self._kind_constants if self.has_blob_kind_field else self._blob_vtables
        kind = kinds.get(kind_word)
        if kind is None and name in versions.NMETHOD_NAMES:
            kind = BlobKind.NMETHOD
        if kind is BlobKind.BUFFER:
            if name == "Interpreter":
                return BlobKind.INTERPRETER
            if name.startswith("StubRoutines"):
                return BlobKind.STUBS
        return kind

    def _read_blob_vtables(self) -> dict[int, BlobKind]:
        """vptr -> kind, for JDKs whose CodeBlob is polymorphic (<= 22): vptr = &vtable + 16."""
        if self.has_blob_kind_field or self.symbols is None:
            return {}
        out: dict[int, BlobKind] = {}
        for cls, kind in versions.BLOB_CLASS_KINDS.items():
            sym = self.symbols.lookup(f"_ZTV{len(cls)}{cls}")
            if sym is not None:
                out[self.libjvm_base + sym.value + 16] = kind
        return out

    def _anonymous_class_flag(self) -> Optional[tuple[Field, int]]:
        """(InstanceKlass::_misc_flags, its unsafe-anonymous bit) on JDKs with unsafe anonymous classes
        (<= 16; 11's lambda forms are such classes). Java names them `<name>/0x<InstanceKlass*>`, which
        is what jcmd prints; their Symbol holds only `<name>`."""
        for name in ("InstanceKlass::_misc_is_anonymous", "InstanceKlass::_misc_is_unsafe_anonymous"):
            bit = self.vm.int_constants.get(name)
            if bit and self.has("InstanceKlass._misc_flags"):
                return self.fields["InstanceKlass._misc_flags"], bit
        return None

    # ---- nmethod states --------------------------------------------------------------------------
    def state_name(self, state: int) -> str:
        """nmethod::_state as a name ("in_use", "not_entrant", ...)."""
        return self.nmethod_states.get(state, f"state_{state}")

    # ---- debug info ------------------------------------------------------------------------------
    def debug_ranges(self, buf: bytes, off: int, nmethod: int) -> DebugRanges:
        """PcDescs, scope data and metadata of the nmethod whose bytes are buf[off:].

        <= 22: offsets from the nmethod (metadata, pcs, dependencies), scopes data an absolute pointer
        (CompiledMethod::_scopes_data_begin), metadata ending where scopes data begins.
        25: pcs and scopes in `_immutable_data`, metadata in the mutable data after the relocations
        (src/hotspot/share/code/nmethod.hpp). Only call when supports("debug info").
        """
        if not self.supports("debug info"):
            raise MemoryReadError(f"no debug info on this JVM: {self.missing_features['debug info']}")
        f = self.fields
        x1 = bool(self.unsigned5_excludes_zero)
        if "nmethod._immutable_data" in f:
            imm = f["nmethod._immutable_data"].get(buf, off)
            imm_size = f["nmethod._immutable_data_size"].get(buf, off)
            pcs_begin = imm + f["nmethod._scopes_pcs_offset"].get(buf, off)
            scopes_begin = imm + f["nmethod._scopes_data_offset"].get(buf, off)
            mutable = f["CodeBlob._mutable_data"].get(buf, off)
            meta_begin = mutable + f["CodeBlob._relocation_size"].get(buf, off)
            meta_end = mutable + f["CodeBlob._mutable_data_size"].get(buf, off)
            return DebugRanges(pcs_begin, scopes_begin, scopes_begin, imm + imm_size,
                               meta_begin, meta_end, x1)
        scopes_begin = f["nmethod._scopes_data_begin"].get(buf, off)
        pcs_begin = nmethod + f["nmethod._scopes_pcs_offset"].get(buf, off)
        pcs_end = nmethod + f["nmethod._dependencies_offset"].get(buf, off)
        meta_begin = nmethod + f["nmethod._metadata_offset"].get(buf, off)
        return DebugRanges(pcs_begin, pcs_end, scopes_begin, pcs_begin, meta_begin, scopes_begin, x1)

    # ---- libjvm symbols: live-update probes, Java field offsets ----------------------------------
    def nmethod_probes(self, gc_name: str) -> dict[str, list[str]]:
        """event ("register", "unregister", "free", "not_entrant", "not_entrant_or_zombie") -> the libjvm
        symbols (local .symtab ones included, with GCC's `.part.0` clones) present in this libjvm, for
        the GC `gc_name` ("G1", ...; all GCs when unknown). Events without any symbol are left out."""
        if self.symbols is None:
            return {}
        out: dict[str, list[str]] = {}
        for event, names in versions.nmethod_probe_candidates(gc_name).items():
            found = [candidate for name in names for candidate in (name, name + ".part.0")
                     if self.symbols.lookup(candidate) is not None]
            if found:
                out[event] = found
        return out

    def java_field_offset_addresses(self) -> dict[str, int]:
        """"thread_name", "string_value", "string_coder" -> address of the static int in libjvm holding
        that Java field's offset (javaClasses.cpp); those this libjvm lacks (stripped) are left out."""
        if self.symbols is None:
            return {}
        out: dict[str, int] = {}
        for key, names in versions.JAVA_FIELD_OFFSET_SYMBOLS.items():
            for name in names:
                sym = self.symbols.lookup(name)
                if sym is not None:
                    out[key] = self.libjvm_base + sym.value
                    break
        return out

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

    # ---- object headers ---------------------------------------------------------------------------
    def mark_word_klass_shift(self, compact_headers: bool) -> Optional[int]:
        """Where an object's narrow klass is in its mark word with compact object headers (25's
        -XX:+UseCompactObjectHeaders: the upper bits, markWord::klass_shift = 42 there), None without
        them or when VMStructs does not publish the shift. The mark word keeps those bits while the
        object is locked or inflated: compact headers turn UseObjectMonitorTable on (a monitor is found
        through a table, not through a pointer in the header)."""
        if not compact_headers:
            return None
        shift = self.vm.constant("markWord::klass_shift")
        return shift if shift is not None and 0 < shift < 64 else None

    # ---- ConstMethod flags -----------------------------------------------------------------------
    def has_linenumber_table_bit(self) -> int:
        """The ConstMethod flag bit that says a line-number table follows the bytecodes."""
        for name in ("ConstMethodFlags::_misc_has_linenumber_table", "ConstMethod::_has_linenumber_table"):
            value = self.vm.constant(name)
            if value is not None:
                return value
        return 1


def event_probe_symbols(symbols: ElfSymbols, event: str) -> dict[str, Symbol]:
    """The libjvm functions the uprobes of `event` ("alloc", "lock") go on: program function -> the
    symbol this libjvm has (versions.EVENT_PROBE_SYMBOLS); functions it lacks are left out."""
    out: dict[str, Symbol] = {}
    for fn_name, names in versions.EVENT_PROBE_SYMBOLS[event].items():
        found = next((s for s in map(symbols.lookup, names) if s is not None), None)
        if found is not None:
            out[fn_name] = found
    return out
