"""Compiling bpf/*.c with bcc (or loading what an earlier compile left in the cache), and releasing what
was attached.

bcc compiles BPF C at run time against kernel headers (pyprof.kernel.kheaders finds them); every
failure becomes one line the user can act on: MissingKernelFeature (no bcc, no headers, a compile or
load error) or PermissionDenied (not root / no CAP_BPF).

The compile costs 0.9 s of CPU and, with `import bcc` (which maps LLVM and clang), 140 MiB of RSS; so its
result is cached on disk (pyprof.kernel.bpf_cache) and a later start loads it through the bpf() syscall
(pyprof.kernel.bpf_direct) without importing bcc. Callers get either a bcc BPF object or a DirectBpf:
both offer the same methods pyprof uses.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from pyprof.errors import MissingKernelFeature
from pyprof.kernel import bpf_cache, bpf_syscalls, kheaders
from pyprof.kernel.bpf_compiler import compile_in_child
from pyprof.kernel.bpf_direct import DirectBpf
from pyprof.procfs import capabilities

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
COMPILE_APART_ENV = "PYPROF_BPF_COMPILE"   # "off": compile in this process (bcc stays mapped)


def _bcc():
    os.environ.update(kheaders.bcc_environment())
    try:
        import bcc
    except ImportError as e:
        raise MissingKernelFeature("bcc is not importable: apt-get install python3-bpfcc "
                                   "(and use a venv with --system-site-packages)") from e
    return bcc


def _compile(**kwargs):
    headers = kheaders.status()
    if not headers.ok:   # checked here, not before sampling: a cached start needs no headers
        raise MissingKernelFeature(f"kernel headers (bcc): {headers.detail}; fix: {headers.fix}")
    bcc = _bcc()
    try:
        return bcc.BPF(**kwargs)
    except Exception as e:  # bcc raises plain Exception for compile and load errors
        text = str(e)
        # bcc prints the kernel's EPERM and raises a bare "Failed to compile": our capabilities decide
        if "Operation not permitted" in text or "Permission denied" in text or \
                capabilities.missing("CAP_BPF", "CAP_PERFMON"):
            raise capabilities.denied("loading BPF", "CAP_BPF", "CAP_PERFMON") from e
        hint = "" if kheaders.status().ok else " (kernel headers missing: run `make setup`)"
        raise MissingKernelFeature(f"BPF: cannot compile/load: {text.splitlines()[0] if text else e}"
                                   f"{hint}") from e


def load_bpf(filename: str, cflags: Sequence[str] = ()) -> Any:
    """Compile and load bpf/<filename>, its `#include "x.h"` of bpf/ files inlined: bcc turns only the
    functions of the main file into programs (and rewrites map calls only there), so an event's program
    in bpf/wall.h must become part of the main file's text. From the cache when an earlier compile of
    the same text and flags (same kernel, headers and bcc) left it there."""
    return load_bpf_text(inline_local_includes(BPF_DIR / filename), cflags)


def load_bpf_text(text: str, cflags: Sequence[str] = ()) -> Any:
    flags = list(cflags)
    key = bpf_cache.cache_key(text, flags, bpf_cache.header_tree_identity(kheaders.bcc_environment()),
                              bpf_cache.bcc_version())
    cached = _load_cached(key)
    if cached is not None:
        return cached
    apart = _load_compiled_apart(text, flags, key)
    if apart is not None:
        return apart
    bpf = _compile(text=text, cflags=flags)
    entry = _entry_of(bpf, text, key)
    if entry is None:
        return bpf
    # bcc only compiles: what runs is the entry, loaded as a cached start loads it (one way to attach
    # for both; bcc's own attach_uprobe passes the kernel a stray ref_ctr_offset, and uprobes of two
    # processes at one address must agree on it)
    try:
        direct = DirectBpf.load(entry)
    except OSError as e:
        if e.errno in (1, 13):   # EPERM, EACCES
            close_bpf(bpf)
            raise capabilities.denied("loading BPF", "CAP_BPF", "CAP_PERFMON") from e
        bpf_cache.STATS.rejected += 1
        print(f"pyprof: BPF loaded through bcc ({getattr(e, 'log', '') or e})", file=sys.stderr)
        return bpf
    close_bpf(bpf)
    bpf_cache.store(entry)
    return direct


def _load_compiled_apart(text: str, flags: list[str], key: str) -> DirectBpf | None:
    """Compiled in a child process (pyprof.kernel.bpf_compiler: bcc's LLVM never enters this one),
    loaded as a cache entry and stored; None when that did not work out: the caller compiles here, which
    also gives the failure its one line."""
    if os.environ.get(COMPILE_APART_ENV) == "off" or not kheaders.status().ok:
        return None
    apart = compile_in_child(text, flags, key, kheaders.bcc_environment())
    if apart.entry is None:
        if apart.reason != "uncacheable":
            bpf_cache.STATS.apart_failed += 1
        return None
    try:
        direct = DirectBpf.load(apart.entry)
    except OSError as e:
        if e.errno in (1, 13):   # EPERM, EACCES
            raise capabilities.denied("loading BPF", "CAP_BPF", "CAP_PERFMON") from e
        return None              # the in-process compile says it (and falls back to bcc's own load)
    sys.stderr.write(apart.stderr)   # what clang printed, as an in-process compile would
    bpf_cache.STATS.compiled_apart += 1
    bpf_cache.store(apart.entry)
    return direct


def _load_cached(key: str) -> DirectBpf | None:
    """The cache entry of `key` loaded, or None (no entry, an unusable one, or one the kernel refused:
    said in one line, then compiled again)."""
    entry = bpf_cache.load(key)
    if entry is None:
        if bpf_cache.STATS.last_reason:
            print(f"pyprof: {bpf_cache.STATS.last_reason}", file=sys.stderr)
            bpf_cache.STATS.last_reason = ""
        bpf_cache.STATS.misses += 1
        return None
    try:
        bpf = DirectBpf.load(entry)
    except bpf_syscalls.VerifierRejected as e:
        bpf_cache.STATS.rejected += 1
        print(f"pyprof: the kernel refused the cached BPF program ({e.strerror}: {e.log}); "
              "compiling it again", file=sys.stderr)
        return None
    except OSError as e:
        if e.errno in (1, 13):   # EPERM, EACCES: the compile path says what is missing
            raise capabilities.denied("loading BPF", "CAP_BPF", "CAP_PERFMON") from e
        bpf_cache.STATS.rejected += 1
        print(f"pyprof: cannot load the cached BPF module ({e}); compiling it again", file=sys.stderr)
        return None
    bpf_cache.STATS.hits += 1
    return bpf


# The program type of a function, from its context argument's type (how bcc's callers load them:
# uprobes as kprobes, the cpu-clock program as a perf-event program, wall's as raw tracepoints).
_FUNCTION = re.compile(r"^int\s+(\w+)\s*\(\s*struct\s+(\w+)\s*\*", re.MULTILINE)
_PROG_TYPES = {"pt_regs": bpf_syscalls.PROG_KPROBE,
               "bpf_raw_tracepoint_args": bpf_syscalls.PROG_RAW_TRACEPOINT,
               "perf_sample_ctx": bpf_syscalls.PROG_PERF_EVENT,
               "bpf_perf_event_data": bpf_syscalls.PROG_PERF_EVENT}
_BPF_CALL, _PSEUDO_CALL = 0x85, 1


def _entry_of(bpf: Any, text: str, key: str) -> bpf_cache.CacheEntry | None:
    """What a cached load needs of a freshly compiled bcc module; None (counted) when it cannot be
    replayed: a function of unknown program type, a call to another BPF function, a map reference
    that is not one of the module's maps."""
    from bcc import lib

    _type_libbcc(lib)
    types = {name: _PROG_TYPES.get(ctx) for name, ctx in _FUNCTION.findall(text)}
    entry = bpf_cache.CacheEntry(key, lib.bpf_module_license(bpf.module) or b"GPL",
                                 lib.bpf_module_kern_version(bpf.module))
    map_index: dict[int, int] = {}
    try:
        for i in range(min(lib.bpf_num_tables(bpf.module), bpf_cache.MAX_MAPS)):
            name = lib.bpf_table_name(bpf.module, i)
            fd = lib.bpf_table_fd_id(bpf.module, i)
            table = bpf[name]
            info = bpf_syscalls.map_info(fd)
            map_index[fd] = len(entry.maps)
            entry.maps.append(bpf_cache.MapDef(name.decode(), info.type, info.key_size, info.value_size,
                                               info.max_entries, info.map_flags,
                                               bpf_cache.describe_type(table.Key),
                                               # a per-CPU table's Leaf is bcc's array of its sLeaf
                                               bpf_cache.describe_type(getattr(table, "sLeaf", table.Leaf))))
        for i in range(lib.bpf_num_functions(bpf.module)):
            name = lib.bpf_function_name(bpf.module, i)
            prog_type = types.get(name.decode())
            if prog_type is None:
                raise ValueError(f"program type of {name.decode()}")
            size = lib.bpf_function_size(bpf.module, name)
            insns = ctypes.string_at(lib.bpf_function_start(bpf.module, name), size)
            entry.functions.append(bpf_cache.FunctionCode(name.decode(), prog_type, insns,
                                                          _map_refs(insns, map_index)))
    except Exception:  # ValueError, OSError, KeyError; bcc raises plain Exception
        bpf_cache.STATS.uncacheable += 1   # runs through bcc's own object, as before the cache (no line:
        return None                        # a property of the program, not of this host)
    return entry


def _map_refs(insns: bytes, map_index: dict[int, int]) -> tuple[tuple[int, int], ...]:
    refs = []
    for i in range(len(insns) // 8):
        opcode, regs = insns[8 * i], insns[8 * i + 1]
        if opcode == _BPF_CALL and regs >> 4 == _PSEUDO_CALL:
            raise ValueError("a BPF-to-BPF call")
        if opcode == bpf_cache.LD_IMM64 and regs >> 4:
            imm = int.from_bytes(insns[8 * i + 4:8 * i + 8], "little", signed=True)
            if regs >> 4 != bpf_cache.PSEUDO_MAP_FD or imm not in map_index:
                raise ValueError(f"instruction {i} refers to an unknown map or value")
            refs.append((i, map_index[imm]))
    return tuple(refs)


def _type_libbcc(lib: Any) -> None:
    """Signatures of the libbcc functions bcc's Python binding does not declare."""
    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.bpf_table_fd_id.restype = ctypes.c_int
    lib.bpf_table_fd_id.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_]+\.h)"[ \t]*$', re.MULTILINE)


