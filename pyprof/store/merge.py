"""Merging stored windows into one profile, exactly.

The merged profile's count for a stack is the sum of that stack's counts over the windows (the
ProfileData key is the whole sample: frames, thread, tid and sample labels), and so are the lost
samples and unknown frames. Windows keep pyprof's sample types (samples/count, cpu/nanoseconds =
count x period), so windows sampled at different rates cannot be summed exactly: that is refused.

Window labels that differ between the merged windows (pid, container_id, jdk, service_name, host) are
added to each sample as sample labels, so a merge over two JVMs of one service can still be split by
pid; labels all windows share are left out (they add nothing).
"""

from __future__ import annotations

from typing import Iterable

from pyprof.errors import UsageError
from pyprof.model import ProfileData, StackKey
from pyprof.store.labels import WindowLabels


def merge_windows(windows: Iterable[tuple[WindowLabels, ProfileData]]) -> ProfileData:
    items = list(windows)
    if not items:
        raise UsageError("no window to merge")
    periods = {profile.period_ns for _, profile in items}
    if len(periods) > 1:
        raise UsageError(f"the windows were sampled at different rates (periods {sorted(periods)} ns): "
                         "narrow the selection (--pid, --since/--until) to one rate")
    varying = _varying_labels([labels for labels, _ in items])
    first = items[0][1]
    # windows read with one sample type (`report DIR --type alloc_space`) keep their event and weights
    merged = ProfileData(period_ns=periods.pop(), event=first.event, counted=first.counted)
    merged.start_time_ns = min(p.start_time_ns for _, p in items)
    merged.duration_ns = max(p.start_time_ns + p.duration_ns for _, p in items) - merged.start_time_ns
    for labels, profile in items:
        extra = tuple((name, value) for name, value in labels.items() if name in varying)
        weights = profile.weights
        for key, count in profile.counts.items():
            merged.add(_with_labels(key, extra) if extra else key, count, weights.get(key, 0))
        merged.lost_samples += profile.lost_samples
        merged.unknown_frames += profile.unknown_frames
    merged.comments.append(f"merged {len(items)} windows")
    return merged


def _varying_labels(all_labels: list[WindowLabels]) -> set[str]:
    seen: dict[str, set[str]] = {}
    for labels in all_labels:
        present = dict(labels.items())
        for name in ("service_name", "pid", "container_id", "jdk", "host"):
            seen.setdefault(name, set()).add(present.get(name, ""))
    return {name for name, values in seen.items() if len(values) > 1}


def _with_labels(key: StackKey, extra: tuple[tuple[str, str], ...]) -> StackKey:
    names = {name for name, _ in extra}
    kept = tuple(pair for pair in key.labels if pair[0] not in names)
    return StackKey(key.frames, key.thread_name, key.tid, tuple(sorted(kept + extra)))
