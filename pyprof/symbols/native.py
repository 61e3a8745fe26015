"""Native addresses of the target (libjvm, libc, JNI libraries, the launcher) -> symbols.

The mapping comes from /proc/PID/maps (re-read, rate-limited, when an address falls outside every known
mapping: libraries are loaded at run time); the symbols from the ELF file the process really mapped,
opened through /proc/PID/map_files (pyprof.procfs.maps). C++ names are demangled for display; the
mangled name stays as the pprof system name.
"""

from __future__ import annotations

import bisect
import io
import time
from dataclasses import dataclass
from typing import Optional

from pyprof.errors import MemoryReadError, NoSuchProcess, PermissionDenied
from pyprof.lru import LRUCache
from pyprof.model import Mapping
from pyprof.procfs.elf import STB_GLOBAL, STB_WEAK, ElfSymbols, Symbol, load_symbols_cached
from pyprof.procfs.maps import MapEntry, load_base, open_mapped_file, read_maps
from pyprof.procfs.memory import ProcessMemory
from pyprof.symbols.cfi import Rule, TableCache, UnwindTable
from pyprof.symbols.debugfiles import debug_roots, with_debug_symbols
from pyprof.symbols.demangle import demangle, without_parameters

MAPS_REFRESH_INTERVAL = 1.0   # s between re-reads of /proc/PID/maps on a miss
VDSO = "[vdso]"
MAX_VDSO_BYTES = 1 << 20


@dataclass(frozen=True)
class NativeSymbol:
    symbol: Optional[str]      # demangled function name, None when the file has no symbol there
    system_name: str           # the raw (mangled) symbol name, or "" when unknown
    library: str               # path of the mapped file
    mapping: Mapping


@dataclass
class _File:
    path: str
    base: int
    mapping: Mapping
    symbols: Optional[ElfSymbols]
    open_path: str = ""              # how to read the mapped file ("" for the vDSO)
    image: bytes = b""               # the vDSO's ELF image
    table: Optional[UnwindTable] = None
    table_loaded: bool = False


# One per pyprof process: unwind tables are shared by every target mapping the same library.
_TABLES = TableCache()
# Symbols with their debug files, by (build-id or path): every JVM of a host maps the same libc.
_WITH_DEBUG: LRUCache[str, ElfSymbols] = LRUCache("library -> symbols with debug files", 256)


