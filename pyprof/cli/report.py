"""`pyprof report PROFILE`: the views people read (top, tree, collapsed, flame graph, speedscope) from a
pprof file, pyprof's or another tool's; `pyprof report --diff BASE NEW`: what got slower."""

from __future__ import annotations

import os
import sys
from typing import Optional

import click

from pyprof.cli.common import emit_json
from pyprof.errors import UsageError
from pyprof.model import ProfileData
from pyprof.reporters import REPORT_FORMATS

FORMATS = REPORT_FORMATS
DIFF_FORMATS = ("top", "flamegraph")
BINARY_OR_PAGE = ("flamegraph", "speedscope", "pprof")
ALL_TYPES_FORMATS = ("flamegraph", "speedscope")   # hold every sample type unless --type picks one


def _load(path: str, sample_type: Optional[str] = None) -> ProfileData:
    from pyprof.output.pprof import read_pprof

    if not os.path.exists(path):
        raise UsageError(f"no such profile: {path}")
    return read_pprof(path, sample_type)


def _pick_format(fmt: Optional[str], output: Optional[str], as_json: bool) -> str:
    if fmt is not None:
        return fmt
    if output is not None:
        from pyprof.output import format_for_path

        guessed = format_for_path(output)
        if guessed is not None:
            return guessed
        if not as_json:
            raise UsageError(f"cannot tell the format from {output!r}: pass --format "
                             f"({', '.join(FORMATS)})")
    return "top"


def _emit(text: str | bytes, output: Optional[str], fmt: str) -> None:
    from pyprof.output import write_atomically

    data = text.encode("utf-8", errors="replace") if isinstance(text, str) else text
    if output is None or output == "-":
        if fmt in BINARY_OR_PAGE and sys.stdout.isatty():
            raise UsageError(f"{fmt} output is not for a terminal: pass -o FILE")
        out = click.get_binary_stream("stdout")
        out.write(data)
        out.flush()
        return
    write_atomically(output, data)
    click.echo(f"pyprof: wrote {output} ({fmt}, {len(data):,} bytes)", err=True)


@click.command("report")
@click.argument("profiles", nargs=-1, required=True, type=click.Path())
@click.option("--format", "-f", "fmt", type=click.Choice(FORMATS), default=None,
              help="the view (default: from -o's extension, else top)")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="write to FILE (atomically) instead of stdout; .html means flamegraph")
@click.option("--diff", is_flag=True, help="compare two profiles: pyprof report --diff BASE NEW")
@click.option("--thread", default=None, metavar="REGEX", help="only threads whose name matches")
@click.option("--focus", default=None, metavar="REGEX",
              help="only samples with a function matching REGEX on the stack")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="rows of top (default 20) / lines of tree (default all); 0 = all")
@click.option("--sort", type=click.Choice(("self", "total")), default="self", show_default=True,
              help="top: order by self or total samples")
@click.option("--min-percent", type=click.FloatRange(0, 100), default=1.0, show_default=True,
              help="tree: fold paths below this share of samples")
@click.option("--per-thread", is_flag=True, help="top: one row per thread and function")
@click.option("--merge-threads", is_flag=True, help="tree: one tree for all threads (default: threads first)")
@click.option("--no-tiers", is_flag=True,
              help="merge a method's JIT tiers ([interp], [C1], [C2]) into one (always with --diff)")
@click.option("--json", "as_json", is_flag=True, help="top/tree/diff as JSON, for scripts")
@click.option("--title", default=None, help="flame graph title")
@click.option("--type", "sample_type", default=None, metavar="TYPE",
              help="the sample type to show from a profile of several events (-e cpu,wall): samples, cpu, "
                   "wall_samples, wall, offcpu, alloc_space, delay, ... (default: the first count type)")
