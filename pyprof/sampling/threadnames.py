"""Current thread names of the target, attach-free.

/proc/PID/task/TID/comm is what HotSpot sets from the Java thread name (truncated to 15 bytes) when the
thread starts or renames *itself*. Names are cached per tid and re-read after a short time-to-live, so a
renamed thread shows its current name rather than the one it had at start.
"""

from __future__ import annotations

import time

TTL = 1.0


class ThreadNames:
    def __init__(self, pid: int, ttl: float = TTL) -> None:
        self.pid = pid
        self.ttl = ttl
        self._cache: dict[int, tuple[float, str]] = {}
        self._last_seen: dict[int, str] = {}

    def name(self, tid: int) -> str:
        now = time.monotonic()
        cached = self._cache.get(tid)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        name = self._read(tid)
        if name is None:   # the thread has exited: keep the last name we saw
            name = self._last_seen.get(tid, f"tid-{tid}")
        self._cache[tid] = (now, name)
        self._last_seen[tid] = name
        return name

    def _read(self, tid: int) -> str | None:
        try:
            with open(f"/proc/{self.pid}/task/{tid}/comm", "rb") as f:
                return f.read(64).decode("utf-8", "replace").strip()
        except OSError:
            return None
