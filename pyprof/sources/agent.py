"""The agent source: the pyprof Java agent (java-helper/) inside the JVM, over py4j.

- snapshot(): Compiler.codelist run in process through the DiagnosticCommand MBean (no jcmd, and no
  Attach Listener thread when the agent was loaded at start with -javaagent); parsed like jcmd's.
  nmethods only: the agent does not list stubs (the VMStructs reader and jcmd's perf map do).
- changes(): JIT events from the agent's JFR stream (compiles with tier and inlining, deoptimizations,
  compile failures, code-cache-full, class unloads), polled from its in-memory ring.
- compiles(): compile id -> method and inlining, so a live map that learns of an nmethod by its compile
  id (uprobes) can name it without reading the method from memory.

`open(pid)` connects to a running agent, and with load=True loads it first when none runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from pyprof.agent.client import AgentClient, JitEvent
from pyprof.agent.control import connect_agent
from pyprof.hotspot.codecache import CodeCacheSnapshot, WalkStats
from pyprof.hotspot.layout import nmethod_state_names
from pyprof.jvmtools.release import target_jdk_major
from pyprof.sources.jcmd import parse_codelist


@dataclass
class AgentSource:
    pid: int
    client: AgentClient
    loaded_now: bool = False
    notes: list[str] = field(default_factory=list)
    name: str = "agent"
    _since: int = 0
    dropped: int = 0

    @classmethod
    def open(cls, pid: int, load: bool = True) -> AgentSource:
        """Connect to the agent in `pid`; load it first (jcmd) when none runs and `load` is set."""
        connection = connect_agent(pid, load)
        return cls(pid, connection.client, connection.loaded_now, connection.notes)

    def snapshot(self) -> CodeCacheSnapshot:
        started = time.perf_counter()
        text, _ = self.client.codelist()
        blobs = parse_codelist(text)
        stats = WalkStats(blocks=len(blobs), seconds=time.perf_counter() - started)
        states = nmethod_state_names(target_jdk_major(self.pid))   # codelist's states are the JDK's
        return CodeCacheSnapshot([], blobs, {}, stats, time.time(), source=self.name, state_names=states)

    def start_changes(self, from_now: bool = True) -> None:
        """Where changes() starts: now (default) or with everything the agent still holds."""
        if from_now:
            _, self._since, _ = self.client.events(since=1 << 62, limit=0)
        else:
            self._since = 0

    def changes(self, limit: int = 10_000) -> list[JitEvent]:
        """JIT events since the previous call (the first call: since start_changes, or everything)."""
        events, last, dropped = self.client.events(self._since, limit)
        self._since = last
        self.dropped += dropped
        return events

    def compiles(self, compile_ids: list[int]) -> dict[int, Optional[dict]]:
        return self.client.compiles(compile_ids)

    def close(self) -> None:
        self.client.close()