@click.option("--service", default=None, help="store DIR: only this service's windows")
@click.option("--pid", type=int, default=None, help="store DIR: only this pid's windows")
@click.option("--since", default=None, metavar="TIME", help="store DIR: from TIME (10m, 2h, ISO, @UNIX)")
@click.option("--until", default=None, metavar="TIME", help="store DIR: until TIME (default now)")
def report(profiles: tuple[str, ...], fmt: Optional[str], output: Optional[str], diff: bool,
           thread: Optional[str], focus: Optional[str], limit: Optional[int], sort: str,
           min_percent: float, per_thread: bool, merge_threads: bool, no_tiers: bool, as_json: bool,
           title: Optional[str], sample_type: Optional[str], service: Optional[str], pid: Optional[int],
           since: Optional[str], until: Optional[str]) -> None:
    """Read a pprof PROFILE and show it: top, tree, collapsed, flamegraph (HTML), speedscope, pprof.

    \b
    Examples:
      pyprof report cpu.pb.gz                          hottest functions (self and total %)
      pyprof report cpu.pb.gz -o cpu.html              flame graph, one self-contained HTML file
      pyprof report cpu.pb.gz --format tree --thread '^http-'
      pyprof report cpu.pb.gz --focus 'HashMap' --json
      pyprof report app.pb.gz --type wall -o wall.html  one event of a `-e cpu,wall` profile
      pyprof report --diff before.pb.gz after.pb.gz    what got slower (top; -o diff.html: flame graph)
      pyprof report /var/lib/pyprof --service orders --since 10m    a daemon's store, merged
      pyprof report /var/lib/pyprof --service orders --diff 2d..1d 1h..   two time ranges compared
    """
    # A diff matches methods across JIT tiers: a method C2 compiled in one run and C1 in the other (or
    # still interpreted) is the same method, and so are the call paths through it.
    tiers = not no_tiers and not diff
    fmt = _pick_format(fmt, output, as_json)
    store_dir = profiles[0] if os.path.isdir(profiles[0]) else None
    if store_dir is None and (service, pid, since, until) != (None, None, None, None):
        raise UsageError("--service, --pid, --since and --until select windows of a store DIR")
    if diff and store_dir is not None:
        if len(profiles) != 3:
            raise UsageError("--diff on a store needs two ranges: "
                             "pyprof report DIR --diff FROM..UNTIL FROM..UNTIL")
        if fmt not in DIFF_FORMATS:
            raise UsageError(f"--diff shows {' or '.join(DIFF_FORMATS)}, not {fmt}")
        base, new = (_filtered(_load_range(store_dir, service, pid, r, sample_type), thread, focus, tiers)
                     for r in profiles[1:])
        _report_diff(base, new, fmt, output, tiers, sort, limit, as_json, title)
        return
    if diff:
        if len(profiles) != 2:
            raise UsageError("--diff needs two profiles: pyprof report --diff BASE NEW")
        if fmt not in DIFF_FORMATS:
            raise UsageError(f"--diff shows {' or '.join(DIFF_FORMATS)}, not {fmt}")
        base, new = (_filtered(_load(p, sample_type), thread, focus, tiers) for p in profiles)
        _report_diff(base, new, fmt, output, tiers, sort, limit, as_json, title)
        return
    if len(profiles) != 1:
        raise UsageError("report reads one profile (two with --diff)")
    if as_json and fmt not in ("top", "tree"):
        raise UsageError(f"--json is for top and tree, not {fmt}")
    if store_dir is not None:
        from pyprof.cli.store import load_merged
        from pyprof.store.timespec import parse_time

        loaded = load_merged(store_dir, service, pid, parse_time(since) if since else None,
                             parse_time(until) if until else None, sample_type)
    elif fmt in ALL_TYPES_FORMATS and sample_type is None:
        _report_all_types(profiles[0], fmt, output, thread, focus, tiers, title)
        return
    else:
        loaded = _load(profiles[0], sample_type)
    profile = _filtered(loaded, thread, focus, tiers)
    if fmt == "top":
        from pyprof.reporters import top

        view = top.aggregate(profile, tiers=tiers, sort=sort, per_thread=per_thread)
        rows = 20 if limit is None else limit
        if as_json:
            _emit_json(top.to_json(view, rows), output)
        else:
            _emit(top.render_text(view, rows), output, fmt)
    elif fmt == "tree":
        from pyprof.reporters import tree

        view = tree.aggregate(profile, tiers=tiers, by_thread=not merge_threads)
        if as_json:
            _emit_json(tree.to_json(view, min_percent), output)
        else:
            _emit(tree.render_text(view, min_percent, limit or None), output, fmt)
    else:
        from pyprof.reporters import render_file

        name = os.path.basename(profiles[0])
        what = "CPU" if sample_type is None else sample_type
        label = title or (f"{what} flame graph: {name}" if fmt == "flamegraph" else name)
        _emit(render_file(profile, fmt, tiers, label), output, fmt)


def _report_all_types(path: str, fmt: str, output: Optional[str], thread: Optional[str],
                      focus: Optional[str], tiers: bool, title: Optional[str]) -> None:
    """A flame graph page or speedscope file of every sample type of a pprof file (`-e cpu,alloc`): a
    selector between types, a profile per type and thread; the first type is shown first."""
    from pyprof.output.pprof import read_pprof_types
    from pyprof.reporters import render_typed
    from pyprof.reporters.sampletypes import TypedProfile, shown_types

    if not os.path.exists(path):
        raise UsageError(f"no such profile: {path}")
    typed = shown_types([TypedProfile(sample_type, _filtered(profile, thread, focus, tiers))
                         for sample_type, profile in read_pprof_types(path)])
    if not typed:
        raise UsageError(f"{path}: the profile has no sample types")
    name = os.path.basename(path)
    cpu_only = len(typed) == 1 and typed[0].is_cpu_samples
    page = f"{'CPU flame' if cpu_only else 'Flame'} graph: {name}"
    label = title or (page if fmt == "flamegraph" else name)
    _emit(render_typed(typed, fmt, tiers, label), output, fmt)


def _load_range(directory: str, service: Optional[str], pid: Optional[int], text: str,
                sample_type: Optional[str] = None) -> ProfileData:
    from pyprof.cli.store import load_merged
    from pyprof.store.timespec import parse_range

    time_range = parse_range(text)
    return load_merged(directory, service, pid, time_range.start_ns, time_range.end_ns, sample_type)


def _filtered(profile: ProfileData, thread: Optional[str], focus: Optional[str], tiers: bool) -> ProfileData:
    from pyprof.reporters.aggregate import filter_profile

    return filter_profile(profile, thread=thread, focus=focus, tiers=tiers)


def _emit_json(value: dict, output: Optional[str]) -> None:
    if output is None or output == "-":
        emit_json(value)
        return
    import json

    _emit(json.dumps(value, separators=(",", ":")) + "\n", output, "json")


def _report_diff(base: ProfileData, new: ProfileData, fmt: str, output: Optional[str], tiers: bool, sort: str,
                 limit: Optional[int], as_json: bool, title: Optional[str]) -> None:
    if fmt == "flamegraph":
        from pyprof.reporters import flamegraph

        _emit(flamegraph.render_diff(base, new, tiers=tiers, title=title or "Differential CPU flame graph"),
              output, fmt)
        return
    from pyprof.reporters import diff

    view = diff.aggregate(base, new, tiers=tiers, sort=sort)
    rows = 20 if limit is None else limit
    if as_json:
        _emit_json(diff.to_json(view, rows), output)
    else:
        _emit(diff.render_text(view, rows), output, fmt)


COMMANDS = [report]
