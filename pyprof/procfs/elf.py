"""ELF symbols of a mapped shared object (libjvm, libc, JNI libraries).

pyelftools reads the headers (sections, build-id note); the symbol tables themselves are decoded with
struct.iter_unpack over the raw section bytes, which is ~20x faster than pyelftools' per-symbol objects
(libjvm has ~70k symbols: 1.5 s vs 0.07 s).
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, Optional

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pyprof.errors import MemoryReadError
from pyprof.lru import LRUCache

_SYM = struct.Struct("<IBBHQQ")   # Elf64_Sym: name, info, other, shndx, value, size
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_GNU_IFUNC = 0, 1, 2, 10
STT_LABEL = 16                      # pyprof's own kind: an STT_NOTYPE symbol in a code section
CODE_KINDS = (STT_FUNC, STT_GNU_IFUNC, STT_LABEL)
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
MAX_SECTION = 256 * 1024 * 1024    # refuse absurd symbol tables (the file may be hostile)


@dataclass(frozen=True, slots=True)   # slots: libjvm has ~70k of them (a __dict__ each cost 6 MiB)
class Symbol:
    name: str
    value: int     # link-time virtual address
    size: int
    kind: int      # STT_*
    table: str     # ".dynsym" or ".symtab"
    binding: int = STB_GLOBAL


@dataclass
class ElfSymbols:
    """All symbols of one ELF file, by name and by address."""

    path: str
    build_id: str = ""
    has_symtab: bool = False
    debuglink: str = ""           # .gnu_debuglink: the file name of the separate debug file
    debugdata: bytes = b""        # .gnu_debugdata: MiniDebugInfo, an xz-compressed ELF with a .symtab
    symbols: list[Symbol] = field(default_factory=list)
    _by_name: dict[str, Symbol] = field(default_factory=dict, repr=False)
    _funcs: list[Symbol] = field(default_factory=list, repr=False)
    _func_starts: list[int] = field(default_factory=list, repr=False)
    aliases: dict[int, list[Symbol]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str) -> ElfSymbols:
        try:
            with open(path, "rb") as f:
                return cls._from_stream(path, f)
        except (OSError, ELFError, struct.error, ValueError) as e:
            raise MemoryReadError(f"cannot read ELF symbols of {path}: {e}") from e

    @classmethod
    def from_bytes(cls, name: str, image: bytes) -> ElfSymbols:
        """Symbols of an ELF image held in memory (the vDSO, copied from the target)."""
        try:
            return cls._from_stream(name, io.BytesIO(image))
        except (ELFError, struct.error, ValueError) as e:
            raise MemoryReadError(f"cannot read ELF symbols of {name}: {e}") from e

    @classmethod
    def _from_stream(cls, path: str, f: BinaryIO) -> ElfSymbols:
        elf = ELFFile(f)
        out = cls(path=path, build_id=_build_id(elf), debuglink=_debuglink(elf),
                  debugdata=_section_bytes(f, elf, ".gnu_debugdata", MAX_DEBUGDATA))
        for table in (".dynsym", ".symtab"):
            section = elf.get_section_by_name(table)
            if section is None or section["sh_type"] == "SHT_NOBITS":
                continue
            strtab = elf.get_section(section["sh_link"])
            out.symbols.extend(_decode_symbols(f, section, strtab, table, _code_sections(elf)))
            out.has_symtab |= table == ".symtab"
        out.symbols.extend(_plt_symbols(f, elf))
        out._index()
        return out

    def _index(self) -> None:
        for sym in self.symbols:
            # .dynsym first, so exported (versioned) names win over local duplicates
            self._by_name.setdefault(sym.name, sym)
        # With a .symtab, the .dynsym adds nothing (it is a subset); perf names from the .symtab alone,
        # plus the PLT entries it synthesizes (memcpy@plt).
        tables = (".symtab" if self.has_symtab else ".dynsym", ".plt")
        funcs: dict[int, Symbol] = {}
        for s in self.symbols:
            if s.kind in CODE_KINDS and s.value and s.table in tables:
                held = funcs.get(s.value)
                funcs[s.value] = s if held is None or _perf_prefers(s, held) else held
        # every function at an address, for callers that choose among aliases by their demangled names
        self.aliases = {}
        for s in self.symbols:
            if s.kind in CODE_KINDS and s.value and s.table in tables \
                    and funcs[s.value] is not s and s.name != funcs[s.value].name:
                self.aliases.setdefault(s.value, [funcs[s.value]]).append(s)
        ordered = sorted(funcs.values(), key=lambda s: s.value)
        # perf's symbols__fixup_end: a function without a size (assembly: SpinPause, the Copy stubs)
        # ends where the next one begins
        self._funcs = [s if s.size or i + 1 == len(ordered) else dataclasses.replace(
            s, size=ordered[i + 1].value - s.value) for i, s in enumerate(ordered)]
        self._func_starts = [s.value for s in self._funcs]

    def merged_with(self, debug: ElfSymbols) -> ElfSymbols:
        """These symbols plus a separate debug file's (.symtab of the same link-time addresses)."""
        out = ElfSymbols(path=self.path, build_id=self.build_id or debug.build_id,
                         has_symtab=self.has_symtab or debug.has_symtab, debuglink=self.debuglink)
        out.symbols = self.symbols + [s for s in debug.symbols if s.table == ".symtab"]
        out._index()
        return out

    def lookup(self, name: str) -> Optional[Symbol]:
        return self._by_name.get(name)

    def find(self, predicate: Callable[[str], bool]) -> Iterator[Symbol]:
        return (s for s in self._by_name.values() if predicate(s.name))

    def function_at(self, vaddr: int) -> Optional[Symbol]:
        """The function containing link-time address `vaddr`, if any."""
        i = bisect.bisect_right(self._func_starts, vaddr) - 1
        if i < 0:
            return None
        sym = self._funcs[i]
        return sym if vaddr < sym.value + sym.size else None


