"""Java heap objects read from outside: compressed oops and java.lang.String (for thread names).

Field offsets of Java classes are not in VMStructs, but HotSpot keeps the ones it uses itself in static
ints of its java_lang_* classes (javaClasses.cpp: java_lang_Thread::_name_offset,
java_lang_String::_value_offset / _coder_offset). They are local `.symtab` symbols of libjvm; a stripped
libjvm has none and names fall back to /proc (pyprof.sampling.threadnames).
See src/hotspot/share/classfile/javaClasses.cpp and oops/compressedOops.hpp.
"""

from __future__ import annotations

from typing import Optional

from pyprof.errors import MemoryReadError
from pyprof.hotspot.jvm import HotSpotJvm

MAX_STRING_BYTES = 4096      # a longer "thread name" is taken for garbage: /proc comm names it instead
LATIN1, UTF16 = 0, 1

_STATIC_INTS = ("thread_name", "string_value", "string_coder")   # Layout.java_field_offset_addresses()
# Also read, optional: "thread_tid" (java.lang.Thread.tid, the id of virtual threads' labels)


class JavaObjects:
    """Reads the few Java objects pyprof needs; `available` is False when libjvm lacks the symbols."""

    def __init__(self, jvm: HotSpotJvm) -> None:
        self.jvm = jvm
        self.r = jvm.reader
        self.offsets = self._static_offsets()
        self.compressed = jvm.flags.get("UseCompressedOops", False)
        self.oop_base, self.oop_shift = self._narrow_oop_encoding()
        # arrayOopDesc: mark word, then a 4-byte (compressed) or 8-byte klass pointer, then the length
        compressed_klass = jvm.flags.get("UseCompressedClassPointers", True)
        compact = jvm.flags.get("UseCompactObjectHeaders", False)
        # (compact headers: no klass word, the length right after the mark word). The data of the only
        # arrays read here, byte[] (String.value), follows the length at the next byte: 12 with compact
        # headers (25, opt-in; 16 there would drop a thread name's first 4 characters), else 16 or 24
        self.array_length_offset = 8 if compact else (12 if compressed_klass else 16)
        self.array_data_offset = 12 if compact else (16 if compressed_klass else 24)
        lay = jvm.layout
        # JavaThread::_threadObj is an OopHandle (16+: one more indirection) or the oop itself (11)
        self.thread_obj_is_handle = lay.thread_obj_is_handle
        self.available = (all(key in self.offsets for key in _STATIC_INTS)
                          and lay.has("JavaThread._threadObj")
                          and (lay.has("OopHandle._obj") or not self.thread_obj_is_handle))

    def _static_offsets(self) -> dict[str, int]:
        out = {}
        for key, address in self.jvm.layout.java_field_offset_addresses().items():
            try:
                value = self.r.i32(address)
            except MemoryReadError:
                continue
            if 0 < value < 4096:
                out[key] = value
        return out

    def _narrow_oop_encoding(self) -> tuple[int, int]:
        lay = self.jvm.layout
        if not (lay.has("CompressedOops._base") and lay.has("CompressedOops._shift")):
            return 0, 3
        try:
            base = self.r.ptr(lay["CompressedOops._base"].address)
            shift = self.r.i32(lay["CompressedOops._shift"].address)
        except MemoryReadError:
            return 0, 3
        return base, shift if 0 <= shift <= 8 else 3

    def oop_field(self, obj: int, offset: int) -> int:
        """A reference field of a heap object (decoding a compressed oop)."""
        if self.compressed:
            narrow = self.r.u32(obj + offset)
            return self.oop_base + (narrow << self.oop_shift) if narrow else 0
        return self.r.ptr(obj + offset)

    def string(self, obj: int) -> str:
        """The value of a java.lang.String (compact strings: LATIN1 or UTF-16)."""
        value = self.oop_field(obj, self.offsets["string_value"])
        if not value:
            raise MemoryReadError("String without value")
        coder = self.r.u8(obj + self.offsets["string_coder"])
        length = self.r.i32(value + self.array_length_offset)
        if not 0 <= length <= MAX_STRING_BYTES or coder not in (LATIN1, UTF16):
            raise MemoryReadError(f"implausible String (length {length}, coder {coder})")
        data = self.r.bytes(value + self.array_data_offset, length) if length else b""
        return data.decode("latin-1") if coder == LATIN1 else data.decode("utf-16-le", "replace")

    def thread_name(self, java_thread: int) -> Optional[str]:
        """java.lang.Thread.name of a JavaThread (its current name: renames show at once)."""
        if not self.available:
            return None
        lay = self.jvm.layout
        try:
            if self.thread_obj_is_handle:
                slot = java_thread + lay.offset("JavaThread._threadObj") + lay.offset("OopHandle._obj")
                handle = self.r.ptr(slot)
                thread_oop = self.r.ptr(handle) if handle else 0
            else:
                thread_oop = self.r.ptr(java_thread + lay.offset("JavaThread._threadObj"))
            if not thread_oop:
                return None   # attaching, or exiting
            name = self.oop_field(thread_oop, self.offsets["thread_name"])
            return self.string(name) if name else None
        except MemoryReadError:
            return None

    def thread_tid_offset(self) -> int:
        """Offset of java.lang.Thread.tid (a long), 0 when libjvm does not say."""
        return self.offsets.get("thread_tid", 0)

    def virtual_thread_name(self, thread_oop: int, java_tid: int) -> Optional[str]:
        """The name of the java.lang.Thread at `thread_oop` (captured at sample time, see bpf/sampler.c),
        provided it still holds tid `java_tid`: a GC may have moved the object since, and a stale address
        must not name another thread. "" for an unnamed virtual thread; None when unreadable or moved."""
        tid_offset = self.thread_tid_offset()
        if not (self.available and tid_offset and thread_oop and java_tid > 0):
            return None
        try:
            if self.r.i64(thread_oop + tid_offset) != java_tid:
                return None
            name = self.oop_field(thread_oop, self.offsets["thread_name"])
            text = self.string(name) if name else ""
            # re-check: a GC that moved the thread while we read the String leaves its old copy behind
            return text if self.r.i64(thread_oop + tid_offset) == java_tid else None
        except MemoryReadError:
            return None
