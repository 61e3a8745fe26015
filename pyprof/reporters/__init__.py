"""The views people read a profile with: top, tree, flame graph (HTML), speedscope, and differential top /
flame graph. pprof (pyprof.output) is the exchange format; these are the views.

Each reporter is split in two, like memray's: a pure aggregation from ProfileData (pyprof.reporters.aggregate
and the `aggregate`/`build` function of each module, testable without a terminal or a browser) and a
renderer (text, JSON, HTML).
"""

from __future__ import annotations

REPORT_FORMATS = ("top", "tree", "collapsed", "flamegraph", "speedscope", "pprof")

# What `pyprof attach/record -o FILE` can write besides pyprof.output's own formats (pprof, collapsed).
SESSION_FORMATS = ("flamegraph", "speedscope")


def write_report(profile, path: str, fmt: str, tiers: bool = True) -> None:
    """Write a view of `profile` to `path` atomically (attach/record's -o x.html, -o x.speedscope.json)."""
    from pyprof.errors import UsageError
    from pyprof.output import write_atomically

    if fmt == "flamegraph":
        from pyprof.reporters import flamegraph

        text = flamegraph.render(profile, tiers=tiers)
    elif fmt == "speedscope":
        from pyprof.reporters import speedscope

        text = speedscope.render(profile, tiers=tiers)
    else:
        raise UsageError(f"unknown report format {fmt!r} (written here: {', '.join(SESSION_FORMATS)})")
    write_atomically(path, text.encode("utf-8", errors="replace"))
