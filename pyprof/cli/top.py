"""`pyprof top PID`: a live terminal view of a running JVM, like `perf top` or `py-spy top`.

The hottest functions by self and total share since the start, the sample rate, lost samples and unknown
frames, redrawn every second. Keys: `s` sorts by self or total, `t` switches between functions and
(thread, function) rows, `q` (or Ctrl-C) quits. Without a terminal on stdout it prints a plain table every
interval instead, so `pyprof top PID -d 10 > log` works too.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import click

from pyprof.cli.common import (
    PID,
    allow_unsafe_kernel_option,
    event_of_type,
    event_tuning,
    event_tuning_options,
    events_option,
    parse_events_option,
    require_privileges,
    resolve_output,
)
from pyprof.model import ProfileData, StackKey
from pyprof.reporters import write_reports
from pyprof.reporters.aggregate import FrameTable, compile_regex, thread_label, thread_matches
from pyprof.reporters.top import TopRow
from pyprof.session.runloop import StopSignals, run_until_stopped
from pyprof.session.session import ProfileOptions, ProfileSession

REFRESH_S = 1.0


# ---- aggregation (pure: no terminal, no session) ----------------------------------------------------

@dataclass
class LiveSnapshot:
    rows: list[TopRow]
    samples: int
    functions: int


class LiveTop:
    """Self and total counts of a ProfileData that keeps growing, updated from what changed since the
    last call (a stack seen before costs one dict lookup)."""

    def __init__(self, tiers: bool = True, thread: Optional[str] = None) -> None:
        self.table = FrameTable(tiers)
        self.thread_re = compile_regex(thread, "--thread")
        self.seen: dict[StackKey, int] = {}
        self._stacks: dict[StackKey, Optional[tuple[str, int, frozenset]]] = {}
        self.self_counts: Counter = Counter()      # (thread or None, frame) -> samples
        self.total_counts: Counter = Counter()
        self.samples = 0
        self.thread_samples: Counter = Counter()

    def _stack(self, key: StackKey) -> Optional[tuple[str, int, frozenset]]:
        info = self._stacks.get(key, False)
        if info is False:
            thread = thread_label(key)
            stack = self.table.stack(key)
            if not stack or (self.thread_re is not None and not thread_matches(self.thread_re, key)):
                info = None
            else:
                info = (thread, stack[0], frozenset(stack))
            self._stacks[key] = info
        return info

    def update(self, profile: ProfileData) -> int:
        """Fold in the samples added to `profile` since the last call; returns how many."""
        added = 0
        seen = self.seen
        for key, count in profile.counts.items():
            delta = count - seen.get(key, 0)
            if delta <= 0:
                continue
            seen[key] = count
            info = self._stack(key)
            if info is None:
                continue
            thread, leaf, frames = info
            added += delta
            self.thread_samples[thread] += delta
            self.self_counts[(None, leaf)] += delta
            self.self_counts[(thread, leaf)] += delta
            for frame in frames:
                self.total_counts[(None, frame)] += delta
                self.total_counts[(thread, frame)] += delta
        self.samples += added
        return added

    def snapshot(self, sort: str = "self", per_thread: bool = False, limit: int = 20) -> LiveSnapshot:
        rows = []
        for (group, frame), total in self.total_counts.items():
            if (group is not None) != per_thread:
                continue
            f = self.table[frame]
            rows.append(TopRow(f.name, f.kind, self.self_counts.get((group, frame), 0), total, group))
        if sort == "total":
            rows.sort(key=lambda r: (-r.total, -r.self, r.name, r.thread or ""))
        else:
            rows.sort(key=lambda r: (-r.self, -r.total, r.name, r.thread or ""))
        return LiveSnapshot(rows[:max(limit, 0)], self.samples, len(rows))


# ---- the terminal -----------------------------------------------------------------------------------

class KeyReader:
    """Single key presses from a terminal stdin (cbreak mode: no echo, no Enter; Ctrl-C still signals).
    Without a terminal it reads nothing."""

    def __init__(self) -> None:
        self.fd: Optional[int] = None
        self._saved = None

    def __enter__(self) -> KeyReader:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            return self
        if not os.isatty(fd):
            return self
        import termios
        import tty

        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self.fd = fd
        return self

    def keys(self) -> str:
        if self.fd is None:
            return ""
        out = ""
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 64)
            if not chunk:
                break
            out += chunk.decode("utf-8", errors="ignore")
        return out

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)


@dataclass
class ViewState:
    sort: str = "self"
    per_thread: bool = False
    quit: bool = False

    def handle(self, keys: str) -> bool:
        """Apply key presses; True when the view changed."""
        changed = False
        for key in keys:
            if key in ("q", "Q"):
                self.quit = True
            elif key in ("s", "S"):
                self.sort = "total" if self.sort == "self" else "self"
                changed = True
            elif key in ("t", "T"):
                self.per_thread = not self.per_thread
                changed = True
        return changed


@dataclass
class Rates:
    elapsed_s: float
    rate_hz: float          # samples per second over the last refresh
    lost: int
    lost_percent: float
    unknown_percent: float
    threads: int


def _rates(session: ProfileSession, live: LiveTop, elapsed: float, recent: float) -> Rates:
    c = session.counters()
    return Rates(elapsed, recent, c.lost, c.lost_percent, c.unknown_percent, len(live.thread_samples))


def _header(pid: int, rates: Rates, snap: LiveSnapshot, description: str) -> tuple[str, str]:
    """Two lines: what is profiled, and how well (rate, lost samples, unknown frames)."""
    return (f"pyprof top  pid {pid}  {rates.elapsed_s:.1f} s  {description}".rstrip(),
            f"samples {snap.samples:,} ({rates.rate_hz:.0f}/s)  "
            f"lost {rates.lost:,} ({rates.lost_percent:.2f}%)  "
            f"unknown frames {rates.unknown_percent:.2f}%  threads {rates.threads}")


def _render_rich(pid: int, rates: Rates, snap: LiveSnapshot, state: ViewState, description: str):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    first, second = _header(pid, rates, snap, description)
    head = Text(first, style="bold", no_wrap=True, overflow="ellipsis")
    quality = Text(second, no_wrap=True, overflow="ellipsis")
    keys = Text.assemble(
        ("sort: ", "dim"), (state.sort, "bold cyan"), ("  [s] self/total   ", "dim"),
        ("rows: ", "dim"), ("thread + function" if state.per_thread else "function", "bold cyan"),
        ("  [t] threads   [q] quit", "dim"))
    keys.no_wrap = True
    table = Table(box=None, pad_edge=False, expand=True, header_style="bold reverse")
    self_style = "bold" if state.sort == "self" else ""
    total_style = "bold" if state.sort == "total" else ""
    table.add_column("SELF%" + (" ▼" if state.sort == "self" else ""), justify="right", style=self_style,
                     no_wrap=True)
    table.add_column("TOTAL%" + (" ▼" if state.sort == "total" else ""), justify="right", style=total_style,
                     no_wrap=True)
    table.add_column("SELF", justify="right", no_wrap=True)
    table.add_column("TOTAL", justify="right", no_wrap=True)
    table.add_column("KIND", no_wrap=True)
    if state.per_thread:
        table.add_column("THREAD", no_wrap=True, overflow="ellipsis", max_width=28)
    table.add_column("FUNCTION", no_wrap=True, overflow="ellipsis", ratio=1)
    n = snap.samples
    for r in snap.rows:
        cells: list = [f"{r.percent(n, 'self'):.2f}%", f"{r.percent(n, 'total'):.2f}%", f"{r.self:,}",
                       f"{r.total:,}", r.kind.value]
        if state.per_thread:
            cells.append(Text(r.thread or ""))
        cells.append(Text(r.name))   # Text, not markup: "[interp]" would be read as a style tag
        table.add_row(*cells)
    parts = [head, quality, keys, table]
    if not snap.rows:
        parts.append(Text("waiting for samples…", style="dim"))
    return Group(*parts)


def _render_plain(pid: int, rates: Rates, snap: LiveSnapshot, state: ViewState, description: str) -> str:
    lines = [*_header(pid, rates, snap, description),
             f"sorted by {state.sort}, rows: {'thread + function' if state.per_thread else 'function'}",
             f"{'self%':>7} {'total%':>7} {'self':>8} {'total':>8}  {'kind':<11} function"]
    n = snap.samples
    for r in snap.rows:
        name = f"{r.thread}: {r.name}" if state.per_thread else r.name
        lines.append(f"{r.percent(n, 'self'):>6.2f}% {r.percent(n, 'total'):>6.2f}% {r.self:>8} "
                     f"{r.total:>8}  {r.kind.value:<11} {name}")
    return "\n".join(lines) + "\n\n"


@click.command("top")
@click.argument("pid", type=PID)
@click.option("-r", "--rate", type=click.IntRange(1, 10_000), default=99, show_default=True,
              help="samples per second per CPU (cpu-clock)")
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), default=None,
              help="stop after SECONDS (default: until q, Ctrl-C or the JVM exits)")
@click.option("-i", "--interval", type=click.FloatRange(min=0.2), default=REFRESH_S, show_default=True,
              help="seconds between refreshes")
@click.option("--sort", type=click.Choice(("self", "total")), default="self", show_default=True,
              help="initial order (key s toggles)")
@click.option("--per-thread", is_flag=True, help="start with one row per thread and function (key t toggles)")
@click.option("--thread", default=None, metavar="REGEX", help="only threads whose name matches")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=None,
              help="rows (default: what fits the terminal; 20 without one)")
@click.option("--no-tiers", is_flag=True, help="merge a method's JIT tiers into one row")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="also write the whole profile here when top ends (format from the extension)")
@click.option("--stack-bytes", type=click.IntRange(1024, 65536), default=32768, show_default=True,
              help="bytes of user stack copied per sample")
@allow_unsafe_kernel_option
@events_option
@event_tuning_options
@click.option("--type", "sample_type", default=None, metavar="TYPE",
              help="which event's samples the view shows (cpu, wall, offcpu, alloc, lock, or one of their "
                   "sample types; default: the first event)")
def top(pid: int, rate: int, duration: Optional[float], interval: float, sort: str, per_thread: bool,
        thread: Optional[str], limit: Optional[int], no_tiers: bool, output: Optional[str], stack_bytes: int,
        force: bool, events: str, wall_interval: Optional[float], alloc_interval: int, lock_threshold: float,
        sample_type: Optional[str]) -> None:
    """Live view of the JVM PID's hottest methods: self and total %, sample rate, lost and unknown %.

    \b
    Keys: s  sort by self / total      t  rows per function / per thread and function
          q  quit (Ctrl-C too)
    """
    if output is not None:
        output, out_fmt = resolve_output(output, None, pid)
    live_top = LiveTop(tiers=not no_tiers, thread=thread)   # validates --thread before any BPF work
    state = ViewState(sort=sort, per_thread=per_thread)
    event_list = parse_events_option(events)
    shown = event_of_type(sample_type, event_list)
    options = ProfileOptions(rate_hz=rate, stack_bytes=stack_bytes, force=force, events=event_list,
                             **event_tuning(wall_interval, alloc_interval, lock_threshold))
    require_privileges(pid)
    with StopSignals() as stop:
        session = ProfileSession.attach(pid, options)
        for note in session.jvm_notes:   # what this JVM cannot decode (stays above the live view)
            click.echo(f"pyprof: note: {note}", err=True)
        try:
            why = _loop(session, live_top, state, stop, duration, interval, limit, sys.stdout.isatty(), shown)
        finally:
            session.finish()
    written = write_reports(list(session.profiles.values()), output, out_fmt) if output is not None else []
    c = session.counters()
    err = click.get_text_stream("stderr")
    saved = f", profile written to {', '.join(written)}" if written else ""
    err.write(f"pyprof top: ended by {why}: {c.samples:,} samples, {c.lost:,} lost{saved}\n")


class _Screen:
    """Where the view goes: a full-screen rich Live on a terminal, a plain table every interval elsewhere."""

    def __init__(self, tty: bool) -> None:
        self.console = self.live = None
        if tty:
            from rich.console import Console
            from rich.live import Live

            self.console = Console()
            self.live = Live(console=self.console, screen=True, auto_refresh=False, transient=True)

    def __enter__(self) -> _Screen:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()


def _loop(session: ProfileSession, live_top: LiveTop, state: ViewState, stop: StopSignals,
          duration: Optional[float], interval: float, limit: Optional[int], tty: bool,
          shown: str = "cpu") -> str:
    started = time.monotonic()
    last = {"refresh": started, "samples": 0, "rate": 0.0}
    redraw = [True]
    description = session.description

    def step(screen: _Screen, reader: KeyReader) -> Optional[str]:
        session.step(100)
        if state.handle(reader.keys()):
            redraw[0] = True
        if state.quit:
            return "q"
        now = time.monotonic()
        if now - last["refresh"] >= interval:
            live_top.update(session.profiles[shown])
            last["rate"] = (session.samples - last["samples"]) / (now - last["refresh"])
            last["samples"], last["refresh"] = session.samples, now
            redraw[0] = True
            if screen.live is None:
                snap = live_top.snapshot(state.sort, state.per_thread, limit or 20)
                rates = _rates(session, live_top, now - started, last["rate"])
                sys.stdout.write(_render_plain(session.pid, rates, snap, state, description))
                sys.stdout.flush()
        if redraw[0] and screen.live is not None and screen.console is not None:
            redraw[0] = False
            rows = limit or max(screen.console.size.height - 5, 1)
            snap = live_top.snapshot(state.sort, state.per_thread, rows)
            rates = _rates(session, live_top, now - started, last["rate"])
            screen.live.update(_render_rich(session.pid, rates, snap, state, description), refresh=True)
        return None

    with _Screen(tty) as screen, KeyReader() as reader:
        return run_until_stopped(lambda: step(screen, reader), stop, duration=duration,
                                 target_alive=session.target_alive)


COMMANDS = [top]
