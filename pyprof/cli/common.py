"""Shared CLI pieces: argument types, JSON output, formatting."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Optional

import click

from pyprof.errors import UsageError
from pyprof.output import FILE_FORMAT_NAMES, default_suffix, format_for_path


class PidType(click.ParamType):
    name = "PID"

    def convert(self, value: Any, param, ctx) -> int:
        try:
            pid = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a process id", param, ctx)
        if pid <= 0:
            self.fail(f"{value!r} is not a process id", param, ctx)
        return pid


PID = PidType()


def require_privileges(pid: Optional[int] = None, host_wide: bool = False) -> None:
    """Before any BPF is compiled: PermissionDenied naming each missing capability (one line, exit 6)
    instead of a bcc error in the middle of start-up. `host_wide` (the daemon) needs what reading any
    user's JVM needs; one target needs it only when it belongs to another user."""
    from pyprof.procfs import capabilities

    if host_wide:
        capabilities.require(*capabilities.REQUIRED, why="pyprof daemon (every JVM of every user)")
        return
    capabilities.require("CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", why="profiling")
    if pid is not None:
        capabilities.require_target_access(pid)


def parse_address(text: str) -> int:
    """An address as jcmd, perf and gdb print them: hex, with or without 0x."""
    t = text.strip().lower()
    try:
        value = int(t, 16)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        raise UsageError(f"invalid address {text!r}: expected hex, e.g. 0x7f3e348c9080") from None


def emit_json(value: Any) -> None:
    # json.dumps, not json.dump: only the one-shot encoder is the C one (10x faster on 50k blobs).
    sys.stdout.write(json.dumps(value, indent=None, separators=(",", ":")) + "\n")


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def resolve_output(output: Optional[str], fmt: Optional[str], pid: int) -> tuple[str, str]:
    """The file and format a profiling command writes (attach, record, top -o): the format from --format,
    else from the file name, else pprof; a default name pyprof-PID-TIME.<ext>. Checks the directory now,
    so that a run never ends in a profile that cannot be written."""
    if output is None:
        fmt = fmt or "pprof"
        output = f"pyprof-{pid}-{time.strftime('%Y%m%d-%H%M%S')}{default_suffix(fmt)}"
    elif fmt is None:
        fmt = format_for_path(output) or "pprof"
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise UsageError(f"cannot write {output}: directory {directory} is not writable")
    if fmt not in FILE_FORMAT_NAMES:
        raise UsageError(f"format {fmt!r} is not a profile file format ({', '.join(FILE_FORMAT_NAMES)})")
    return output, fmt


# sample even where the kernel-safety decision (pyprof.kernel.safety) refuses: attach, record, top, daemon
allow_unsafe_kernel_option = click.option(
    "--allow-unsafe-kernel", "--force", "force", is_flag=True,
    help="sample even on a kernel whose BPF user-memory reads can freeze it "
         "(5.19-6.3 without the fix; docs/kernels.md); --force is the old name")


def events_option(f):
    """-e/--event for attach, record, top and the daemon: pyprof.sampling.programs.EVENTS, comma-separated."""
    return click.option(
        "-e", "--event", "events", default="cpu", show_default=True, metavar="EVENTS",
        help="what to profile, comma-separated: cpu (on-CPU samples), wall (on-CPU + off-CPU time per "
             "thread), offcpu (off-CPU time only), alloc (allocated bytes and objects by class), lock "
             "(contended monitors and parking); several at once share one pprof file, one sample "
             "type pair per event (the first is the default type)")(f)


def event_tuning_options(f):
    """How often the other events record: --wall-interval, --alloc-interval, --lock-threshold."""
    f = click.option("--lock-threshold", type=click.FloatRange(0, 10_000_000), default=10.0,
                     show_default=True, metavar="US",
                     help="lock: waits shorter than this many microseconds are not recorded (an "
                          "uncontended monitor entry takes 1-10 us)")(f)
    f = click.option("--alloc-interval", default="512k", show_default=True, metavar="BYTES",
                     callback=_byte_count,
                     help="alloc: one record per this many allocated bytes on average, per thread (512k, "
                          "1m, 100000); each stands for what it sampled (totals estimate every byte)")(f)
    f = click.option("--wall-interval", type=click.FloatRange(0.1, 1000), default=None, metavar="MS",
                     help="wall/offcpu: off-CPU intervals shorter than this are sampled (probability "
                          "length/interval, weight one interval) [default: 50]")(f)
    return f


def _byte_count(_ctx, _param, value: str) -> int:
    from pyprof.sampling.alloc import parse_interval

    try:
        return parse_interval(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


def event_tuning(wall_interval: Optional[float], alloc_interval: int, lock_threshold: float) -> dict:
    """The tuning options as ProfileOptions fields."""
    return {"wall_interval_ns": int(wall_interval * 1e6) if wall_interval else 0,
            "alloc_interval_bytes": alloc_interval, "lock_threshold_ns": int(lock_threshold * 1000)}


def parse_events_option(text: str) -> tuple[str, ...]:
    from pyprof.sampling.programs import parse_events

    return parse_events(text)


def event_of_type(sample_type: Optional[str], events: tuple[str, ...]) -> str:
    """`--type wall` / `--type wall_samples` / `--type cpu` -> the event of those asked for that has it
    (default: the first event)."""
    if sample_type is None:
        return events[0]
    from pyprof.model import EVENT_SAMPLE_TYPES

    for event in events:
        if sample_type == event or sample_type in (t.type for t in EVENT_SAMPLE_TYPES[event]):
            return event
    names = [t.type for event in events for t in EVENT_SAMPLE_TYPES[event]]
    raise UsageError(f"--type {sample_type}: not a type of the events asked for ({', '.join(names)})")
