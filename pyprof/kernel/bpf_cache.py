"""Compiled BPF programs cached on disk, so that a start needs neither bcc's clang/LLVM compile (0.9 s of
CPU, 75 MiB of RSS for bpf/sampler.c and bpf/nmethod_events.c) nor even `import bcc` (65 MiB: libbcc maps
and relocates LLVM and clang).

An entry is what bcc produced: each function's instructions, each map's definition (type, key/value
size, max entries, flags, name, and its key/value C types as ctypes descriptions) and which ld_imm64
instruction referred to which map (bcc bakes the map fds it created into the code). Loading an entry
(pyprof.kernel.bpf_direct) creates the maps, patches their fds in and loads the programs.

The key is a hash of everything that changes the bytecode: the program text after pyprof's own
inlining, the -D flags, the kernel release and the header tree bcc compiles against, bcc's version and
this file's FORMAT_VERSION. The directory is private (0700, owned by us, not a symlink: anything else is
not used); files are written under a temporary name and renamed; a file that does not parse or does not
match its key is ignored and counted (CacheStats), never trusted.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

FORMAT_VERSION = 1
MAX_ENTRY_BYTES = 16 << 20
MAX_INSNS = 1_000_000          # the kernel's own limit per program
MAX_MAPS, MAX_FUNCTIONS = 64, 64
MAX_TYPE_DEPTH, MAX_FIELDS = 8, 256
LD_IMM64, PSEUDO_MAP_FD = 0x18, 1
CACHE_ENV = "PYPROF_BPF_CACHE"   # a directory, or "off"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    corrupt: int = 0        # entries that did not parse or did not match their key: ignored
    rejected: int = 0       # entries the kernel refused to load (verifier): compiled instead
    uncacheable: int = 0    # compiled modules pyprof cannot replay (unknown program type, pseudo calls)
    compiled_apart: int = 0  # misses compiled in a child process (bcc never mapped here)
    apart_failed: int = 0    # ... whose child failed: compiled in this process instead
    last_reason: str = ""

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "stored": self.stored, "corrupt": self.corrupt,
                "rejected": self.rejected, "uncacheable": self.uncacheable,
                "compiled_apart": self.compiled_apart, "apart_failed": self.apart_failed}


STATS = CacheStats()


@dataclass(frozen=True)
class MapDef:
    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    key_type: Any     # a ctypes type description (describe_type)
    leaf_type: Any


@dataclass(frozen=True)
class FunctionCode:
    name: str
    prog_type: int
    insns: bytes
    map_refs: tuple[tuple[int, int], ...]   # (instruction index, map index): the ld_imm64 to patch


@dataclass
class CacheEntry:
    key: str
    license: bytes
    kern_version: int
    maps: list[MapDef] = field(default_factory=list)
    functions: list[FunctionCode] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": FORMAT_VERSION, "key": self.key, "license": self.license.decode("latin-1"),
            "kern_version": self.kern_version,
            "maps": [[m.name, m.map_type, m.key_size, m.value_size, m.max_entries, m.flags, m.key_type,
                      m.leaf_type] for m in self.maps],
            "functions": [[f.name, f.prog_type, base64.b64encode(f.insns).decode(),
                           list(map(list, f.map_refs))] for f in self.functions],
        }, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> CacheEntry:
        """Parse and check an entry (ValueError when anything is off: it is then not used)."""
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION or doc.get("key") != key:
            raise ValueError("another format or key")
        entry = cls(key, _text(doc["license"], 128).encode("latin-1"), _int(doc["kern_version"]))
        maps, functions = _list(doc["maps"], MAX_MAPS), _list(doc["functions"], MAX_FUNCTIONS)
        for item in maps:
            name, map_type, key_size, value_size, max_entries, flags, key_type, leaf_type = _list(item, 8)
            entry.maps.append(MapDef(_text(name, 64), _int(map_type), _int(key_size), _int(value_size),
                                     _int(max_entries), _int(flags), key_type, leaf_type))
            sizes = ctypes.sizeof(build_type(key_type)), ctypes.sizeof(build_type(leaf_type))
            if key_size and value_size and sizes != (key_size, value_size):   # a ring buffer has neither
                raise ValueError(f"map {name}: its C types do not have its sizes")
        for item in functions:
            name, prog_type, code, refs = _list(item, 4)
            insns = base64.b64decode(_text(code, MAX_ENTRY_BYTES), validate=True)
            if not insns or len(insns) % 8 or len(insns) // 8 > MAX_INSNS:
                raise ValueError("instructions")
            map_refs = tuple((_int(i), _int(m)) for i, m in (_list(r, 2) for r in _list(refs, MAX_INSNS)))
            for index, map_index in map_refs:
                if index >= len(insns) // 8 - 1 or map_index >= len(entry.maps) or \
                        insns[8 * index] != LD_IMM64 or insns[8 * index + 1] >> 4 != PSEUDO_MAP_FD:
                    raise ValueError("map reference")
            entry.functions.append(FunctionCode(_text(name, 64), _int(prog_type), insns, map_refs))
        return entry


def _int(value: Any) -> int:
    if type(value) is not int or not 0 <= value < 1 << 32:
        raise ValueError("integer")
    return value


def _text(value: Any, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError("text")
    return value


def _list(value: Any, limit: int) -> list:
    if not isinstance(value, list) or len(value) > limit:
        raise ValueError("list")
    return value


# ---- ctypes types as JSON ------------------------------------------------------------------------
_SIMPLE = {t._type_: t for t in (ctypes.c_int8, ctypes.c_uint8, ctypes.c_int16, ctypes.c_uint16,   # type: ignore[attr-defined]
                                 ctypes.c_int32, ctypes.c_uint32, ctypes.c_int64, ctypes.c_uint64,
                                 ctypes.c_longlong, ctypes.c_ulonglong, ctypes.c_char, ctypes.c_bool,
                                 ctypes.c_float, ctypes.c_double, ctypes.c_void_p)}


def describe_type(t: Any, depth: int = 0) -> Any:
    """A JSON description of a ctypes type as bcc built it for a map's key or value."""
    if depth > MAX_TYPE_DEPTH:
        raise ValueError("type nesting")
    if isinstance(t, type) and issubclass(t, ctypes.Array):
        return ["array", describe_type(t._type_, depth + 1), t._length_]
    if isinstance(t, type) and issubclass(t, (ctypes.Structure, ctypes.Union)):
        fields = [[f[0], describe_type(f[1], depth + 1), *f[2:]] for f in t._fields_]
        kind = "union" if issubclass(t, ctypes.Union) else "struct"
        return [kind, t.__name__, fields, getattr(t, "_pack_", 0)]
    code = getattr(t, "_type_", None)
    if code not in _SIMPLE:
        raise ValueError(f"unsupported map type {t!r}")
    return ["simple", code]


