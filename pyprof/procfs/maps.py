"""/proc/PID/maps: the target's mappings, and how to open a mapped file safely.

Mapped files are opened through /proc/PID/map_files/<lo>-<hi>: that reaches the file the process really
mapped even inside a container's mount namespace, or after a package upgrade replaced it on disk
("(deleted)"). /proc/PID/root/<path> is the fallback when map_files is not readable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from pyprof.errors import NoSuchProcess
from pyprof.procfs.capabilities import denied

MAX_MAPS_BYTES = 64 * 1024 * 1024  # a JVM has a few thousand lines; this only guards against abuse


@dataclass(frozen=True)
class MapEntry:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str          # "" for anonymous mappings; "(deleted)" suffix stripped
    deleted: bool = False

    @property
    def executable(self) -> bool:
        return "x" in self.perms

    @property
    def basename(self) -> str:
        return os.path.basename(self.path)

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end


def parse_maps_line(line: str) -> Optional[MapEntry]:
    parts = line.split(None, 5)
    if len(parts) < 5:
        return None
    try:
        lo, hi = (int(x, 16) for x in parts[0].split("-", 1))
        offset = int(parts[2], 16)
        inode = int(parts[4])
    except ValueError:
        return None
    path = parts[5].strip() if len(parts) > 5 else ""
    deleted = path.endswith(" (deleted)")
    if deleted:
        path = path[: -len(" (deleted)")]
    return MapEntry(lo, hi, parts[1], offset, inode, path, deleted)


def read_maps(pid: int) -> list[MapEntry]:
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            data = f.read(MAX_MAPS_BYTES)
    except (FileNotFoundError, ProcessLookupError) as e:   # ESRCH: its memory is being torn down
        raise NoSuchProcess(f"no such process: {pid}") from e
    except PermissionError as e:
        raise denied(f"cannot read /proc/{pid}/maps", "CAP_SYS_PTRACE") from e
    entries = (parse_maps_line(line) for line in data.decode("utf-8", "replace").splitlines())
    return [e for e in entries if e is not None]


def library_entries(maps: Iterable[MapEntry], basename: str) -> list[MapEntry]:
    return [m for m in maps if m.basename == basename]


def load_base(entries: list[MapEntry]) -> int:
    """Where a shared object's vaddr 0 is in the process: min(start - file offset) over its mappings."""
    return min(m.start - m.offset for m in entries)


def open_mapped_file(pid: int, entries: list[MapEntry]) -> tuple[str, os.PathLike[str] | str]:
    """A path that reads exactly the file the process mapped. Returns (how, path)."""
    for m in sorted(entries, key=lambda m: m.offset):
        candidate = f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
        if os.access(candidate, os.R_OK):
            return "map_files", candidate
    path = entries[0].path
    root_path = Path(f"/proc/{pid}/root") / path.lstrip("/")
    try:
        reachable = root_path.exists()
    except PermissionError as e:   # /proc/PID/root of another user's process
        raise denied(f"cannot open /proc/{pid}/root", "CAP_SYS_PTRACE") from e
    if reachable:
        return "root", str(root_path)
    return "path", path
