"""`pyprof store ls DIR`: the windows a daemon's store holds; and the store side of `pyprof report DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from pyprof.cli.common import emit_json
from pyprof.errors import UsageError
from pyprof.model import ProfileData


@click.group("store")
def store() -> None:
    """Inspect a local store written by `pyprof daemon --out DIR`."""


@store.command("ls")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--service", default=None, help="only this service")
@click.option("--pid", type=int, default=None, help="only this pid")
@click.option("--since", default=None, metavar="TIME", help="windows ending after TIME (10m, ISO, @UNIX)")
@click.option("--until", default=None, metavar="TIME", help="windows starting before TIME")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per window, for scripts")
def ls(directory: str, service: Optional[str], pid: Optional[int], since: Optional[str], until: Optional[str],
       as_json: bool) -> None:
    """List the windows in the store DIR: service, pid, container, jdk, from, until, samples (of the
    first event), events, path."""
    from pyprof.store import Store
    from pyprof.store.timespec import format_time, parse_time

    with Store.open_readonly(directory) as s:
        windows = s.query(service, pid, parse_time(since) if since else None,
                          parse_time(until) if until else None)
    root = Path(directory)
    if as_json:
        emit_json({"windows": [w.to_json(root) for w in windows]})
        return
    rows = [("SERVICE", "PID", "CONTAINER", "JDK", "FROM", "UNTIL", "SAMPLES", "EVENTS", "PATH")]
    rows += [(w.labels.service_name, str(w.labels.pid), w.labels.container_id[:12] or "-",
              w.labels.jdk or "-", format_time(w.start_ns), format_time(w.end_ns), str(w.samples),
              ",".join(w.events), str(root / w.path)) for w in windows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    click.echo(f"{len(windows)} windows", err=True)


def load_merged(directory: str, service: Optional[str], pid: Optional[int], since_ns: Optional[int],
                until_ns: Optional[int], sample_type: Optional[str] = None) -> ProfileData:
    """The windows of DIR that match, merged into one profile (UsageError when none does).

    `sample_type` (`report DIR --type alloc_space`): that type's values, from the windows that have it
    (a daemon run with `-e cpu` before one with `-e cpu,alloc` left windows without alloc's types);
    how many lacked it is said on stderr, never silently."""
    from pyprof.store import Store, merge_windows

    with Store.open_readonly(directory) as s:
        windows = s.query(service, pid, since_ns, until_ns)
        if not windows:
            known = ", ".join(s.services()) or "none"
            raise UsageError(f"no window in {directory} matches (service {service or 'any'}, pid "
                             f"{pid or 'any'}, in the time range); services in the store: {known}")
        if sample_type is None:
            return merge_windows((w.labels, s.read(w)) for w in windows)
        read, without = _read_with_type(s, windows, sample_type)
        if not read:
            raise UsageError(f"none of the {len(windows)} matching windows in {directory} has sample type "
                             f"{sample_type!r} (was the daemon run with that event, -e?)")
        if without:
            click.echo(f"{without} of {len(windows)} windows have no sample type {sample_type!r}: "
                       "left out", err=True)
        return merge_windows(read)


def _read_with_type(s, windows, sample_type: str) -> tuple[list, int]:
    """(labels, profile) of the windows with `sample_type`, and how many lack it."""
    from pyprof.output.pprof import read_sample_types

    read, without = [], 0
    for w in windows:
        if sample_type not in read_sample_types(s.read_bytes(w)):
            without += 1
            continue
        read.append((w.labels, s.read(w, sample_type)))
    return read, without


COMMANDS = [store]