_RELA = struct.Struct("<QQq")     # Elf64_Rela: offset, info, addend
R_X86_64_JUMP_SLOT, R_X86_64_IRELATIVE = 7, 37
PLT_ENTRY = 16
GOT_PLT_RESERVED = 3              # .got.plt's first three slots belong to the dynamic linker
MAX_PLT_ENTRIES = 1 << 16


def _plt_symbols(f: BinaryIO, elf: ELFFile) -> list[Symbol]:
    """`name@plt` for each PLT entry, as perf synthesizes them.

    A .rela.plt relocation patches one .got.plt slot, and the n-th PLT entry (of .plt.sec on IBT builds,
    else of .plt after its 16-byte header) jumps through slot 3 + n. The relocations are not in slot
    order when some are R_X86_64_IRELATIVE (libc's own ifuncs: strnlen, strcmp), so the entry is found
    from the slot, not from the relocation's position. An IRELATIVE slot has no symbol (perf prints a
    bare `@plt`); it is named after the IFUNC symbol whose resolver its addend is."""
    rela = elf.get_section_by_name(".rela.plt")
    dynsym = elf.get_section_by_name(".dynsym")
    sec = elf.get_section_by_name(".plt.sec")
    plt = sec if sec is not None else elf.get_section_by_name(".plt")
    got = elf.get_section_by_name(".got.plt")
    if rela is None or dynsym is None or plt is None or rela["sh_size"] > MAX_PLT_ENTRIES * _RELA.size:
        return []
    first = plt["sh_addr"] + (0 if sec is not None else PLT_ENTRY)
    strtab = elf.get_section(dynsym["sh_link"])
    if dynsym["sh_size"] > MAX_SECTION or strtab["sh_size"] > MAX_SECTION:
        return []
    f.seek(rela["sh_offset"])
    relocs = f.read(rela["sh_size"] - rela["sh_size"] % _RELA.size)
    f.seek(dynsym["sh_offset"])
    syms = f.read(dynsym["sh_size"] - dynsym["sh_size"] % _SYM.size)
    f.seek(strtab["sh_offset"])
    strings = f.read(strtab["sh_size"])

    def name_at(name_off: int) -> str:
        end = strings.find(b"\0", name_off)
        return strings[name_off:end].decode("utf-8", "replace") if 0 < name_off < end else ""

    ifuncs: dict[int, str] = {}
    if any(info & 0xFFFFFFFF == R_X86_64_IRELATIVE for _o, info, _a in _RELA.iter_unpack(relocs)):
        for name_off, info, _other, _shndx, value, _size in _SYM.iter_unpack(syms):
            if info & 0xF == STT_GNU_IFUNC and value not in ifuncs:
                ifuncs[value] = name_at(name_off)
    end = plt["sh_addr"] + plt["sh_size"]
    out = []
    for n, (offset, info, addend) in enumerate(_RELA.iter_unpack(relocs)):
        kind, index = info & 0xFFFFFFFF, info >> 32
        if got is not None:
            n = (offset - got["sh_addr"]) // 8 - GOT_PLT_RESERVED
        at = first + n * PLT_ENTRY
        if n < 0 or at + PLT_ENTRY > end:
            continue
        if kind == R_X86_64_JUMP_SLOT and 0 < index and (index + 1) * _SYM.size <= len(syms):
            name = name_at(_SYM.unpack_from(syms, index * _SYM.size)[0])
        elif kind == R_X86_64_IRELATIVE:
            name = ifuncs.get(addend, "")
        else:
            continue
        out.append(Symbol(f"{name}@plt", at, PLT_ENTRY, STT_FUNC, ".plt"))
    return out


