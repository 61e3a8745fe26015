"""The one bounded cache type: least-recently-used eviction, with hit, miss and eviction counters.

Every cache of data read from the target (method names, debug info, frames, code bytes) is bounded: a
long run on a JVM that keeps loading classes must not grow without limit. Each cache registers itself
under a name, so `--verbose` can report how well every cache works (`cache_stats()`).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Optional, TypeVar, Union

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

_MISSING = object()
_registry: weakref.WeakSet[LRUCache] = weakref.WeakSet()


class LRUCache(Generic[K, V]):
    """A dict bounded to `capacity` entries; the least recently used entry goes first.

    Values may be None (a cached "nothing here" is as useful as a cached answer)."""

    __slots__ = ("name", "capacity", "_data", "hits", "misses", "evictions", "__weakref__")

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache {name}: capacity must be positive")
        self.name = name
        self.capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        _registry.add(self)

    def get(self, key: K, default: Union[V, D, None] = None) -> Union[V, D, None]:
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            self.misses += 1
            return default
        self.hits += 1
        self._data.move_to_end(key)
        return value  # type: ignore[return-value]

    def peek(self, key: K) -> Optional[V]:
        """The value or None, uncounted and without touching the order: for hot paths that fall back
        to get()/lookup() on None."""
        return self._data.get(key)

    def lookup(self, key: K) -> tuple[bool, Optional[V]]:
        """(found, value): for caches whose values may be None."""
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            self.misses += 1
            return False, None
        self.hits += 1
        self._data.move_to_end(key)
        return True, value  # type: ignore[return-value]

    def put(self, key: K, value: V) -> V:
        data = self._data
        data[key] = value
        data.move_to_end(key)
        if len(data) > self.capacity:
            data.popitem(last=False)
            self.evictions += 1
        return value

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        found, value = self.lookup(key)
        if found:
            return value  # type: ignore[return-value]
        return self.put(key, compute())

    def clear(self) -> None:
        """Forget everything (e.g. the target's metaspace may have been reused); not counted as evictions."""
        self._data.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class CacheStats:
    name: str
    size: int
    capacity: int
    hits: int
    misses: int
    evictions: int

    @property
    def hit_percent(self) -> float:
        looked = self.hits + self.misses
        return 100.0 * self.hits / looked if looked else 0.0


def cache_stats() -> list[CacheStats]:
    """Every live cache's counters, summed per name (one name may have several instances)."""
    by_name: dict[str, list[int]] = {}
    for cache in list(_registry):
        acc = by_name.setdefault(cache.name, [0, 0, 0, 0, 0])
        for i, v in enumerate((len(cache), cache.capacity, cache.hits, cache.misses, cache.evictions)):
            acc[i] += v
    return [CacheStats(name, *values) for name, values in sorted(by_name.items())]