def build_type(desc: Any, depth: int = 0) -> Any:
    """The ctypes type of a description (ValueError when it is not one describe_type makes)."""
    if depth > MAX_TYPE_DEPTH or not isinstance(desc, list) or not desc:
        raise ValueError("type")
    kind = desc[0]
    if kind == "simple" and len(desc) == 2 and desc[1] in _SIMPLE:
        return _SIMPLE[desc[1]]
    if kind == "array" and len(desc) == 3:
        return build_type(desc[1], depth + 1) * _int(desc[2])
    if kind in ("struct", "union") and len(desc) == 4:
        fields = []
        for item in _list(desc[2], MAX_FIELDS):
            if not isinstance(item, list) or len(item) not in (2, 3):
                raise ValueError("field")
            fields.append((_text(item[0], 128), build_type(item[1], depth + 1), *map(_int, item[2:])))
        base = ctypes.Union if kind == "union" else ctypes.Structure
        namespace: dict[str, Any] = {}
        if _int(desc[3]):
            namespace["_pack_"] = desc[3]
        namespace["_fields_"] = fields
        return type(_text(desc[1], 128) or "anon", (base,), namespace)
    raise ValueError("type")


# ---- the key -------------------------------------------------------------------------------------
def cache_key(text: str, cflags: Sequence[str], header_tree: str, bcc_version: str) -> str:
    """A hash of everything that changes the bytecode bcc makes of `text`."""
    digest = hashlib.sha256()
    for part in (f"format {FORMAT_VERSION}", text, "\0".join(cflags), os.uname().release, header_tree,
                 bcc_version):
        digest.update(part.encode())
        digest.update(b"\0\1")
    return digest.hexdigest()


