"""The views people read a profile with: top, tree, flame graph (HTML), speedscope, and differential top /
flame graph. pprof (pyprof.output) is the exchange format; these are the views.

Each reporter is split in two, like memray's: a pure aggregation from ProfileData (pyprof.reporters.aggregate
and the `aggregate`/`build` function of each module, testable without a terminal or a browser) and a
renderer (text, JSON, HTML).
"""

from __future__ import annotations

from typing import Optional, Sequence

from pyprof.errors import UsageError
from pyprof.model import ProfileData
from pyprof.output import FILE_FORMAT_NAMES, render, write_atomically

# `pyprof report --format`: the text views, then every file format.
REPORT_FORMATS = ("top", "tree", *FILE_FORMAT_NAMES)


def render_file(profile: ProfileData, fmt: str, tiers: bool = True, title: Optional[str] = None) -> bytes:
    """The content of a profile file in any FILE_FORMATS format (`title`: the flame graph's page title,
    speedscope's profile name)."""
    if fmt == "flamegraph":
        from pyprof.reporters import flamegraph

        text = flamegraph.render(profile, tiers=tiers, **({"title": title} if title else {}))
    elif fmt == "speedscope":
        from pyprof.reporters import speedscope

        text = speedscope.render(profile, tiers=tiers, **({"name": title} if title else {}))
    elif fmt in FILE_FORMAT_NAMES:
        return render(profile, fmt, tiers)
    else:
        raise UsageError(f"unknown file format {fmt!r} (written: {', '.join(FILE_FORMAT_NAMES)})")
    return text.encode("utf-8", errors="replace")


def write_report(profile: ProfileData, path: str, fmt: str, tiers: bool = True) -> None:
    """Write `profile` to `path` atomically in any file format (attach/record/top's -o)."""
    write_atomically(path, render_file(profile, fmt, tiers))


def write_reports(profiles: Sequence[ProfileData], path: str, fmt: str, tiers: bool = True) -> None:
    """Several events' profiles (`-e cpu,wall`) to `path`: pprof holds them all as sample types of one
    file; the other formats show one type only, the first event's."""
    if len(profiles) > 1 and fmt == "pprof":
        from pyprof.output.pprof import encode_events

        write_atomically(path, encode_events(profiles, tiers))
    else:
        write_report(profiles[0], path, fmt, tiers)
