"""HotSpot's self-description: the gHotSpotVMStructs / VMTypes / Int- and LongConstants tables.

libjvm exports pointers to these tables and the layout of their entries (stride and field offsets) as
`gHotSpot*` symbols. Their *values* are read from process memory: the table pointers are relocated at
load time and the stride/offset variables live in .bss (zero in the file). See
https://github.com/openjdk/jdk/blob/master/src/hotspot/share/runtime/vmStructs.cpp
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pyprof.errors import MemoryReadError, UnsupportedJvm
from pyprof.procfs.elf import ElfSymbols
from pyprof.procfs.memory import Reader

MAX_ENTRIES = 20_000      # ~600-800 in practice; a cap so a corrupted table cannot loop forever
MAX_STRIDE = 4096
NAME_LIMIT = 256

# C primitive sizes: some VMStructs type strings ("long", "volatile signed char") are not in VMTypes.
PRIMITIVE_SIZES = {
    "bool": 1, "char": 1, "signed char": 1, "unsigned char": 1, "jbyte": 1, "jboolean": 1, "u1": 1,
    "short": 2, "unsigned short": 2, "jshort": 2, "jchar": 2, "u2": 2,
    "int": 4, "unsigned int": 4, "jint": 4, "u4": 4, "int32_t": 4, "uint32_t": 4, "float": 4,
    "long": 8, "unsigned long": 8, "jlong": 8, "u8": 8, "int64_t": 8, "uint64_t": 8, "double": 8,
    "size_t": 8, "intptr_t": 8, "uintptr_t": 8, "intx": 8, "uintx": 8, "address": 8,
}


@dataclass(frozen=True)
class FieldEntry:
    type_name: str
    field_name: str
    type_string: str
    is_static: bool
    offset: int       # for instance fields
    address: int      # for static fields


@dataclass(frozen=True)
class TypeEntry:
    name: str
    superclass: str
    is_oop: bool
    is_integer: bool
    is_unsigned: bool
    size: int


@dataclass
class VMStructs:
    fields: dict[tuple[str, str], FieldEntry] = field(default_factory=dict)
    types: dict[str, TypeEntry] = field(default_factory=dict)
    int_constants: dict[str, int] = field(default_factory=dict)
    long_constants: dict[str, int] = field(default_factory=dict)

    # ---- lookups -------------------------------------------------------------------------------
    def find_field(self, type_name: str, field_name: str) -> Optional[FieldEntry]:
        """A field of `type_name` or of any of its superclasses (nmethod -> CompiledMethod -> CodeBlob)."""
        seen = 0
        current: Optional[str] = type_name
        while current and seen < 32:
            entry = self.fields.get((current, field_name))
            if entry is not None:
                return entry
            t = self.types.get(current)
            current = t.superclass if t else None
            seen += 1
        return None

    def type_size(self, type_name: str) -> Optional[int]:
        t = self.types.get(type_name)
        if t is not None and t.size:
            return t.size
        name = type_name.replace("volatile ", "").replace("const ", "").strip()
        if name.endswith("*"):
            return 8
        t = self.types.get(name)
        if t is not None and t.size:
            return t.size
        return PRIMITIVE_SIZES.get(name)

    def constant(self, name: str) -> Optional[int]:
        if name in self.int_constants:
            return self.int_constants[name]
        return self.long_constants.get(name)


def _sym_value(reader: Reader, symbols: ElfSymbols, base: int, name: str) -> int:
    sym = symbols.lookup(name)
    if sym is None:
        raise UnsupportedJvm(f"libjvm exports no {name}: not a HotSpot JVM with VMStructs")
    return reader.u64(base + sym.value)


def _layout(reader: Reader, symbols: ElfSymbols, base: int, prefix: str, names: list[str]) -> dict[str, int]:
    """Read gHotSpot<prefix>{ArrayStride, <name>Offset...} from memory."""
    out = {"stride": _sym_value(reader, symbols, base, f"gHotSpot{prefix}ArrayStride")}
    for n in names:
        out[n] = _sym_value(reader, symbols, base, f"gHotSpot{prefix}{n}Offset")
    if not 0 < out["stride"] <= MAX_STRIDE or any(out[n] >= out["stride"] for n in names):
        raise UnsupportedJvm(f"implausible VMStructs entry layout for {prefix}: {out}")
    return out


def _entries(reader: Reader, table: int, stride: int):
    """Yield (entry_address, raw bytes) until a NULL first word."""
    for i in range(MAX_ENTRIES):
        raw = reader.bytes(table + i * stride, stride)
        yield raw
    raise MemoryReadError(f"VMStructs table at 0x{table:x} has no end within {MAX_ENTRIES} entries")


def _word(raw: bytes, off: int, size: int = 8) -> int:
    return int.from_bytes(raw[off : off + size], "little")


def read_vmstructs(reader: Reader, symbols: ElfSymbols, base: int) -> VMStructs:
    """Read all four tables from the live process (7-30 ms)."""
    out = VMStructs()
    _read_fields(reader, symbols, base, out)
    _read_types(reader, symbols, base, out)
    out.int_constants = _read_constants(reader, symbols, base, "VMIntConstant", 4, signed=True)
    out.long_constants = _read_constants(reader, symbols, base, "VMLongConstant", 8, signed=True)
    return out


def _name_at(reader: Reader, ptr: int) -> str:
    return reader.cstring(ptr, NAME_LIMIT) if ptr else ""


def _read_fields(reader: Reader, symbols: ElfSymbols, base: int, out: VMStructs) -> None:
    lay = _layout(reader, symbols, base, "VMStructEntry",
                  ["TypeName", "FieldName", "TypeString", "IsStatic", "Offset", "Address"])
    table = _sym_value(reader, symbols, base, "gHotSpotVMStructs")
    for raw in _entries(reader, table, lay["stride"]):
        type_ptr = _word(raw, lay["TypeName"])
        if type_ptr == 0:
            return
        entry = FieldEntry(
            type_name=_name_at(reader, type_ptr),
            field_name=_name_at(reader, _word(raw, lay["FieldName"])),
            type_string=_name_at(reader, _word(raw, lay["TypeString"])),
            is_static=_word(raw, lay["IsStatic"], 4) != 0,
            offset=_word(raw, lay["Offset"]),
            address=_word(raw, lay["Address"]),
        )
        out.fields[(entry.type_name, entry.field_name)] = entry


def _read_types(reader: Reader, symbols: ElfSymbols, base: int, out: VMStructs) -> None:
    lay = _layout(reader, symbols, base, "VMTypeEntry",
                  ["TypeName", "SuperclassName", "IsOopType", "IsIntegerType", "IsUnsigned", "Size"])
    table = _sym_value(reader, symbols, base, "gHotSpotVMTypes")
    for raw in _entries(reader, table, lay["stride"]):
        name_ptr = _word(raw, lay["TypeName"])
        if name_ptr == 0:
            return
        entry = TypeEntry(
            name=_name_at(reader, name_ptr),
            superclass=_name_at(reader, _word(raw, lay["SuperclassName"])),
            is_oop=_word(raw, lay["IsOopType"], 4) != 0,
            is_integer=_word(raw, lay["IsIntegerType"], 4) != 0,
            is_unsigned=_word(raw, lay["IsUnsigned"], 4) != 0,
            size=_word(raw, lay["Size"]),
        )
        out.types[entry.name] = entry


def _read_constants(reader: Reader, symbols: ElfSymbols, base: int, prefix: str, size: int,
                    signed: bool) -> dict[str, int]:
    lay = _layout(reader, symbols, base, f"{prefix}Entry", ["Name", "Value"])
    table = _sym_value(reader, symbols, base, f"gHotSpot{prefix}s")
    out: dict[str, int] = {}
    for raw in _entries(reader, table, lay["stride"]):
        name_ptr = _word(raw, lay["Name"])
        if name_ptr == 0:
            return out
        value = int.from_bytes(raw[lay["Value"] : lay["Value"] + size], "little", signed=signed)
        out[_name_at(reader, name_ptr)] = value
    return out
