"""Separate debug symbols of a native library, found where gdb, perf and async-profiler find them.

In order (the first that has a .symtab wins):
1. the file itself, when it has a .symtab;
2. by build-id: <root>/usr/lib/debug/.build-id/xx/yyyy.debug (Debian's *-dbg and *-dbgsym packages);
3. by .gnu_debuglink: next to the file, in its .debug/ directory, and under <root>/usr/lib/debug/<dir>/;
4. MiniDebugInfo: the file's .gnu_debugdata section, an xz-compressed ELF holding a .symtab
   (Fedora, and some distributions' JDKs).
`root` is /proc/PID/root first (a JVM in a container has its debug files in its own file system), then
the host's /. A candidate is used only when its build-id equals the library's (when both have one), so
a planted or stale file, or a symlink to anything else, names nothing wrongly.
"""

from __future__ import annotations

import lzma
import os
import stat
from typing import Optional

from pyprof.errors import MemoryReadError
from pyprof.procfs.elf import ElfSymbols

DEBUG_DIR = "usr/lib/debug"
MAX_MINIDEBUG = 256 << 20        # decompressed MiniDebugInfo larger than this is refused


def with_debug_symbols(symbols: ElfSymbols, library_path: str, roots: tuple[str, ...]) -> ElfSymbols:
    """`symbols` merged with the best separate debug symbols found, or `symbols` unchanged."""
    if symbols.has_symtab:
        return symbols
    for candidate in _candidates(symbols, library_path, roots):
        debug = _load_if_matching(candidate, symbols.build_id)
        if debug is not None and debug.has_symtab:
            return symbols.merged_with(debug)
    mini = _minidebuginfo(symbols)
    if mini is not None:
        return symbols.merged_with(mini)
    return symbols


def _candidates(symbols: ElfSymbols, library_path: str, roots: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    bid = symbols.build_id
    if len(bid) > 2 and all(c in "0123456789abcdef" for c in bid):
        out += [os.path.join(root, DEBUG_DIR, ".build-id", bid[:2], bid[2:] + ".debug") for root in roots]
    link = symbols.debuglink
    if link:
        directory = os.path.dirname(library_path).lstrip("/")
        for root in roots:
            out += [os.path.join(root, directory, link), os.path.join(root, directory, ".debug", link),
                    os.path.join(root, DEBUG_DIR, directory, link)]
            if bid:
                out.append(os.path.join(root, DEBUG_DIR, ".build-id", bid[:2], link))
    return out


def _load_if_matching(path: str, build_id: str) -> Optional[ElfSymbols]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        debug = ElfSymbols.load(path)
    except MemoryReadError:
        return None
    if build_id and debug.build_id and debug.build_id != build_id:
        return None
    if not build_id or not debug.build_id:
        return None     # a debuglink match without build-ids to compare: cannot be verified
    return debug


def _minidebuginfo(symbols: ElfSymbols) -> Optional[ElfSymbols]:
    if not symbols.debugdata:
        return None
    try:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        image = decompressor.decompress(symbols.debugdata, max_length=MAX_MINIDEBUG)
        return ElfSymbols.from_bytes(symbols.path + " [.gnu_debugdata]", image)
    except (lzma.LZMAError, MemoryReadError, EOFError):
        return None


def debug_roots(pid: int) -> tuple[str, ...]:
    """Where to look for debug files: the target's root (containers), then the host's."""
    own = f"/proc/{pid}/root"
    try:
        same = os.stat(own).st_ino == os.stat("/").st_ino and os.stat(own).st_dev == os.stat("/").st_dev
    except OSError:
        return ("/",)
    return ("/",) if same else (own, "/")
