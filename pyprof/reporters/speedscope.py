"""speedscope's own JSON format (https://www.speedscope.app/file-format-schema.json): one sampled profile
per thread, weights in CPU nanoseconds, frames shared. Opens in speedscope (web or `npm i -g speedscope`,
both offline) with its time-order, left-heavy and sandwich views.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pyprof import __version__
from pyprof.model import ProfileData, display_name
from pyprof.reporters.aggregate import thread_label

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def build(profile: ProfileData, tiers: bool = True, name: str = "pyprof CPU profile") -> dict[str, Any]:
    frames: list[dict[str, Any]] = []
    frame_ids: dict[tuple[str, str], int] = {}
    stacks: dict[str, Counter] = {}

    def frame_id(label: str, filename: str) -> int:
        key = (label, filename)
        index = frame_ids.get(key)
        if index is None:
            index = frame_ids[key] = len(frames)
            frames.append({"name": label, "file": filename} if filename else {"name": label})
        return index

    for key, count in profile.counts.items():
        if count <= 0:
            continue
        ids: list[int] = []
        for physical in reversed(key.frames):            # root first, as speedscope wants
            for logical in reversed(physical.frames):    # an inlining chain is innermost first
                ids.append(frame_id(display_name(logical, tiers), logical.filename))
        stacks.setdefault(thread_label(key), Counter())[tuple(ids)] += count
    period = profile.period_ns
    profiles = []
    for thread, counter in sorted(stacks.items(), key=lambda item: -sum(item[1].values())):
        samples = sorted(counter)
        weights = [counter[s] * period for s in samples]
        profiles.append({"type": "sampled", "name": thread, "unit": "nanoseconds", "startValue": 0,
                         "endValue": sum(weights), "samples": [list(s) for s in samples], "weights": weights})
    return {"$schema": SCHEMA, "name": name, "exporter": f"pyprof {__version__}", "activeProfileIndex": 0,
            "shared": {"frames": frames}, "profiles": profiles}


def render(profile: ProfileData, tiers: bool = True, name: str = "pyprof CPU profile") -> str:
    return json.dumps(build(profile, tiers, name), separators=(",", ":"), ensure_ascii=False) + "\n"