def inline_local_includes(path: Path) -> str:
    """The text of `path` with each `#include "name.h"` of a file next to it replaced by that file's text
    (one level: the headers include nothing of their own)."""
    def replace(match: re.Match) -> str:
        header = path.parent / match.group(1)
        return header.read_text() if header.is_file() else match.group(0)

    return _LOCAL_INCLUDE.sub(replace, path.read_text())


def detach_uprobes(bpf, ev_names) -> None:
    """Release some of a bcc BPF object's uprobes (by bcc's event names), the way close_bpf does."""
    if isinstance(bpf, DirectBpf):
        bpf.detach_uprobes(list(ev_names))
        return
    from bcc import lib

    for ev_name in ev_names:
        fd = bpf.uprobe_fds.get(ev_name)
        if fd is not None:
            lib.bpf_close_perf_event_fd(fd)
            bpf._del_uprobe_fd(ev_name)


def close_bpf(bpf) -> None:
    """Detach and free everything of a bcc BPF object.

    bcc 0.26 attaches uprobes through the perf `uprobe` PMU but, on detach, also writes to
    tracing/uprobe_events, which fails (and prints) where tracefs is not mounted. The perf fd is all
    there is to release, so release it ourselves and let bcc clean up the rest.
    """
    if isinstance(bpf, DirectBpf):
        bpf.cleanup()
        return
    from bcc import lib

    for ev_name, fd in list(bpf.uprobe_fds.items()):
        lib.bpf_close_perf_event_fd(fd)
        del bpf.uprobe_fds[ev_name]
    bpf.cleanup()
