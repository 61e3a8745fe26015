"""The source interface and `auto` selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pyprof.errors import MemoryReadError, PyprofError, SourceUnavailable, UnsupportedJvm, UsageError
from pyprof.hotspot.codecache import CodeCacheSnapshot

SOURCE_NAMES = ("auto", "vmstructs", "jcmd", "agent")


class CodeCacheSource(Protocol):
    name: str

    def snapshot(self) -> CodeCacheSnapshot:
        """Every live blob now."""
        ...

    def close(self) -> None:
        ...


@dataclass
class SourceChoice:
    source: CodeCacheSource
    reason: str      # why this one (shown by `auto`)


def open_source(pid: int, name: str = "auto") -> SourceChoice:
    """Open the named source; `auto` prefers the attach-free reader, then a running agent, then jcmd.

    `agent` loads the agent (jcmd JVMTI.agent_load) when none runs; `auto` never loads it."""
    from pyprof.sources.agent import AgentSource
    from pyprof.sources.jcmd import JcmdSource
    from pyprof.sources.vmstructs import VMStructsSource

    if name not in SOURCE_NAMES:
        raise UsageError(f"unknown source {name!r}: choose one of {', '.join(SOURCE_NAMES)}")
    if name == "vmstructs":
        return SourceChoice(VMStructsSource.open(pid), "requested")
    if name == "jcmd":
        return SourceChoice(JcmdSource.open(pid), "requested")
    if name == "agent":
        return SourceChoice(AgentSource.open(pid, load=True), "requested")
    try:
        return SourceChoice(VMStructsSource.open(pid), "attach-free VMStructs reader")
    except (UnsupportedJvm, SourceUnavailable, MemoryReadError) as e:
        first_error: PyprofError | Exception = e
    try:
        return SourceChoice(AgentSource.open(pid, load=False), f"running agent (VMStructs: {first_error})")
    except SourceUnavailable:
        pass   # no agent running: jcmd next
    try:
        return SourceChoice(JcmdSource.open(pid), f"jcmd fallback (VMStructs: {first_error})")
    except SourceUnavailable as e:
        raise SourceUnavailable(f"no code-cache source works for {pid}: VMStructs: {first_error}; "
                                f"jcmd: {e}") from e
