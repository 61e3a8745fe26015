"""A running HotSpot JVM, seen from outside: its libjvm, VMStructs, layout, version and flags.

Opening one never stops or signals the target: it reads /proc/PID/{maps,mem,map_files} only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pyprof.errors import MemoryReadError, NoSuchProcess, NotAJvm, PermissionDenied, UnsupportedJvm
from pyprof.hotspot.layout import Layout
from pyprof.hotspot.vmstructs import VMStructs, read_vmstructs
from pyprof.procfs.elf import ElfSymbols, load_symbols_cached
from pyprof.procfs.maps import MapEntry, library_entries, load_base, open_mapped_file, read_maps
from pyprof.procfs.memory import ProcessMemory, Reader
from pyprof.procfs.process import comm, is_running, require_running

TESTED_RANGE = (17, 25)
MAX_FLAGS = 10_000

GC_FLAGS = ("UseG1GC", "UseParallelGC", "UseSerialGC", "UseShenandoahGC", "UseZGC", "UseEpsilonGC")

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
    release: str = ""
    major: int = 0
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
        jvm = cls(pid, reader, memory, entries[0].path, str(open_path), base, entries, symbols, vm,
                  Layout(vm))
        jvm.release = jvm._read_release()
        jvm.major = _major_of(jvm.release, jvm._read_static_int("Abstract_VM_Version._vm_major_version"))
        jvm.layout.major = jvm.major
        jvm.flags = jvm._read_bool_flags(GC_FLAGS + (
            "SegmentedCodeCache", "UseCompressedOops", "UseCompressedClassPointers",
            "UseCompactObjectHeaders"))
        if jvm.major and jvm.major < TESTED_RANGE[0]:
            raise UnsupportedJvm(f"process {pid} runs JDK {jvm.major}: pyprof supports JDK 17 and later")
        return jvm

    def close(self) -> None:
        self.memory.close()

    def __enter__(self) -> HotSpotJvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- identity --------------------------------------------------------------------------------
    def _read_static_int(self, key: str) -> int:
        if not self.layout.has(key):
            return 0
        f = self.layout[key]
        try:
            return self.reader.uint(f.address, f.size, signed=True)
        except MemoryReadError:
            return 0

    def _read_release(self) -> str:
        if not self.layout.has("Abstract_VM_Version._s_vm_release"):
            return ""
        try:
            ptr = self.reader.ptr(self.layout["Abstract_VM_Version._s_vm_release"].address)
            return self.reader.cstring(ptr, 128)
        except MemoryReadError:
            return ""

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
        return f"JDK {self.major} ({self.release or 'unknown release'}), {self.gc_name} GC"

    def libjvm_address(self, vaddr: int) -> int:
        return self.libjvm_base + vaddr

    def in_libjvm(self, address: int) -> bool:
        return any(e.contains(address) for e in self.libjvm_entries)


def _major_of(release: str, published: int) -> int:
    if published:
        return published
    m = re.match(r"(\d+)", release)
    return int(m.group(1)) if m else 0
