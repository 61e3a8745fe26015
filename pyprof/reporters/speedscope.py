"""speedscope's own JSON format (https://www.speedscope.app/file-format-schema.json): one sampled profile
per thread and sample type, frames shared. Opens in speedscope (web or `npm i -g speedscope`, both
offline) with its time-order, left-heavy and sandwich views.

Units: CPU samples are written as CPU nanoseconds (samples x the period), other types in their own unit
("nanoseconds", "bytes"; a count is speedscope's "none"). A file of several sample types (`-e cpu,alloc`)
names each profile `TYPE: THREAD`; speedscope's profile selector switches between them.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Sequence

from pyprof import __version__
from pyprof.model import ProfileData, display_name
from pyprof.reporters.aggregate import thread_label
from pyprof.reporters.sampletypes import TypedProfile, as_typed

SCHEMA = "https://www.speedscope.app/file-format-schema.json"
UNITS = {"nanoseconds": "nanoseconds", "bytes": "bytes", "microseconds": "microseconds",
         "milliseconds": "milliseconds", "seconds": "seconds"}   # speedscope's ValueUnit; else "none"


class _Frames:
    """speedscope's shared frame table."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self._ids: dict[tuple[str, str], int] = {}

    def id(self, label: str, filename: str) -> int:
        key = (label, filename)
        index = self._ids.get(key)
        if index is None:
            index = self._ids[key] = len(self.frames)
            self.frames.append({"name": label, "file": filename} if filename else {"name": label})
        return index


def _profiles(typed: TypedProfile, frames: _Frames, tiers: bool, prefix: str) -> list[dict[str, Any]]:
    stacks: dict[str, Counter] = {}
    for key, count in typed.profile.counts.items():
        if count <= 0:
            continue
        ids: list[int] = []
        for physical in reversed(key.frames):            # root first, as speedscope wants
            for logical in reversed(physical.frames):    # an inlining chain is innermost first
                ids.append(frames.id(display_name(logical, tiers), logical.filename))
        stacks.setdefault(thread_label(key), Counter())[tuple(ids)] += count
    scale = typed.profile.period_ns if typed.is_cpu_samples else 1
    unit = "nanoseconds" if typed.is_cpu_samples else UNITS.get(typed.unit, "none")
    out = []
    for thread, counter in sorted(stacks.items(), key=lambda item: -sum(item[1].values())):
        samples = sorted(counter)
        weights = [counter[s] * scale for s in samples]
        out.append({"type": "sampled", "name": prefix + thread, "unit": unit, "startValue": 0,
                    "endValue": sum(weights), "samples": [list(s) for s in samples], "weights": weights})
    return out


def build_types(typed: Sequence[TypedProfile], tiers: bool = True,
                name: str = "pyprof CPU profile") -> dict[str, Any]:
    """One file: a profile per thread of every sample type in `typed` (the first type's busiest thread
    is the active one)."""
    frames = _Frames()
    profiles: list[dict[str, Any]] = []
    for t in typed:
        profiles += _profiles(t, frames, tiers, f"{t.name}: " if len(typed) > 1 else "")
    return {"$schema": SCHEMA, "name": name, "exporter": f"pyprof {__version__}", "activeProfileIndex": 0,
            "shared": {"frames": frames.frames}, "profiles": profiles}


def build(profile: ProfileData, tiers: bool = True, name: str = "pyprof CPU profile") -> dict[str, Any]:
    return build_types([as_typed(profile)], tiers, name)


def render_types(typed: Sequence[TypedProfile], tiers: bool = True, name: str = "pyprof CPU profile") -> str:
    return json.dumps(build_types(typed, tiers, name), separators=(",", ":"), ensure_ascii=False) + "\n"


def render(profile: ProfileData, tiers: bool = True, name: str = "pyprof CPU profile") -> str:
    return render_types([as_typed(profile)], tiers, name)
