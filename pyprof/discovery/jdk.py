"""A JVM's release string, read from its memory without stopping or signalling it.

What `pyprof attach` does on open (all ELF symbols of libjvm, then VMStructs) takes 0.5 s and more on a
busy host; discovery only needs the release, so it reads libjvm's .dynsym alone (about 500 symbols: the
`gHotSpot*` VMStructs exports are all there), the VMStructs tables (7-30 ms), and the static field
`Abstract_VM_Version::_s_vm_release`. The libjvm file is the one the JVM mapped (an fd from
files.open_mapped: map_files, or its root without symlinks), so a JDK that exists only inside a
container works the same.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pyprof.errors import MemoryReadError, UnsupportedJvm
from pyprof.hotspot.jvm import TESTED_MAJORS
from pyprof.hotspot.vmstructs import read_vmstructs
from pyprof.procfs.elf import Symbol
from pyprof.procfs.maps import MapEntry, load_base
from pyprof.procfs.memory import ProcessMemory, Reader

MAX_DYNSYM = 100_000
RELEASE_LIMIT = 128


class DynamicSymbols:
    """The `lookup(name)` that read_vmstructs needs, over .dynsym only."""

    def __init__(self, by_name: dict[str, Symbol]) -> None:
        self._by_name = by_name

    def lookup(self, name: str) -> Optional[Symbol]:
        return self._by_name.get(name)

    @classmethod
    def from_fd(cls, fd: int) -> DynamicSymbols:
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                section = ELFFile(f).get_section_by_name(".dynsym")
                if section is None:
                    raise UnsupportedJvm("libjvm.so has no .dynsym")
                by_name: dict[str, Symbol] = {}
                for i, sym in enumerate(section.iter_symbols()):
                    if i >= MAX_DYNSYM:
                        break
                    if sym.name.startswith("gHotSpot"):
                        by_name[sym.name] = Symbol(sym.name, sym["st_value"], sym["st_size"], 1, ".dynsym")
        except (ELFError, OSError, ValueError) as e:
            raise UnsupportedJvm(f"cannot read libjvm.so's symbols: {e}") from e
        if "gHotSpotVMStructs" not in by_name:
            raise UnsupportedJvm("libjvm.so exports no VMStructs (not HotSpot?)")
        return cls(by_name)


def read_release(pid: int, libjvm_fd: int, entries: list[MapEntry]) -> str:
    """The release string (e.g. "21.0.8+9-LTS"); UnsupportedJvm when it is not a supported HotSpot,
    MemoryReadError while it cannot be read (a JVM still starting)."""
    symbols = DynamicSymbols.from_fd(libjvm_fd)
    with ProcessMemory(pid) as memory:
        reader = Reader(memory)
        vm = read_vmstructs(reader, symbols, load_base(entries))   # type: ignore[arg-type]
        field = vm.fields.get(("Abstract_VM_Version", "_s_vm_release"))
        if field is None or not field.address:
            raise UnsupportedJvm("VMStructs has no Abstract_VM_Version::_s_vm_release")
        release = reader.cstring(reader.u64(field.address), RELEASE_LIMIT)
    if not release:
        raise MemoryReadError("the JVM's release string is not set yet")
    major = major_of(release)
    if major and major < TESTED_MAJORS[0]:
        raise UnsupportedJvm(f"JDK {major} ({release}): pyprof supports JDK {TESTED_MAJORS[0]} and later")
    return release


def major_of(release: str) -> int:
    """21 of "21.0.8+9-LTS", 8 of "1.8.0_392-b08" (the pre-9 scheme)."""
    match = re.match(r"(\d+)(?:\.(\d+))?", release)
    if match is None:
        return 0
    first = int(match.group(1))
    return int(match.group(2) or 0) if first == 1 else first
