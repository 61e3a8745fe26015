"""Compiling bpf/*.c with bcc, and releasing what bcc attached.

bcc compiles BPF C at run time against kernel headers (pyprof.kernel.kheaders finds them); every
failure becomes one line the user can act on: MissingKernelFeature (no bcc, no headers, a compile or
load error) or PermissionDenied (not root / no CAP_BPF).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from pyprof.errors import MissingKernelFeature
from pyprof.kernel import kheaders
from pyprof.procfs import capabilities

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"


def _bcc():
    os.environ.update(kheaders.bcc_environment())
    try:
        import bcc
    except ImportError as e:
        raise MissingKernelFeature("bcc is not importable: apt-get install python3-bpfcc "
                                   "(and use a venv with --system-site-packages)") from e
    return bcc


def _compile(**kwargs):
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


def load_bpf(filename: str, cflags: Sequence[str] = ()):
    """Compile and load bpf/<filename>, its `#include "x.h"` of bpf/ files inlined: bcc turns only the
    functions of the main file into programs (and rewrites map calls only there), so an event's program
    in bpf/wall.h must become part of the main file's text."""
    return _compile(text=inline_local_includes(BPF_DIR / filename), cflags=list(cflags))


_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_]+\.h)"[ \t]*$', re.MULTILINE)


def inline_local_includes(path: Path) -> str:
    """The text of `path` with each `#include "name.h"` of a file next to it replaced by that file's text
    (one level: the headers include nothing of their own)."""
    def replace(match: re.Match) -> str:
        header = path.parent / match.group(1)
        return header.read_text() if header.is_file() else match.group(0)

    return _LOCAL_INCLUDE.sub(replace, path.read_text())


def load_bpf_text(text: str, cflags: Sequence[str] = ()):
    return _compile(text=text, cflags=list(cflags))


def detach_uprobes(bpf, ev_names) -> None:
    """Release some of a bcc BPF object's uprobes (by bcc's event names), the way close_bpf does."""
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
    from bcc import lib

    for ev_name, fd in list(bpf.uprobe_fds.items()):
        lib.bpf_close_perf_event_fd(fd)
        del bpf.uprobe_fds[ev_name]
    bpf.cleanup()