def _perf_prefers(a: Symbol, b: Symbol) -> bool:
    """Of two functions at one address, the one `perf report` names (tools/perf's choose_best_symbol):
    one with a size, non-weak, then global, then fewer leading underscores, then the longer name."""
    def rank(s: Symbol) -> tuple:
        underscores = len(s.name) - len(s.name.lstrip("_"))
        return (s.size > 0, s.binding != STB_WEAK, s.binding == STB_GLOBAL, -underscores, len(s.name))
    return rank(a) > rank(b)


def _code_sections(elf: ELFFile) -> frozenset[int]:
    """Indexes of the sections holding code (SHF_EXECINSTR)."""
    return frozenset(i for i, sec in enumerate(elf.iter_sections()) if sec["sh_flags"] & 0x4)


def _decode_symbols(f: BinaryIO, section, strtab, table: str, code: frozenset[int] = frozenset()
                    ) -> Iterator[Symbol]:
    size = section["sh_size"]
    if size > MAX_SECTION or strtab["sh_size"] > MAX_SECTION:
        raise ValueError(f"{table} too large ({size} bytes)")
    f.seek(section["sh_offset"])
    raw = f.read(size - size % _SYM.size)
    f.seek(strtab["sh_offset"])
    strings = f.read(strtab["sh_size"])
    for name_off, info, other, shndx, value, sym_size in _SYM.iter_unpack(raw):
        if not name_off or name_off >= len(strings):
            continue
        kind = info & 0xF
        if kind == STT_NOTYPE:
            # an assembly label in code (aci_CopyRight): perf names addresses after it by it, unless it
            # is hidden or internal (st_other visibility 2, 1)
            if shndx not in code or other & 3 in (1, 2):
                continue
            kind = STT_LABEL
        end = strings.find(b"\0", name_off)
        name = strings[name_off : end if end >= 0 else len(strings)].decode("utf-8", "replace")
        yield Symbol(name, value, sym_size, kind, table, info >> 4)


MAX_DEBUGDATA = 64 << 20


def _section_bytes(f: BinaryIO, elf: ELFFile, name: str, limit: int) -> bytes:
    section = elf.get_section_by_name(name)
    if section is None or section["sh_type"] == "SHT_NOBITS" or section["sh_size"] > limit:
        return b""
    f.seek(section["sh_offset"])
    return f.read(section["sh_size"])


def _debuglink(elf: ELFFile) -> str:
    section = elf.get_section_by_name(".gnu_debuglink")
    if section is None or section["sh_type"] == "SHT_NOBITS" or section["sh_size"] > 4096:
        return ""
    name = section.data().split(b"\0", 1)[0].decode("utf-8", "replace")
    return name if name and "/" not in name and name not in (".", "..") else ""


def _build_id(elf: ELFFile) -> str:
    section = elf.get_section_by_name(".note.gnu.build-id")
    if section is None:
        return ""
    for note in section.iter_notes():
        if note["n_type"] == "NT_GNU_BUILD_ID":
            return str(note["n_desc"])
    return ""


_symbols_cache: LRUCache[tuple[int, int, int, int], ElfSymbols] = LRUCache("ELF file -> symbols", 256)


def load_symbols_cached(path: str) -> ElfSymbols:
    """ELF symbols, cached per file (device, inode, size, mtime): a JVM is opened several times per run,
    the native symbolizer opens the same libjvm again, and JVMs of one JDK (a daemon's, containers
    included: /proc/PID/map_files paths differ, the inode does not) share one parse."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return _symbols_cache.get_or_compute(key, lambda: ElfSymbols.load(path))


PF_X = 1


def file_offset_of(path: str, vaddr: int) -> Optional[int]:
    """The file offset of link-time address `vaddr` of the ELF file `path`: through the executable PT_LOAD
    segment holding it, as a uprobe needs it (bcc_resolve_symname does the same). None: in none."""
    try:
        with open(path, "rb") as f:
            for segment in ELFFile(f).iter_segments():
                h = segment.header
                if h["p_type"] == "PT_LOAD" and h["p_flags"] & PF_X and \
                        h["p_vaddr"] <= vaddr < h["p_vaddr"] + h["p_memsz"]:
                    return vaddr - h["p_vaddr"] + h["p_offset"]
    except (OSError, ELFError, struct.error, ValueError):
        return None
    return None
