"""Method* -> class, name, signature and source file, read from the target's metaspace.

Method -> _constMethod -> _constants (ConstantPool) -> _pool_holder (Klass) -> _name (Symbol);
ConstMethod::_name_index / _signature_index index the constant pool, whose entries follow the
ConstantPool header (8 bytes each, low bit of the Symbol* is a tag).
See src/hotspot/share/oops/{method,constMethod,constantPool,symbol}.hpp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pyprof.errors import MemoryReadError
from pyprof.hotspot.layout import Layout
from pyprof.procfs.memory import Reader

MAX_SYMBOL = 65535           # Symbol::_length is a u2
SYMBOL_PREFETCH = 96         # most names fit in one read
MAX_CACHE = 500_000


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


def external_class_name(internal: str) -> str:
    """java/lang/String -> java.lang.String; hidden classes Foo$$Lambda+0x1 -> Foo$$Lambda/0x1."""
    name = internal.replace("/", ".")
    plus = name.rfind("+0x")
    if plus > 0:
        name = name[:plus] + "/" + name[plus + 1 :]
    return name


class MethodResolver:
    """Resolves Method* pointers with caches; every failure is a MemoryReadError for the caller to count."""

    def __init__(self, reader: Reader, layout: Layout) -> None:
        self.r = reader
        self.lay = layout
        self.cp_header = layout.type_size("ConstantPool", 72)
        self.const_method_size = layout.type_size("ConstMethod", 56)
        self.symbol_len_off = layout.offset("Symbol._length")
        self.symbol_body_off = (
            layout.offset("Symbol._body") if layout.has("Symbol._body") else self.symbol_len_off + 2
        )
        self._methods: dict[int, tuple[int, MethodInfo]] = {}
        self._symbols: dict[int, str] = {}
        self._holders: dict[int, tuple[str, str]] = {}   # ConstantPool* -> (class, source file)
        self.failures = 0

    def resolve(self, method: int) -> MethodInfo:
        """The method behind a Method*; re-validated against its ConstMethod* so reuse is caught."""
        lay = self.lay
        const_method = self.r.ptr(method + lay.offset("Method._constMethod"))
        cached = self._methods.get(method)
        if cached is not None and cached[0] == const_method:
            return cached[1]
        try:
            info = self._resolve_const_method(const_method)
        except MemoryReadError:
            self.failures += 1
            raise
        if len(self._methods) > MAX_CACHE:
            self._methods.clear()
        self._methods[method] = (const_method, info)
        return info

    def try_resolve(self, method: int) -> Optional[MethodInfo]:
        try:
            return self.resolve(method)
        except MemoryReadError:
            return None

    def _resolve_const_method(self, const_method: int) -> MethodInfo:
        lay = self.lay
        raw = self.r.bytes(const_method, self.const_method_size)
        cp = lay["ConstMethod._constants"].get(raw)
        name_index = lay["ConstMethod._name_index"].get(raw)
        sig_index = lay["ConstMethod._signature_index"].get(raw)
        code_size = lay["ConstMethod._code_size"].get(raw) if lay.has("ConstMethod._code_size") else 0
        flags = lay["ConstMethod._flags"].get(raw) if lay.has("ConstMethod._flags") else 0
        holder, source = self._holder(cp)
        name = self._cp_symbol(cp, name_index)
        signature = self._cp_symbol(cp, sig_index)
        return MethodInfo(holder, name, signature, source, const_method, code_size, flags)

    def _holder(self, cp: int) -> tuple[str, str]:
        cached = self._holders.get(cp)
        if cached is not None:
            return cached
        lay = self.lay
        klass = self.r.ptr(cp + lay.offset("ConstantPool._pool_holder"))
        holder = external_class_name(self.symbol(self.r.ptr(klass + lay.offset("Klass._name"))))
        source = ""
        if lay.has("ConstantPool._source_file_name_index"):
            index = self.r.u16(cp + lay.offset("ConstantPool._source_file_name_index"))
            if index:
                try:
                    source = self._cp_symbol(cp, index)
                except MemoryReadError:
                    source = ""
        self._holders[cp] = (holder, source)
        return holder, source

    def _cp_symbol(self, cp: int, index: int) -> str:
        if index <= 0:
            raise MemoryReadError(f"bad constant pool index {index}")
        if self.lay.has("ConstantPool._length"):
            length = self.r.i32(cp + self.lay.offset("ConstantPool._length"))
            if index >= length:
                raise MemoryReadError(f"constant pool index {index} >= length {length}")
        entry = self.r.ptr(cp + self.cp_header + 8 * index)
        return self.symbol(entry & ~1)

    def symbol(self, address: int) -> str:
        """A Symbol's UTF-8 body (HotSpot uses modified UTF-8; names are ASCII in practice)."""
        cached = self._symbols.get(address)
        if cached is not None:
            return cached
        if address == 0:
            raise MemoryReadError("null Symbol*")
        try:
            head = self.r.bytes(address, SYMBOL_PREFETCH)
        except MemoryReadError:
            head = self.r.bytes(address, self.symbol_body_off)
        length = int.from_bytes(head[self.symbol_len_off : self.symbol_len_off + 2], "little")
        if length > MAX_SYMBOL:
            raise MemoryReadError(f"symbol too long: {length}")
        end = self.symbol_body_off + length
        body = head[self.symbol_body_off : end] if end <= len(head) else self.r.bytes(
            address + self.symbol_body_off, length)
        text = body.decode("utf-8", "replace")
        if len(self._symbols) > MAX_CACHE:
            self._symbols.clear()
        self._symbols[address] = text
        return text
