"""A profile of several events (`-e cpu,alloc`) as the views see it: one profile per sample type.

pprof holds every event's two sample types in one file (samples/cpu, alloc_objects/alloc_space, ...).
The other formats show one number per stack, so a view is made per sample type: a ProfileData whose
counts are that type's values (`counted` says which: "alloc_space/bytes"; empty for CPU samples, whose
views also give CPU seconds from the period). The flame graph page and the speedscope file hold them all
(a selector, a profile each); folded stacks write one file per event; top and tree show one
(`--type`, default the first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from pyprof.errors import UsageError
from pyprof.model import EVENT_SAMPLE_TYPES, ProfileData, SampleType

# The sample type of each event that folded stacks write (one number per line): the one its users read
# first (CPU samples as every folded CPU profile, bytes allocated, time waited / off CPU / on the wall).
FOLDED_TYPE = {"cpu": "samples", "wall": "wall", "offcpu": "offcpu", "alloc": "alloc_space", "lock": "delay"}
CPU_SAMPLES, CPU_NANOS = EVENT_SAMPLE_TYPES["cpu"]


@dataclass(frozen=True)
class TypedProfile:
    sample_type: SampleType
    profile: ProfileData      # counts are this type's values

    @property
    def name(self) -> str:
        return self.sample_type.type

    @property
    def unit(self) -> str:
        return self.sample_type.unit

    @property
    def is_cpu_samples(self) -> bool:
        """CPU samples: a count whose worth in CPU time is the period (views show both)."""
        return self.sample_type == CPU_SAMPLES


def as_typed(profile: ProfileData) -> TypedProfile:
    """A profile of one sample type: the one `counted` names ("alloc_space/bytes"), else its event's
    count type (CPU samples)."""
    if profile.counted:
        name, _, unit = profile.counted.partition("/")
        return TypedProfile(SampleType(name, unit or "count"), profile)
    return TypedProfile(profile.sample_types[0], profile)


def split_events(profiles: Sequence[ProfileData]) -> list[TypedProfile]:
    """Both sample types of every event's profile (the session's profiles, one per event), in the
    order pprof writes them."""
    out: list[TypedProfile] = []
    for profile in profiles:
        count_type, weight_type = profile.sample_types
        out.append(TypedProfile(count_type, profile))
        weights = ProfileData(event=profile.event, counted=f"{weight_type.type}/{weight_type.unit}",
                              period_ns=profile.period_ns, start_time_ns=profile.start_time_ns,
                              duration_ns=profile.duration_ns, comments=list(profile.comments),
                              lost_samples=profile.lost_samples, unknown_frames=profile.unknown_frames,
                              frames=profile.frames)
        for key in profile.counts:
            value = profile.weight(key)
            if value > 0:
                weights.counts[key] = value
        out.append(TypedProfile(weight_type, weights))
    return out


def shown_types(typed: Sequence[TypedProfile]) -> list[TypedProfile]:
    """The types a view that holds several offers: all but CPU nanoseconds next to CPU samples (the
    same numbers times the period: the views give CPU seconds with the samples)."""
    names = {t.name for t in typed}
    return [t for t in typed if not (t.sample_type == CPU_NANOS and CPU_SAMPLES.type in names)]


def pick_type(typed: Sequence[TypedProfile], name: Optional[str]) -> TypedProfile:
    """The type called `name` (`--type`), by default the first. Raises UsageError (exit 2) naming the
    available types when there is no such type."""
    if not typed:
        raise UsageError("the profile has no sample types")
    if name is None:
        return typed[0]
    for t in typed:
        if t.name == name:
            return t
    raise UsageError(f"no sample type {name!r} in this profile (types: {', '.join(t.name for t in typed)})")


def folded_types(typed: Sequence[TypedProfile]) -> list[TypedProfile]:
    """One type per event for folded stacks: FOLDED_TYPE's, else the event's first (a profile read from
    another tool's pprof: its first type)."""
    chosen: dict[str, TypedProfile] = {}
    for t in typed:
        event = t.profile.event
        wanted = FOLDED_TYPE.get(event)
        if event not in chosen or (t.name == wanted and chosen[event].name != wanted):
            chosen[event] = t
    return list(chosen.values())