class NativeSymbolizer:
    def __init__(self, pid: int, tables: Optional[TableCache] = None) -> None:
        self.pid = pid
        self.tables = tables if tables is not None else _TABLES
        self.roots = debug_roots(pid)
        self._entries: list[MapEntry] = []
        self._starts: list[int] = []
        self._files: dict[str, _File] = {}
        self._all: list[MapEntry] = []
        self._last_refresh = 0.0
        self.refresh()

    def refresh(self) -> None:
        self._last_refresh = time.monotonic()
        try:
            maps = read_maps(self.pid)
        except (NoSuchProcess, PermissionDenied):
            return
        code = (m for m in maps if m.executable and (m.path.startswith("/") or m.path == VDSO))
        self._entries = sorted(code, key=lambda m: m.start)
        self._starts = [m.start for m in self._entries]
        self._all = maps

    def prepare(self, basenames: tuple[str, ...] = ("libjvm.so", "libc.so.6")) -> None:
        """Load the unwind tables (and symbols) of these libraries now. Building libjvm's CFI table the
        first time costs seconds of CPU (later runs read it from the disk cache): done before sampling
        starts, it cannot stall the ring buffer's drain and lose samples."""
        for entry in self._entries:
            if entry.basename in basenames:
                self.unwind_rule(entry.start)

    def _entry(self, pc: int) -> Optional[MapEntry]:
        i = bisect.bisect_right(self._starts, pc) - 1
        if i >= 0 and self._entries[i].contains(pc):
            return self._entries[i]
        return None

    def symbolize(self, pc: int) -> Optional[NativeSymbol]:
        entry = self._entry(pc)
        if entry is None and time.monotonic() - self._last_refresh > MAPS_REFRESH_INTERVAL:
            self.refresh()
            entry = self._entry(pc)
        if entry is None:
            return None
        file = self._file(entry)
        sym = file.symbols.function_at(pc - file.base) if file.symbols is not None else None
        if sym is not None and sym.value in file.symbols.aliases:
            sym = _perf_alias(file.symbols.aliases[sym.value])
        if sym is None:
            return NativeSymbol(None, "", file.path, file.mapping)
        return NativeSymbol(demangle(sym.name), sym.name, file.path, file.mapping)

    def starts_function(self, pc: int) -> bool:
        """Is `pc` the first byte of a function (where pyprof puts its uprobes)?"""
        entry = self._entry(pc)
        if entry is None:
            return False
        file = self._file(entry)
        sym = file.symbols.function_at(pc - file.base) if file.symbols is not None else None
        return sym is not None and sym.value == pc - file.base

    def unwind_rule(self, pc: int) -> tuple[bool, Optional[Rule]]:
        """The CFI rule of native code at `pc` (a return address already moved into its call): (is the
        pc in a mapped file at all, the rule or None when the file has no CFI there)."""
        entry = self._entry(pc)
        if entry is None:
            return False, None
        file = self._file(entry)
        if not file.table_loaded:
            file.table_loaded = True
            file.table = self._table(file)
        if file.table is None:
            return True, None
        return True, file.table.rule_at(pc - file.base)

    def _table(self, file: _File) -> Optional[UnwindTable]:
        build_id = file.symbols.build_id if file.symbols is not None else ""
        if file.image:
            return self.tables.get(build_id, lambda: io.BytesIO(file.image))
        if not file.open_path:
            return None
        return self.tables.get(build_id, lambda: open(file.open_path, "rb"))

    def _file(self, entry: MapEntry) -> _File:
        file = self._files.get(entry.path)
        if file is not None:
            return file
        same = [m for m in self._all if m.path == entry.path]
        base = load_base(same)
        image = b""
        open_path = ""
        if entry.path == VDSO:
            image = self._vdso_image(entry)
            symbols = self._vdso_symbols(image)
        else:
            _how, where = open_mapped_file(self.pid, same)
            open_path = str(where)
            symbols = self._file_symbols(open_path, entry.path)
        text = [m for m in same if m.executable] or same
        mapping = Mapping(start=min(m.start for m in text), limit=max(m.end for m in text),
                          offset=min(m.offset for m in text), filename=entry.path,
                          build_id=symbols.build_id if symbols else "")
        file = _File(entry.path, base, mapping, symbols, open_path, image)
        self._files[entry.path] = file
        return file

    def _file_symbols(self, open_path: str, library_path: str) -> Optional[ElfSymbols]:
        try:
            symbols = load_symbols_cached(open_path)
        except (OSError, MemoryReadError):
            return None
        key = symbols.build_id or library_path
        return _WITH_DEBUG.get_or_compute(key, lambda: with_debug_symbols(symbols, library_path, self.roots))

    def _vdso_image(self, entry: MapEntry) -> bytes:
        """The vDSO is no file: its ELF image is read from the target (it is one or two pages)."""
        if entry.end - entry.start > MAX_VDSO_BYTES:
            return b""
        try:
            with ProcessMemory(self.pid) as memory:
                return memory.read(entry.start, entry.end - entry.start)
        except (MemoryReadError, NoSuchProcess, PermissionDenied):
            return b""

    @staticmethod
    def _vdso_symbols(image: bytes) -> Optional[ElfSymbols]:
        if not image:
            return None
        try:
            return ElfSymbols.from_bytes(VDSO, image)
        except MemoryReadError:
            return None


def _perf_alias(candidates: list[Symbol]) -> Symbol:
    """Of several functions at one address (identical code folded, aliases), the one perf names: its
    choose_best_symbol compares the names as it prints them (demangled, without parameters)."""
    def rank(s: Symbol) -> tuple:
        short = without_parameters(demangle(s.name))
        underscores = len(short) - len(short.lstrip("_"))
        return (s.size > 0, s.binding != STB_WEAK, s.binding == STB_GLOBAL, -underscores, len(short))
    return max(candidates, key=rank)
