"""Kernel addresses -> function names, from /proc/kallsyms (root sees real addresses)."""

from __future__ import annotations

import bisect
import time
from array import array
from itertools import accumulate
from typing import Optional, Sequence

MAX_KALLSYMS_BYTES = 64 * 1024 * 1024
SHARED_TTL_S = 300.0      # modules come and go: the shared table is re-read at most this often

_shared: Optional[tuple[float, KernelSymbols]] = None


_TEXT_KINDS = frozenset((b"t", b"T", b"W", b"w"))


class KernelSymbols:
    """Sorted start addresses (an array of u64) and their names (one bytes blob and an array of
    offsets): ~120k symbols in 5 MiB instead of 15 MiB of Python ints and strs."""

    def __init__(self, starts: Sequence[int], names: Sequence[str]) -> None:
        self._path = ""
        self._init(array("Q", starts), [name.encode() for name in names])

    @classmethod
    def lazy(cls, path: str = "/proc/kallsyms") -> KernelSymbols:
        """The table of `path`, read at its first lookup: a start-up need not wait 0.13 s of CPU for
        names the first kernel frame asks for."""
        out = cls.__new__(cls)
        out._path = path
        out._starts = None   # type: ignore[assignment]   # _loaded() reads the table
        return out

    def _loaded(self) -> KernelSymbols:
        if self._starts is None:
            table = self.load(self._path)
            self._starts, self._blob, self._offsets = table._starts, table._blob, table._offsets
        return self

    def _init(self, starts: array, names: list[bytes]) -> None:
        self._starts = starts
        self._blob = b"".join(names)
        # name i is blob[offsets[i]:offsets[i + 1]]
        self._offsets = array("Q", accumulate((len(name) for name in names), initial=0))

    @classmethod
    def load(cls, path: str = "/proc/kallsyms") -> KernelSymbols:
        """Text symbols sorted by address; empty when addresses are hidden (kptr_restrict)."""
        pairs: dict[int, bytes] = {}
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_KALLSYMS_BYTES)
        except OSError:
            return cls([], [])
        for line in data.split(b"\n"):
            parts = line.split()
            if len(parts) < 3 or parts[1] not in _TEXT_KINDS:
                continue
            address = int(parts[0], 16)
            if address:
                pairs.setdefault(address, parts[2])
        starts = sorted(pairs)
        out = cls.__new__(cls)
        out._path = path
        out._init(array("Q", starts), [pairs[a] for a in starts])
        return out

    @classmethod
    def shared(cls) -> KernelSymbols:
        """One table for every target of this process (reading kallsyms costs ~0.13 s of CPU here, seconds
        on a slow machine). Read when a target opens, before its samples are drained: read at the first
        kernel frame instead, it stalled the drain while the ring buffer filled (a TCG guest lost 17-42 %
        of its samples)."""
        global _shared
        now = time.monotonic()
        if _shared is None or now - _shared[0] > SHARED_TTL_S:
            _shared = (now, cls.load())
        return _shared[1]

    @property
    def available(self) -> bool:
        """Whether addresses are visible (kptr_restrict shows zeros): the first line tells, before the
        table is read."""
        if self._starts is None:
            return _first_address(self._path) != 0
        return bool(self._starts)

    def lookup(self, address: int) -> Optional[str]:
        self._loaded()
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        return self._blob[self._offsets[i]:self._offsets[i + 1]].decode("ascii", "replace")


def _first_address(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return int(f.readline(256).split(b" ", 1)[0] or b"0", 16)
    except (OSError, ValueError):
        return 0
