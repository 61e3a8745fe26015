"""The views people read a profile with: top, tree, flame graph (HTML), speedscope, and differential top /
flame graph. pprof (pyprof.output) is the exchange format; these are the views.

Each reporter is split in two, like memray's: a pure aggregation from ProfileData (pyprof.reporters.aggregate
and the `aggregate`/`build` function of each module, testable without a terminal or a browser) and a
renderer (text, JSON, HTML).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from pyprof.errors import UsageError
from pyprof.model import ProfileData
from pyprof.output import FILE_FORMAT_NAMES, FILE_FORMATS, render, write_atomically
from pyprof.reporters.sampletypes import TypedProfile, as_typed, folded_types, shown_types, split_events

# `pyprof report --format`: the text views, then every file format.
REPORT_FORMATS = ("top", "tree", *FILE_FORMAT_NAMES)


def render_file(profile: ProfileData, fmt: str, tiers: bool = True, title: Optional[str] = None) -> bytes:
    """The content of a profile file in any FILE_FORMATS format (`title`: the flame graph's page title,
    speedscope's profile name)."""
    return render_typed([as_typed(profile)], fmt, tiers, title)


def render_typed(typed: Sequence[TypedProfile], fmt: str, tiers: bool = True,
                 title: Optional[str] = None) -> bytes:
    """A file of one or several sample types: the flame graph and speedscope hold them all (a selector,
    a profile each); pprof and collapsed stacks the first one."""
    cpu_only = len(typed) == 1 and typed[0].is_cpu_samples
    if fmt == "flamegraph":
        title = title or ("CPU flame graph" if cpu_only else "Flame graph")
        from pyprof.reporters import flamegraph

        text = flamegraph.render_types(typed, tiers=tiers, title=title)
    elif fmt == "speedscope":
        from pyprof.reporters import speedscope

        text = speedscope.render_types(typed, tiers=tiers,
                                       name=title or ("pyprof CPU profile" if cpu_only else "pyprof profile"))
    elif fmt in FILE_FORMAT_NAMES:
        return render(typed[0].profile, fmt, tiers)
    else:
        raise UsageError(f"unknown file format {fmt!r} (written: {', '.join(FILE_FORMAT_NAMES)})")
    return text.encode("utf-8", errors="replace")


def write_report(profile: ProfileData, path: str, fmt: str, tiers: bool = True) -> None:
    """Write `profile` to `path` atomically in any file format (attach/record/top's -o)."""
    write_atomically(path, render_file(profile, fmt, tiers))


def write_reports(profiles: Sequence[ProfileData], path: str, fmt: str, tiers: bool = True) -> list[str]:
    """Several events' profiles (`-e cpu,wall`) to `path`; returns the files written. pprof holds them all
    as sample types of one file, the flame graph page and speedscope file every type but CPU ns (a type
    selector; a profile per type and thread); folded stacks are one number a line, so one file per event:
    the first event's at `path`, each other's at `path` with its type before the suffix
    (x.folded, x.alloc_space.folded)."""
    if fmt == "pprof":
        from pyprof.output.pprof import encode_events

        write_atomically(path, encode_events(profiles, tiers) if len(profiles) > 1 else
                         render(profiles[0], fmt, tiers))
        return [path]
    typed = split_events(profiles)
    if fmt in ("flamegraph", "speedscope"):
        write_atomically(path, render_typed(shown_types(typed), fmt, tiers))
        return [path]
    written = []
    for index, t in enumerate(folded_types(typed)):
        target = path if index == 0 else typed_path(path, t.name)
        write_atomically(target, render(t.profile, fmt, tiers))
        written.append(target)
    return written


def typed_path(path: str, type_name: str) -> str:
    """`path` with a sample type's name before its format's suffix: x.folded -> x.alloc_space.folded (a
    name with no known suffix gets the type at its end)."""
    name = os.path.basename(path)
    for suffix in sorted((s for f in FILE_FORMATS for s in f.suffixes), key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return f"{path[:-len(suffix)]}.{type_name}{path[-len(suffix):]}"
    return f"{path}.{type_name}"
