"""The attach-free source: HotSpot's VMStructs, read from /proc/PID/mem."""

from __future__ import annotations

from dataclasses import dataclass

from pyprof.hotspot.codecache import CodeCache, CodeCacheSnapshot
from pyprof.hotspot.jvm import HotSpotJvm


@dataclass
class VMStructsSource:
    jvm: HotSpotJvm
    cache: CodeCache
    name: str = "vmstructs"

    @classmethod
    def open(cls, pid: int) -> VMStructsSource:
        jvm = HotSpotJvm.open(pid)
        cache = CodeCache(jvm)
        cache.heaps()  # fail now, not on first use, if the code cache cannot be read
        return cls(jvm, cache)

    @property
    def notes(self) -> list[str]:
        """What this JVM's VMStructs do not let pyprof decode (one line each)."""
        return self.jvm.notes

    def snapshot(self) -> CodeCacheSnapshot:
        snap = self.cache.walk()
        snap.source = self.name
        return snap

    def close(self) -> None:
        self.jvm.close()
