"""`pyprof attach` and `pyprof record` (filled in by the sampling change)."""

from __future__ import annotations

COMMANDS: list = []
