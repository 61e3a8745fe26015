"""A running HotSpot JVM, seen from outside: its libjvm, VMStructs, layout, version and flags.

Opening one never stops or signals the target: it reads /proc/PID/{maps,mem,map_files} only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyprof.errors import MemoryReadError, NoSuchProcess, NotAJvm, PermissionDenied, UnsupportedJvm
from pyprof.hotspot.layout import JvmVersion, Layout, read_version
from pyprof.hotspot.versions import GC_FLAGS
from pyprof.hotspot.vmstructs import VMStructs, read_vmstructs
from pyprof.procfs.elf import ElfSymbols, load_symbols_cached
from pyprof.procfs.maps import MapEntry, library_entries, load_base, open_mapped_file, read_maps
from pyprof.procfs.memory import ProcessMemory, Reader
from pyprof.procfs.process import comm, is_running, require_running

TESTED_MAJORS = (11, 17, 21, 25)   # others are opened too: what their VMStructs describe is used
MAX_FLAGS = 10_000

@dataclass
class HotSpotJvm:
    pid: int
    reader: Reader
    memory: ProcessMemory
    libjvm_path: str          # path on disk (as in maps)
    libjvm_open_path: str     # path we opened (map_files / root)
    libjvm_base: int
    libjvm_entries: list[MapEntry]
    symbols: ElfSymbols
    vm: VMStructs
    layout: Layout
    flags: dict[str, bool] = field(default_factory=dict)

    # ---- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, pid: int) -> HotSpotJvm:
        require_running(pid)
        maps = read_maps(pid)
        entries = library_entries(maps, "libjvm.so")
        if not entries:
            raise NotAJvm(f"process {pid} ({comm(pid) or '?'}) is not a HotSpot JVM: no libjvm.so mapped")
        _how, open_path = open_mapped_file(pid, entries)
        try:
            symbols = load_symbols_cached(str(open_path))
        except (OSError, MemoryReadError) as e:
            if isinstance(e, PermissionError) or "Permission denied" in str(e):
                raise PermissionDenied(f"cannot read libjvm of process {pid}: run as root") from e
            raise NotAJvm(f"cannot read libjvm.so of process {pid}: {e}") from e
        if symbols.lookup("gHotSpotVMStructs") is None:
            raise UnsupportedJvm(f"process {pid}: libjvm.so exports no VMStructs (not HotSpot?)")
        memory = ProcessMemory(pid)
        reader = Reader(memory)
        base = load_base(entries)
        try:
            vm = read_vmstructs(reader, symbols, base)
        except MemoryReadError as e:
            memory.close()
            if not is_running(pid):
                raise NoSuchProcess(f"process {pid} exited") from e
            raise UnsupportedJvm(f"process {pid}: cannot read VMStructs ({e}); JVM still starting?") from e
        try:
            layout = Layout(vm, read_version(vm, reader), symbols, base)
        except UnsupportedJvm as e:
            memory.close()
            raise UnsupportedJvm(f"process {pid}: {e}") from None
        jvm = cls(pid, reader, memory, entries[0].path, str(open_path), base, entries, symbols, vm, layout)
        jvm.flags = jvm._read_bool_flags(GC_FLAGS + (
            "SegmentedCodeCache", "UseCompressedOops", "UseCompressedClassPointers",
            "UseCompactObjectHeaders", "UseObjectMonitorTable"))
        return jvm

    def close(self) -> None:
        self.memory.close()

    def __enter__(self) -> HotSpotJvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- identity --------------------------------------------------------------------------------
    @property
    def version(self) -> JvmVersion:
        return self.layout.version

    @property
    def major(self) -> int:
        """The JDK feature release (17, 21, ...); 0 when the JVM does not say."""
        return self.layout.version.major

    @property
    def release(self) -> str:
        return self.layout.version.release

    @property
    def notes(self) -> list[str]:
        """What cannot be decoded on this JVM, one line each (printed once by the CLI)."""
        notes = list(self.layout.notes)
        if self.major not in TESTED_MAJORS:
            notes.insert(0, f"JDK {self.major or '?'} is untested (pyprof is tested on "
                            f"{', '.join(map(str, TESTED_MAJORS))}): using what its VMStructs describe")
        return notes

    def nmethod_probes(self) -> dict[str, list[str]]:
        """Live-update probe symbols of this libjvm for the GC this JVM runs (Layout.nmethod_probes)."""
        return self.layout.nmethod_probes(self.gc_name)

    def _read_bool_flags(self, names: tuple[str, ...]) -> dict[str, bool]:
        """Read boolean -XX flags from the JVMFlag table (attach-free `jcmd VM.flags`)."""
        lay = self.layout
        if not (lay.has("JVMFlag.flags") and lay.has("JVMFlag._name") and lay.has("JVMFlag._addr")):
            return {}
        out: dict[str, bool] = {}
        try:
            table = self.reader.ptr(lay["JVMFlag.flags"].address)
            count = min(self.reader.u64(lay["JVMFlag.numFlags"].address), MAX_FLAGS)
            stride = lay.type_size("JVMFlag", 24)
            raw = self.reader.bytes(table, stride * count)
        except MemoryReadError:
            return out
        wanted = set(names)
        for i in range(count):
            name_ptr = lay["JVMFlag._name"].get(raw, i * stride)
            if not name_ptr:
                continue
            try:
                name = self.reader.cstring(name_ptr, 80)
                if name in wanted:
                    out[name] = self.reader.u8(lay["JVMFlag._addr"].get(raw, i * stride)) != 0
            except MemoryReadError:
                continue
            if len(out) == len(wanted):
                break
        return out

    @property
    def gc_name(self) -> str:
        for flag in GC_FLAGS:
            if self.flags.get(flag):
                return flag[3:-2]  # UseG1GC -> G1
        return "unknown"

    @property
    def description(self) -> str:
        return f"{self.version}, {self.gc_name} GC"   # "JDK 17 (17.0.15+6-...), G1 GC"

    def libjvm_address(self, vaddr: int) -> int:
        return self.libjvm_base + vaddr

    def in_libjvm(self, address: int) -> bool:
        return any(e.contains(address) for e in self.libjvm_entries)

