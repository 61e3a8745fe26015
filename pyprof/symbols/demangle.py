"""C++ symbol demangling through libstdc++'s own __cxa_demangle (no extra dependency), cached."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Optional


def _load():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("stdc++") or "libstdc++.so.6")
        libc = ctypes.CDLL(None)
    except OSError:
        return None, None
    fn = lib.__cxa_demangle
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    libc.free.argtypes = [ctypes.c_void_p]
    return fn, libc.free


_DEMANGLE, _FREE = _load()


@lru_cache(maxsize=200_000)
def demangle(name: str) -> str:
    """`_ZN10JavaThread3runEv` -> `JavaThread::run()`; anything else is returned unchanged."""
    if _DEMANGLE is None or not name.startswith("_Z"):
        return name
    base, dot, suffix = name.partition(".")   # GCC clones: foo.part.0, foo.constprop.0
    status = ctypes.c_int(0)
    ptr = _DEMANGLE(base.encode(), None, None, ctypes.byref(status))
    if not ptr or status.value != 0:
        return name
    try:
        text: Optional[bytes] = ctypes.string_at(ptr)
    finally:
        _FREE(ptr)
    out = text.decode("utf-8", "replace") if text else name
    return f"{out} [clone .{suffix}]" if dot else out


def without_parameters(name: str) -> str:
    """A demangled name as perf prints it (demangled without DMGL_PARAMS): no parameter list, no
    `const`, no return type of a template function. `CompLevel A::f<B>(int) const` -> `A::f<B>`."""
    if name.endswith(" const"):
        name = name[:-6]
    if name.endswith(")"):
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {">": 1, "<": -1, ")": 1, "(": -1}.get(name[i], 0)
        if depth == 0 and name[i] == " " and not name[:i].endswith("operator"):
            return name[i + 1:]
    return name
