"""Profile file formats (the one table of them), choosing one from a file name, writing atomically.

This package renders the exchange formats, pprof and collapsed stacks; the flame graph and speedscope
files are views rendered by pyprof.reporters (`reporters.render_file` writes any of the four).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Optional

from pyprof.errors import UsageError
from pyprof.model import ProfileData


@dataclass(frozen=True)
class FileFormat:
    name: str
    suffixes: tuple[str, ...]    # the first one is what a default file name gets


FILE_FORMATS = (
    FileFormat("pprof", (".pb.gz", ".pprof", ".pb")),
    FileFormat("collapsed", (".txt", ".folded", ".collapsed")),
    FileFormat("flamegraph", (".html",)),
    FileFormat("speedscope", (".speedscope.json",)),
)
FILE_FORMAT_NAMES = tuple(f.name for f in FILE_FORMATS)
TEMP_ATTEMPTS = 16


def format_for_path(path: str) -> Optional[str]:
    """The format a file name asks for, or None when its extension says nothing we know."""
    name = os.path.basename(path).lower()
    for fmt in FILE_FORMATS:
        if name.endswith(fmt.suffixes):
            return fmt.name
    if name.endswith(".json") and "speedscope" in name:
        return "speedscope"
    return None


def default_suffix(fmt: str) -> str:
    return next(f.suffixes[0] for f in FILE_FORMATS if f.name == fmt)


def render(profile: ProfileData, fmt: str, tiers: bool = True) -> bytes:
    """The file content of `profile` in format `fmt` ("pprof" or "collapsed")."""
    if fmt == "pprof":
        from pyprof.output import pprof

        return pprof.encode(profile, tiers=tiers)
    if fmt == "collapsed":
        from pyprof.output import collapsed

        return collapsed.render(profile, tiers=tiers).encode("utf-8", errors="replace")
    raise UsageError(f"unknown output format {fmt!r} (written here: pprof, collapsed)")


def write_profile(profile: ProfileData, path: str, fmt: str, *, tiers: bool = True) -> None:
    """Write `profile` to `path` atomically: readers see the old file or the complete new one, never a
    partial one, and a failed write leaves nothing behind."""
    write_atomically(path, render(profile, fmt, tiers))


def write_atomically(path: str, data: bytes, mode: int = 0o644) -> None:
    """Temp file next to `path` (same filesystem, so the rename is atomic), fsync, rename over `path`,
    fsync the directory. `mode`: 0644 (before the umask) for a profile meant for other users' tools,
    0600 for the daemon's private store.

    Raises UsageError (one line) when the file cannot be written; the temp file never survives an error.
    """
    fd, temp = _create_temp(path, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException as e:
        _remove_quietly(temp)
        if isinstance(e, OSError):
            raise UsageError(f"cannot write {path}: {e.strerror or e}") from e
        raise
    _sync_directory(os.path.dirname(os.path.abspath(path)))


def _create_temp(path: str, mode: int) -> tuple[int, str]:
    directory = os.path.dirname(os.path.abspath(path))
    # A dot name so that globs like *.pb.gz never pick up a half-written file.
    prefix = os.path.join(directory, f".{os.path.basename(path)}.")
    for _ in range(TEMP_ATTEMPTS):
        temp = f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            # O_EXCL + O_NOFOLLOW: never follow or reuse something already there.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(temp, flags, mode), temp
        except FileExistsError:
            continue
        except OSError as e:
            raise UsageError(f"cannot write {path}: {e.strerror or e}") from e
    raise UsageError(f"cannot write {path}: no free temporary name in {directory}")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_directory(directory: str) -> None:
    """Make the rename itself durable; best effort (some filesystems refuse fsync on directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
