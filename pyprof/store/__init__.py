"""The daemon's local store: one pprof per JVM per window, a SQLite index, retention, merging."""

from pyprof.store.labels import WindowLabels
from pyprof.store.merge import merge_windows
from pyprof.store.store import RepairReport, Retention, Store, StoredWindow

__all__ = ["RepairReport", "Retention", "Store", "StoredWindow", "WindowLabels", "merge_windows"]
