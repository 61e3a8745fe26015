"""The jcmd fallback: `jcmd PID Compiler.codelist` for nmethods, `Compiler.perfmap` for the other blobs.

Not attach-free: the first jcmd starts the JVM's Attach Listener thread. Used when libjvm is stripped or
its memory cannot be read. The perf map is written by the JVM into *its* /tmp; we read it through
/proc/PID/root with O_NOFOLLOW and only if it is a regular file owned by the JVM's user, so a symlink
planted in /tmp cannot make us read (or trust) anything else.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from pyprof.errors import SourceUnavailable
from pyprof.hotspot.codecache import BlobKind, CodeBlobInfo, CodeCacheSnapshot, WalkStats
from pyprof.hotspot.layout import nmethod_state_names
from pyprof.hotspot.method import MethodInfo
from pyprof.jvmtools.jcmd import find_jcmd, run_jcmd
from pyprof.jvmtools.release import jdk_major
from pyprof.procfs.process import namespace_pid, require_running

MAX_PERFMAP_BYTES = 256 * 1024 * 1024

CODELIST_LINE = re.compile(
    r"^(?P<id>\d+) (?P<level>-?\d+) (?P<state>-?\d+) (?P<method>\S+) "
    r"\[0x(?P<blob>[0-9a-f]+), 0x(?P<begin>[0-9a-f]+) - 0x(?P<end>[0-9a-f]+)\]"
)
PERFMAP_LINE = re.compile(r"^0x(?P<begin>[0-9a-fA-F]+) 0x(?P<size>[0-9a-fA-F]+) (?P<name>.+)$")

PERFMAP_KINDS = (
    ("Interpreter", BlobKind.INTERPRETER),
    ("I2C/C2I adapters", BlobKind.ADAPTER),
    ("StubRoutines", BlobKind.STUBS),
    ("MethodHandles adapters", BlobKind.METHOD_HANDLES),
    ("vtable chunks", BlobKind.VTABLE),
    ("DeoptimizationBlob", BlobKind.DEOPTIMIZATION),
    ("SafepointBlob", BlobKind.SAFEPOINT),
    ("ExceptionBlob", BlobKind.EXCEPTION),
    ("UncommonTrapBlob", BlobKind.UNCOMMON_TRAP),
)


def parse_method(text: str) -> MethodInfo:
    """`java.lang.String.hashCode()I` -> MethodInfo(holder, name, signature)."""
    paren = text.find("(")
    qualified, signature = (text[:paren], text[paren:]) if paren >= 0 else (text, "")
    holder, _, name = qualified.rpartition(".")
    return MethodInfo(holder, name, signature)


def parse_codelist(text: str) -> list[CodeBlobInfo]:
    out = []
    for line in text.splitlines():
        m = CODELIST_LINE.match(line.strip())
        if not m:
            continue
        blob, begin, end = (int(m.group(k), 16) for k in ("blob", "begin", "end"))
        out.append(CodeBlobInfo(
            address=blob, size=end - blob, kind=BlobKind.NMETHOD, name="nmethod", code_begin=begin,
            code_end=end, frame_size=-1, frame_complete_offset=-1, heap=-1,
            compile_id=int(m.group("id")), level=int(m.group("level")), state=int(m.group("state")),
            method=parse_method(m.group("method")),
        ))
    return out


def perfmap_kind(name: str) -> BlobKind:
    """The perf map names blobs but does not say their C++ class: stubs it cannot place are OTHER."""
    for prefix, kind in PERFMAP_KINDS:
        if name.startswith(prefix):
            return kind
    return BlobKind.OTHER


def parse_perfmap(text: str, nmethod_ranges: set[int]) -> list[CodeBlobInfo]:
    """Non-nmethod blobs of a perf map (`0xBEGIN 0xSIZE name`); nmethods come from codelist."""
    out = []
    for line in text.splitlines():
        m = PERFMAP_LINE.match(line)
        if not m:
            continue
        begin, size = int(m.group("begin"), 16), int(m.group("size"), 16)
        name = m.group("name")
        if begin in nmethod_ranges or "(" in name:
            continue
        out.append(CodeBlobInfo(
            address=begin, size=size, kind=perfmap_kind(name), name=name, code_begin=begin,
            code_end=begin + size, frame_size=-1, frame_complete_offset=-1, heap=-1,
        ))
    return out


def perfmap_path(pid: int) -> str:
    """/tmp/perf-<its own pid>.map in the JVM's mount namespace, seen from here."""
    return f"/proc/{pid}/root/tmp/perf-{namespace_pid(pid)}.map"


def read_perfmap_safely(pid: int) -> str:
    """The JVM's perf map; never through a symlink, never another user's file."""
    path = perfmap_path(pid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise SourceUnavailable(f"cannot open the JVM's perf map safely ({e.strerror})") from e
    try:
        st = os.fstat(fd)
        owner = os.stat(f"/proc/{pid}").st_uid
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner:
            raise SourceUnavailable("the perf map is not a regular file owned by the JVM's user: ignored")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_PERFMAP_BYTES).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _remove_our_perfmap(pid: int) -> None:
    """Remove the perf map our Compiler.perfmap wrote (a user's own perf map is left alone: callers only
    call this when none existed before); a symlink is removed, never followed."""
    try:
        os.unlink(perfmap_path(pid))
    except OSError:
        pass


@dataclass
class JcmdSource:
    pid: int
    jcmd: str
    with_perfmap: bool = True
    name: str = "jcmd"

    @classmethod
    def open(cls, pid: int, with_perfmap: bool = True) -> JcmdSource:
        require_running(pid)
        return cls(pid, find_jcmd(pid), with_perfmap)

    def snapshot(self) -> CodeCacheSnapshot:
        started = time.perf_counter()
        nmethods = parse_codelist(run_jcmd(self.pid, "Compiler.codelist", jcmd=self.jcmd))
        blobs = list(nmethods)
        if self.with_perfmap:
            existed = os.path.lexists(perfmap_path(self.pid))
            try:
                run_jcmd(self.pid, "Compiler.perfmap", jcmd=self.jcmd)
                blobs += parse_perfmap(read_perfmap_safely(self.pid), {b.code_begin for b in nmethods})
            except SourceUnavailable:
                pass  # codelist alone still names every nmethod
            finally:
                if not existed:
                    _remove_our_perfmap(self.pid)
        stats = WalkStats(blocks=len(blobs), seconds=time.perf_counter() - started)
        # codelist's state column is nmethod::_state, whose names depend on the JDK: jcmd's own is the JVM's
        states = nmethod_state_names(jdk_major(Path(self.jcmd)))
        return CodeCacheSnapshot([], blobs, {}, stats, time.time(), source=self.name, state_names=states)

    def close(self) -> None:
        pass