def header_tree_identity(environment: dict[str, str]) -> str:
    """The kernel header tree bcc compiles against (BCC_KERNEL_SOURCE, else /lib/modules/RELEASE/build):
    its resolved path and the change time of its version header and of the directory."""
    tree = environment.get("BCC_KERNEL_SOURCE") or f"/lib/modules/{os.uname().release}/build"
    parts = [tree]
    for path in (tree, os.path.join(tree, "include/generated/uapi/linux/version.h"),
                 os.path.join(tree, "include/generated/autoconf.h")):
        try:
            st = os.stat(path)
            parts.append(f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return "|".join(parts)


def bcc_version() -> str:
    """bcc's version without importing it (its package metadata file, else the libbcc file's identity)."""
    for path in ("/usr/lib/python3/dist-packages/bcc/version.py", "/usr/lib/x86_64-linux-gnu/libbcc.so.0"):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if path.endswith(".py"):
            try:
                with open(path) as f:
                    return f.read(4096)
            except OSError:
                continue
        return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"
    return "unknown"


# ---- the directory -------------------------------------------------------------------------------
def cache_dir() -> Optional[Path]:
    """$PYPROF_BPF_CACHE, else $XDG_CACHE_HOME/pyprof/bpf (~/.cache/pyprof/bpf); None when "off"."""
    configured = os.environ.get(CACHE_ENV, "")
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyprof" / "bpf"


def _open_dir(create: bool) -> Optional[int]:
    """An fd of the cache directory, or None: it must be ours, 0700 and not a symlink, checked on the fd
    itself (a directory swapped after a check on its path cannot slip in); entries are opened relative
    to it. Whoever else could write there could have the kernel load their BPF code as root."""
    d = cache_dir()
    if d is None:
        return None
    try:
        if create:
            d.mkdir(parents=True, mode=0o700, exist_ok=True)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        return None        # not ours, or open to others: do not trust or write it
    return fd


def entry_path(d: Path, key: str) -> Path:
    return d / entry_name(key)


def entry_name(key: str) -> str:
    return f"{key}.v{FORMAT_VERSION}.bpf"


def load(key: str) -> Optional[CacheEntry]:
    """The entry of `key`, or None (none, or unusable: counted in STATS.corrupt)."""
    dir_fd = _open_dir(create=False)
    if dir_fd is None:
        return None
    try:
        fd = os.open(entry_name(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                raise ValueError("not a private regular file of ours")
            data = f.read(MAX_ENTRY_BYTES + 1)
        if len(data) > MAX_ENTRY_BYTES:
            raise ValueError("too large")
        return CacheEntry.from_bytes(data, key)
    except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        STATS.corrupt += 1
        STATS.last_reason = f"cache entry {key[:12]} unusable ({e}): compiling"
        return None


def store(entry: CacheEntry) -> bool:
    """Write the entry under a temporary name and rename it (a reader never sees half an entry)."""
    dir_fd = _open_dir(create=True)
    if dir_fd is None:
        return False
    temporary = f".tmp-{os.getpid()}-{os.urandom(6).hex()}"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as f:
            f.write(entry.to_bytes())
        os.replace(temporary, entry_name(entry.key), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
        return False
    finally:
        os.close(dir_fd)
    STATS.stored += 1
    return True
