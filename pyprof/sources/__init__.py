"""Code-cache metadata sources behind one interface.

- vmstructs: attach-free; reads HotSpot's own tables from /proc/PID/mem (the default).
- jcmd: `jcmd PID Compiler.codelist` (+ `Compiler.perfmap` for other blobs). Not attach-free: it starts
  the JVM's Attach Listener thread. Works when libjvm is stripped or memory reads fail.
"""

from __future__ import annotations

from pyprof.sources.base import CodeCacheSource, SourceChoice, open_source

__all__ = ["CodeCacheSource", "SourceChoice", "open_source"]
