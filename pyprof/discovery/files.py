"""Opening a file as a (possibly containerized) process sees it, without trusting its filesystem.

A JVM in a container has its JDK at a path that may not exist on the host, or exist there as another
file. Two ways reach the file it really uses:
- /proc/PID/map_files/START-END: the kernel's own reference to the mapped file (needs CAP_SYS_ADMIN or
  CAP_CHECKPOINT_RESTORE on most kernels);
- /proc/PID/root + the path: the container's root; every component is then opened with O_NOFOLLOW
  relative to its parent, so a symlink planted in the container (say libjvm.so -> /etc/shadow, which
  would resolve against *our* root) is refused instead of followed, and so is `..`.
A file reached through the root is checked against the inode the maps line names.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Optional

from pyprof.procfs.maps import MapEntry

MAX_COMPONENTS = 64


class UnsafePath(OSError):
    """The path holds a symlink, `..`, or leads to something other than the file mapped."""


def open_beneath(root: str, path: str) -> int:
    """An O_RDONLY fd of `path` (absolute, as seen from `root`), following no symlink on the way."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts or len(parts) > MAX_COMPONENTS:
        raise UnsafePath(f"refusing path {path!r}")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except NotADirectoryError:
                raise UnsafePath(f"{path!r}: {part!r} is a symlink or not a directory") from None
            os.close(fd)
            fd = child
        try:
            leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
        except OSError as e:
            if e.errno == 40:   # ELOOP: the last component is a symlink
                raise UnsafePath(f"{path!r} is a symlink") from None
            raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        raise UnsafePath(f"{path!r} is not a regular file")
    return leaf


@dataclass(frozen=True)
class MappedFile:
    fd: int
    via: str       # "map_files" or "root"


def open_mapped(pid: int, entries: list[MapEntry], use_map_files: bool = True) -> MappedFile:
    """The file behind `entries` (the maps lines of one library) of process `pid`, opened read-only."""
    errors: list[str] = []
    if use_map_files:
        for entry in sorted(entries, key=lambda e: e.offset):
            try:
                return MappedFile(os.open(f"/proc/{pid}/map_files/{entry.start:x}-{entry.end:x}",
                                          os.O_RDONLY | os.O_CLOEXEC), "map_files")
            except OSError as e:
                errors.append(f"map_files: {e.strerror}")
                break
    entry = entries[0]
    try:
        fd = open_beneath(f"/proc/{pid}/root", entry.path)
    except OSError as e:
        errors.append(f"root: {e.strerror or e}")
        raise UnsafePath(f"cannot open {entry.path} of process {pid}: {'; '.join(errors)}") from e
    if entry.inode and os.fstat(fd).st_ino != entry.inode:
        os.close(fd)
        raise UnsafePath(f"{entry.path} of process {pid} is not the file it mapped (inode differs)")
    return MappedFile(fd, "root")


def read_beneath(root: str, path: str, limit: int) -> Optional[bytes]:
    """Up to `limit` bytes of `path` under `root`, or None when it cannot be opened safely."""
    try:
        fd = open_beneath(root, path)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
