"""Where the daemon's windows go: the local store first (it is also the exporters' source of bytes, so a
window is encoded once), then a bounded delivery queue per backend (Pyroscope, OTLP)."""

from __future__ import annotations

from typing import Optional, Sequence

from pyprof.export.delivery import DeliveryQueue
from pyprof.model import ProfileData
from pyprof.store.labels import WindowLabels
from pyprof.store.store import Store


class StoreSink:
    """Writes each window into the store (atomically, indexed, retention applied) and queues the stored
    bytes for every exporter; a queue never blocks the daemon (it drops the oldest when full, counted)."""

    def __init__(self, store: Store, queues: list[DeliveryQueue]) -> None:
        self.store = store
        self.queues = queues

    def accept(self, labels: WindowLabels, window: Sequence[ProfileData]) -> Optional[str]:
        """One pprof per window with every event's sample types (as `attach -e` writes them)."""
        stored = self.store.write_window(window, labels)
        if self.queues:
            data = self.store.read_bytes(stored)
            for queue in self.queues:
                queue.submit(labels, data, stored.id)
        return stored.path

    def resume(self) -> int:
        """After a restart: queue again what each backend had not settled (the store is the queue of
        last resort, so a backend down across a restart loses nothing within retention)."""
        queued = 0
        for queue in self.queues:
            backend = queue.sink.name
            self.store.start_delivery(backend)
            for stored in self.store.undelivered(backend):
                queue.submit(stored.labels, self.store.read_bytes(stored), stored.id)
                queued += 1
        return queued
