"""Method* -> class, name, signature and source file, read from the target's metaspace.

Method -> _constMethod -> _constants (ConstantPool) -> _pool_holder (Klass) -> _name (Symbol);
ConstMethod::_name_index / _signature_index index the constant pool, whose entries follow the
ConstantPool header (8 bytes each, low bit of the Symbol* is a tag).
See src/hotspot/share/oops/{method,constMethod,constantPool,symbol}.hpp.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

from pyprof.errors import MemoryReadError
from pyprof.hotspot.layout import Layout
from pyprof.hotspot.perfdata import UNLOADED_CLASSES, counter_addresses
from pyprof.lru import LRUCache
from pyprof.procfs.memory import MemoryReader, Reader, check_range

MAX_SYMBOL = 65535           # Symbol::_length is a u2
SYMBOL_PREFETCH = 96         # most names fit in one read
MAX_CACHE = 500_000
PAGE = 4096                  # PagedMemory: metaspace is read a page at a time during a walk
MAX_PAGES = 16_384           # 64 MiB of cached metaspace at most
GC_CHECK_INTERVAL = 0.02     # s: how often resolve() looks at the counters (one process_vm_readv)
SETTLE_S = 1.0               # s: after classes were unloaded, the caches are dropped once more (see below)
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class MethodInfo:
    holder: str        # "java.lang.String" (external form, as jcmd prints it)
    name: str          # "hashCode"
    signature: str     # "()I"
    source_file: str = ""
    const_method: int = 0
    code_size: int = 0
    flags: int = 0

    @property
    def codelist_name(self) -> str:
        """Exactly what `jcmd Compiler.codelist` prints: java.lang.String.hashCode()I."""
        return f"{self.holder}.{self.name}{self.signature}"

    @property
    def java_name(self) -> str:
        return f"{self.holder}.{self.name}"


_PRIMITIVE_DESCRIPTORS = {"B": "byte", "C": "char", "D": "double", "F": "float", "I": "int", "J": "long",
                          "S": "short", "Z": "boolean"}
MAX_ARRAY_DIMENSIONS = 255   # the JVM's limit


def java_class_name(internal: str) -> str:
    """A Klass's name as Java source writes it: java/lang/String -> java.lang.String, [B -> byte[],
    [[I -> int[][], [Ljava/lang/String; -> java.lang.String[] (array klasses are named by descriptor)."""
    dims = len(internal) - len(internal.lstrip("["))
    if dims == 0:
        return external_class_name(internal)
    if dims > MAX_ARRAY_DIMENSIONS:
        raise MemoryReadError(f"implausible array class name {internal[:40]!r}")
    element = internal[dims:]
    if element in _PRIMITIVE_DESCRIPTORS:
        base = _PRIMITIVE_DESCRIPTORS[element]
    elif element.startswith("L") and element.endswith(";") and len(element) > 2:
        base = external_class_name(element[1:-1])
    else:
        raise MemoryReadError(f"implausible array class name {internal[:40]!r}")
    return base + "[]" * dims


def external_class_name(internal: str) -> str:
    """java/lang/String -> java.lang.String; hidden classes Foo$$Lambda+0x1 -> Foo$$Lambda/0x1."""
    name = internal.replace("/", ".")
    plus = name.rfind("+0x")
    if plus > 0:
        name = name[:plus] + "/" + name[plus + 1 :]
    return name


class PagedMemory:
    """A read cache of whole pages over another MemoryReader, for one pass over many Method*s.

    Resolving a Method* costs ~6 small reads (Method, ConstMethod, constant pool length and entries);
    the Methods, ConstMethods and constant pool of one class sit next to each other in metaspace, so a
    walk of 50k nmethods touches a few thousand pages instead of making 300k reads. Meant to live for one
    walk (it never sees later writes). An unreadable page is remembered as such and fails every read that
    touches it. Offers the typed reads MethodResolver uses (ptr, u16, i32, bytes), like a Reader.
    """

    def __init__(self, mem: MemoryReader, max_pages: int = MAX_PAGES) -> None:
        self.mem = mem
        self._pages: LRUCache[int, Optional[bytes]] = LRUCache("metaspace pages (walk)", max_pages)

    def _page(self, number: int) -> bytes:
        found, page = self._pages.lookup(number)
        if not found:
            try:
                page = self.mem.read(number * PAGE, PAGE)
            except MemoryReadError:
                page = None   # remembered: every read touching it fails without another pread
            self._pages.put(number, page)
        if page is None:
            raise MemoryReadError(f"page 0x{number * PAGE:x} unreadable")
        return page

    def read(self, address: int, size: int) -> bytes:
        check_range(address, size)
        first, last = address // PAGE, (address + size - 1) // PAGE
        if size <= 0 or last - first > 1:
            return self.mem.read(address, size)
        page = self._page(first)
        off = address - first * PAGE
        if first == last:
            return page[off : off + size]
        return page[off:] + self._page(last)[: size - (PAGE - off)]

    bytes = read

    def view(self, address: int, size: int) -> tuple[bytes, int]:
        """(buffer, offset) holding `size` bytes at `address`: the cached page itself when they fit in it."""
        off = address & (PAGE - 1)
        page = self._pages.peek(address // PAGE) if address > 0 and off <= PAGE - size else None
        if page is None:
            return self.read(address, size), 0
        return page, off

    def _unpack(self, fmt: struct.Struct, address: int) -> int:
        buf, off = self.view(address, fmt.size)
        return fmt.unpack_from(buf, off)[0]

    def ptr(self, address: int) -> int:
        off = address & (PAGE - 1)
        page = self._pages.peek(address // PAGE) if address > 0 and off <= PAGE - 8 else None
        if page is None:
            return _U64.unpack(self.read(address, 8))[0]
        return _U64.unpack_from(page, off)[0]

    def u16(self, address: int) -> int:
        return self._unpack(_U16, address)

    def i32(self, address: int) -> int:
        return self._unpack(_I32, address)


# What MethodResolver reads through: a Reader (direct reads) or a PagedMemory (one walk).
Reads = Union[Reader, PagedMemory]


class MethodResolver:
    """Resolves Method* pointers with caches; every failure is a MemoryReadError for the caller to count.

    The caches are keyed by addresses in metaspace, which class unloading frees and a class loaded later
    reuses: a class of the same shape gets its Method, ConstMethod and ConstantPool at the very addresses
    of the unloaded one (and a Symbol whose last class went may be freed and its memory reused). So the
    caches are dropped when metadata may have been freed (_check_metadata): when the JVM's count of
    unloaded classes moved, or, where that count cannot be read or a JVMTI agent may redefine classes
    (redefinition frees the old versions' metadata too), whenever the GC count moved (the conservative
    rule). A GC that unloads nothing no longer costs every cached name: on a busy server that was ~20 full
    re-reads of every method, constant pool and symbol in use in 20 s. `generation` counts the drops for
    callers that cache what they derived from a MethodInfo (DebugInfo's line tables, the unwinder's
    interpreted frames).
    """

    def __init__(self, reader: Reader, layout: Layout) -> None:
        self.r = reader
        self.lay = layout
        self.cp_header = layout.type_size("ConstantPool", 72)
        self.const_method_size = layout.type_size("ConstMethod", 56)
        self.symbol_len_off = layout.offset("Symbol._length")
        self.symbol_body_off = (
            layout.offset("Symbol._body") if layout.has("Symbol._body") else self.symbol_len_off + 2
        )
        self._const_method_off = layout.offset("Method._constMethod")
        self._cp_length_off = (layout.offset("ConstantPool._length") if layout.has("ConstantPool._length")
                               else -1)
        # constants, name index, signature index, code size, flags (0 when not published)
        self._const_method_fields = layout.unpacker([
            "ConstMethod._constants", "ConstMethod._name_index", "ConstMethod._signature_index",
            "ConstMethod._code_size", "ConstMethod._flags"])
        # The source file's constant-pool index: a ConstantPool field on 15+, an InstanceKlass one on 11
        self._source_index_in_cp = layout.has("ConstantPool._source_file_name_index")
        self._source_index_off = (
            layout.offset("ConstantPool._source_file_name_index") if self._source_index_in_cp
            else layout.offset("InstanceKlass._source_file_name_index")
            if layout.has("InstanceKlass._source_file_name_index") else -1)
        self._anonymous = layout.anonymous_class_flag
        self._methods: LRUCache[int, tuple[int, MethodInfo]] = LRUCache("Method* -> method", MAX_CACHE)
        self._symbols: LRUCache[int, str] = LRUCache("Symbol* -> text", MAX_CACHE)
        # ConstantPool* -> (class, source, length)
        self._holders: LRUCache[int, tuple[str, str, int]] = LRUCache("ConstantPool* -> class", MAX_CACHE)
        self._klasses: LRUCache[int, str] = LRUCache("Klass* -> class name", MAX_CACHE)
        self._klass_name_off = layout.offset("Klass._name")
        self.failures = 0
        self.generation = 0
        self.watch = MetadataWatch(reader, layout)

    def clear(self) -> None:
        """Forget every cached Method, ConstantPool and Symbol."""
        self._methods.clear()
        self._symbols.clear()
        self._holders.clear()
        self._klasses.clear()
        self.generation += 1

    def _check_metadata(self) -> None:
        """Drop the caches if metadata may have been freed since the last look (MetadataWatch)."""
        if self.watch.may_have_freed():
            self.clear()

    def settled_at(self) -> int:
        """A CLOCK_MONOTONIC time in ns (sample times' clock) up to which nothing cached can have been
        freed: what the resolver knew before then still holds for a sample taken before then, without a
        read of its own (the exact rule of MetadataWatch, after a look that may drop the caches, bumping
        `generation`). 0 where only the conservative rule applies."""
        self._check_metadata()
        return self.watch.settled_ns

    def resolve(self, method: int, reader: Optional[Reads] = None) -> MethodInfo:
        """The method behind a Method*; re-validated against its ConstMethod*, and against class unloading.

        `reader`: read through this one instead of direct reads (a PagedMemory during a walk)."""
        self._check_metadata()
        r = reader or self.r
        const_method = r.ptr(method + self._const_method_off)
        cached = self._methods.get(method)
        if cached is not None and cached[0] == const_method:
            return cached[1]
        try:
            info = self._resolve_const_method(const_method, r)
        except MemoryReadError:
            self.failures += 1
            raise
        self._methods.put(method, (const_method, info))
        return info

    def class_name(self, klass: int) -> str:
        """The Java name of a Klass* (an allocated object's class, a monitor's): java.lang.String,
        byte[], int[][]. Cached per Klass* until classes are unloaded; a
        MemoryReadError when the Klass or its name cannot be read or is not a class name."""
        self._check_metadata()
        cached = self._klasses.get(klass)
        if cached is not None:
            return cached
        if klass == 0:
            raise MemoryReadError("null Klass*")
        name = java_class_name(self.symbol(self.r.ptr(klass + self._klass_name_off)))
        self._klasses.put(klass, name)
        return name

    def try_resolve(self, method: int) -> Optional[MethodInfo]:
        try:
            return self.resolve(method)
        except MemoryReadError:
            return None

    def _resolve_const_method(self, const_method: int, r: Reads) -> MethodInfo:
        if isinstance(r, PagedMemory):
            raw, at = r.view(const_method, self.const_method_size)
        else:
            raw, at = r.bytes(const_method, self.const_method_size), 0
        try:
            cp, name_index, sig_index, code_size, flags = self._const_method_fields(raw, at)
        except struct.error:
            raise MemoryReadError("ConstMethod larger than its published size") from None
        holder, source, cp_length = self._holders.get(cp) or self._holder(cp, r)
        if not (0 < name_index < cp_length and 0 < sig_index < cp_length):
            raise MemoryReadError(f"constant pool index {name_index}/{sig_index} outside 1..{cp_length - 1}")
        entries = cp + self.cp_header
        name_sym = r.ptr(entries + 8 * name_index) & ~1
        sig_sym = r.ptr(entries + 8 * sig_index) & ~1
        symbols = self._symbols
        name = symbols.get(name_sym)
        if name is None:
            name = self.symbol(name_sym, r)
        signature = symbols.get(sig_sym)
        if signature is None:
            signature = self.symbol(sig_sym, r)
        # MethodInfo(...) without the frozen dataclass's per-field object.__setattr__ (a walk makes 50k)
        info = object.__new__(MethodInfo)
        info.__dict__.update(holder=holder, name=name, signature=signature, source_file=source,
                             const_method=const_method, code_size=code_size, flags=flags)
        return info

    def _holder(self, cp: int, r: Reads) -> tuple[str, str, int]:
        """(class name, source file, constant pool length) of a ConstantPool*."""
        lay = self.lay
        cp_length = r.i32(cp + self._cp_length_off) if self._cp_length_off >= 0 else 1 << 16
        klass = r.ptr(cp + lay.offset("ConstantPool._pool_holder"))
        holder = external_class_name(self.symbol(r.ptr(klass + lay.offset("Klass._name")), r))
        if self._anonymous is not None and self._is_anonymous(klass, r):
            holder = f"{holder}/0x{klass:016x}"
        source = ""
        if self._source_index_off >= 0:
            try:
                index = r.u16((cp if self._source_index_in_cp else klass) + self._source_index_off)
                source = self._cp_symbol(cp, index, r, cp_length) if index else ""
            except MemoryReadError:
                source = ""
        self._holders.put(cp, (holder, source, cp_length))
        return holder, source, cp_length

    def _is_anonymous(self, klass: int, r: Reads) -> bool:
        assert self._anonymous is not None
        flags, bit = self._anonymous
        raw = r.bytes(klass + flags.offset, flags.size)
        return bool(int.from_bytes(raw, "little") & bit)

    def _cp_symbol(self, cp: int, index: int, r: Reads, cp_length: int) -> str:
        if not 0 < index < cp_length:
            raise MemoryReadError(f"constant pool index {index} outside 1..{cp_length - 1}")
        entry = r.ptr(cp + self.cp_header + 8 * index) & ~1
        cached = self._symbols.get(entry)
        return cached if cached is not None else self.symbol(entry, r)

    def symbol(self, address: int, reader: Optional[Reads] = None) -> str:
        """A Symbol's UTF-8 body (HotSpot uses modified UTF-8; names are ASCII in practice)."""
        cached = self._symbols.get(address)
        if cached is not None:
            return cached
        if address == 0:
            raise MemoryReadError("null Symbol*")
        r = reader or self.r
        try:
            head = r.bytes(address, SYMBOL_PREFETCH)
        except MemoryReadError:
            head = r.bytes(address, self.symbol_body_off)
        length = int.from_bytes(head[self.symbol_len_off : self.symbol_len_off + 2], "little")
        if length > MAX_SYMBOL:
            raise MemoryReadError(f"symbol too long: {length}")
        end = self.symbol_body_off + length
        body = head[self.symbol_body_off : end] if end <= len(head) else r.bytes(
            address + self.symbol_body_off, length)
        text = body.decode("utf-8", "replace")
        self._symbols.put(address, text)
        return text


# JvmtiExport::_redefinition_count (a .bss symbol of libjvm, JDK 17+; not in VMStructs): incremented by
# VM_RedefineClasses for every class redefined or retransformed, before the old versions' metadata is freed
REDEFINITION_COUNT = "_ZN11JvmtiExport19_redefinition_countE"


class MetadataWatch:
    """Says when metadata the resolver cached may have been freed: one batched read of a few words, at
    most every GC_CHECK_INTERVAL.

    - Exact, when the JVM publishes its count of unloaded classes (the perf data counter
      java.cls.unloadedClasses) and says when classes are redefined (JvmtiExport::_redefinition_count,
      from libjvm's symbols; where it lacks that symbol, JDK 11: JvmtiExport::_can_hotswap_or_post_breakpoint
      is false, i.e. no agent can redefine classes): metaspace is freed only when classes are unloaded
      or old versions of redefined classes go, and both counts move before that memory is freed
      (ClassLoaderData::unload comes before the purge; VM_RedefineClasses before the deallocation of the
      old versions). As the free may come after the look that saw a count move (ZGC unloads
      concurrently; old versions go once no frame runs them) and a name read in between could be a dying
      class's, the caches are dropped once more at the next GC or SETTLE_S later, whichever comes first.
      GCs that unload nothing keep the caches.
    - Conservative otherwise (no perf data: -XX:-UsePerfData; JDK 11 with an agent that may redefine
      classes): whenever the GC count moved, as before. Seeing the redefinition capability appear drops
      the caches at once.
    """

    def __init__(self, reader: Reader, layout: Layout) -> None:
        self.r = reader
        self.checked_at = 0.0
        self.gcs_kept = 0                   # GCs after which the caches were kept (nothing unloaded)
        self.drops: dict[str, int] = {}     # why the caches were dropped -> how often
        gc_address = 0
        self._gc_mask = (1 << 64) - 1
        if layout.has("Universe._collectedHeap") and layout.has("CollectedHeap._total_collections"):
            counter = layout["CollectedHeap._total_collections"]
            self._gc_mask = (1 << (8 * min(counter.size, 8))) - 1
            try:
                heap = reader.ptr(layout["Universe._collectedHeap"].address)
            except MemoryReadError:
                heap = 0
            gc_address = heap + counter.offset if heap else 0
        unloaded = counter_addresses(reader, layout, (UNLOADED_CLASSES,)).get(UNLOADED_CLASSES, 0)
        symbol = layout.symbols.lookup(REDEFINITION_COUNT) if layout.symbols is not None else None
        redefined = layout.libjvm_base + symbol.value if symbol is not None and symbol.value else 0
        hotswap = (layout["JvmtiExport._can_hotswap_or_post_breakpoint"].address
                   if not redefined and layout.has("JvmtiExport._can_hotswap_or_post_breakpoint") else 0)
        # the words read at each look; a missing one is never read (0 stands for "not published")
        self._addresses = [a for a in (gc_address, unloaded, redefined, hotswap) if a]
        self._gc_address, self._unloaded_address = gc_address, unloaded
        self._redefined_address, self._hotswap_address = redefined, hotswap
        self._last: Optional[Look] = None
        self._settle: Optional[tuple[Optional[int], float]] = None   # (GC count, deadline) of a re-drop
        # the last look, by the exact rule, that found nothing freed since the one before (0: none yet, or
        # the conservative rule applies): see MethodResolver.settled_at
        self.settled_ns = 0

    @property
    def exact(self) -> bool:
        """Whether the counts the exact rule needs are published (it applies while no JDK 11 agent may
        redefine classes)."""
        return bool(self._unloaded_address and (self._redefined_address or self._hotswap_address))

    def _read(self) -> Optional[Look]:
        """What a look sees; None when nothing could be read."""
        try:
            values = dict(zip(self._addresses, self.r.many(self._addresses, 8)))
        except MemoryReadError:
            return None
        gc = values.get(self._gc_address) if self._gc_address else None
        unloaded = values.get(self._unloaded_address) if self._unloaded_address else None
        redefined = values.get(self._redefined_address) if self._redefined_address else None
        flag = values.get(self._hotswap_address) if self._hotswap_address else None
        if gc is None and unloaded is None:
            return None
        # a bool (one byte), an unsigned int (four) and a uint64 read as words: their own bytes only
        # the metadata counts: exact while both are known (no agent can redefine: a constant 0 count)
        counts = None
        if unloaded is not None and redefined is not None:
            counts = (unloaded, redefined)
        elif unloaded is not None and not self._redefined_address and flag is not None and not flag & 0xFF:
            counts = (unloaded, 0)
        return Look(gc & self._gc_mask if gc is not None else None, counts)

    def may_have_freed(self) -> bool:
        """Has metadata possibly been freed since the last look? (False between looks.)"""
        now = time.monotonic()
        if not self._addresses or now - self.checked_at < GC_CHECK_INTERVAL:
            return False
        self.checked_at = now
        looked_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # before the read: samples up to now
        seen = self._read()
        if seen is None:
            return False
        last, self._last = self._last, seen
        if last is None:
            return False
        self.settled_ns = 0     # until this look has shown that nothing was freed
        gc_moved = seen.gc != last.gc
        if seen.counts is None:
            if last.counts is not None:
                return self._drop("redefinition possible")
            return self._drop("GC") if gc_moved else False
        if last.counts is None:
            # the exact rule applies from now on: dropping once more makes it hold from here
            return self._drop("exact rule from now")
        if seen.counts != last.counts:
            self._settle = (seen.gc, now + SETTLE_S)
            return self._drop("classes unloaded" if seen.counts[0] != last.counts[0] else "classes redefined")
        if self._settle is not None and (seen.gc != self._settle[0] or now >= self._settle[1]):
            self._settle = None
            return self._drop("settled")
        self.gcs_kept += gc_moved
        if self._settle is None:
            self.settled_ns = looked_ns
        return False

    def _drop(self, why: str) -> bool:
        self.drops[why] = self.drops.get(why, 0) + 1
        return True


class Look(NamedTuple):
    """One look of MetadataWatch: the GC count, and the (unloaded classes, redefined classes) counts where
    the exact rule applies (None where it does not)."""

    gc: Optional[int]
    counts: Optional[tuple[int, int]]
