"""Kernel addresses -> function names, from /proc/kallsyms (root sees real addresses)."""

from __future__ import annotations

import bisect
import time
from typing import Optional

MAX_KALLSYMS_BYTES = 64 * 1024 * 1024
SHARED_TTL_S = 300.0      # modules come and go: the shared table is re-read at most this often

_shared: Optional[tuple[float, KernelSymbols]] = None


class KernelSymbols:
    def __init__(self, starts: list[int], names: list[str]) -> None:
        self._starts = starts
        self._names = names

    @classmethod
    def load(cls, path: str = "/proc/kallsyms") -> KernelSymbols:
        """Text symbols sorted by address; empty when addresses are hidden (kptr_restrict)."""
        pairs: dict[int, str] = {}
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_KALLSYMS_BYTES)
        except OSError:
            return cls([], [])
        for line in data.decode("ascii", "replace").splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[1] not in ("t", "T", "W", "w"):
                continue
            address = int(parts[0], 16)
            if address:
                pairs.setdefault(address, parts[2])
        starts = sorted(pairs)
        return cls(starts, [pairs[a] for a in starts])

    @classmethod
    def shared(cls) -> KernelSymbols:
        """One table for every target of this process (reading kallsyms costs ~0.2 s of CPU)."""
        global _shared
        now = time.monotonic()
        if _shared is None or now - _shared[0] > SHARED_TTL_S:
            _shared = (now, cls.load())
        return _shared[1]

    @property
    def available(self) -> bool:
        return bool(self._starts)

    def lookup(self, address: int) -> Optional[str]:
        i = bisect.bisect_right(self._starts, address) - 1
        return self._names[i] if i >= 0 else None
