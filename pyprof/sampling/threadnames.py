"""Current thread names of the target, attach-free.

Java threads are named by their java.lang.Thread's `name` (read from the heap by
pyprof.hotspot.threads.JavaThreads at each refresh): full length, and current even when another thread
renamed it. Other threads (GC, compiler and VM threads, native threads) and JVMs whose libjvm is
stripped fall back to /proc/PID/task/TID/comm, which HotSpot sets at thread start (truncated to 15
bytes). Names are cached per tid and re-read after a short time-to-live; a thread that has exited keeps
the last name seen.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from pyprof.lru import LRUCache
from pyprof.procfs.process import comm

TTL = 1.0
MAX_THREADS = 100_000


class ThreadNames:
    def __init__(self, pid: int, ttl: float = TTL, java_names: Optional[Callable[[int], Optional[str]]] = None
                 ) -> None:
        self.pid = pid
        self.ttl = ttl
        self.java_names = java_names
        # tid -> (read at, name); an exited thread keeps its last name (thread pools churn: bounded)
        self._names: LRUCache[int, tuple[float, str]] = LRUCache("tid -> thread name", MAX_THREADS)

    def name(self, tid: int, comm_at_sample: bytes = b"") -> str:
        """The thread's name: its Java name, else its comm now; for a thread that has exited, the last
        name seen, else its comm at the time of the sample (the record carries it: samples are
        processed up to a few seconds late, `record`'s early ones later still)."""
        now = time.monotonic()
        cached = self._names.get(tid)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        name = self.java_names(tid) if self.java_names is not None else None
        if name is None:
            name = comm(self.pid, tid)
        if name is None:   # the thread has exited: keep the last name we saw
            name = cached[1] if cached is not None else \
                (comm_at_sample.split(b"\0", 1)[0].decode("utf-8", "replace") or f"tid-{tid}")
        self._names.put(tid, (now, name))
        return name


class VirtualThreadNames:
    """Labels of virtual threads (JDK 21+), keyed by java.lang.Thread.tid, which the JVM never reuses.

    The BPF sampler captures the mounted virtual thread's oop and tid at sample time; its name is read
    here, later, from that oop (`read(oop, tid)`, which checks the object still holds that tid: a GC may
    have moved it) and kept for `ttl` seconds. An unnamed virtual thread (the default) is labelled
    `#<tid>`, and so is one whose name could not be read yet.
    """

    def __init__(self, read: Callable[[int, int], Optional[str]], ttl: float = TTL) -> None:
        self.read = read
        self.ttl = ttl
        self._names: LRUCache[int, tuple[float, str]] = LRUCache("virtual thread tid -> name",
                                                                  MAX_THREADS)
        self.unread = 0          # lookups whose object had moved or was unreadable (labelled #<tid>)

    def label(self, oop: int, java_tid: int) -> str:
        now = time.monotonic()
        cached = self._names.get(java_tid)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        name = self.read(oop, java_tid)
        if name is None:
            self.unread += 1
            if cached is not None:    # moved since: the name read before is still the best one known
                return cached[1]
            return f"#{java_tid}"      # not cached: the next sample of it tries again
        label = name or f"#{java_tid}"
        self._names.put(java_tid, (now, label))
        return label
