"""`pyprof attach PID` and `pyprof record -- java ...`: sample CPU with eBPF, write pprof or folded stacks.

Ctrl-C, SIGTERM and the JVM exiting all end the run the same way: drain, write the profile atomically
(temp file + rename), print the summary.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from typing import Any, Optional

import click

from pyprof.cli.common import (
    PID,
    allow_unsafe_kernel_option,
    emit_json,
    event_tuning,
    event_tuning_options,
    events_option,
    parse_events_option,
    require_privileges,
    resolve_output,
)
from pyprof.errors import MemoryReadError, PyprofError, UsageError
from pyprof.kernel import bpf_cache
from pyprof.lru import cache_stats
from pyprof.model import ProfileData
from pyprof.output import FILE_FORMAT_NAMES
from pyprof.reporters import write_reports
from pyprof.sampling.unwind import UnwindStats
from pyprof.session.runloop import DURATION, StopSignals, run_until_stopped
from pyprof.session.session import ProfileOptions, ProfileSession
from pyprof.symbols.kernel import KernelSymbols

JVM_READY = "jvm ready"

JVM_START_TIMEOUT = 60.0
STEP_MS = 100


def _common_options(f):
    f = click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
                     help="where to write the profile (default: pyprof-PID-TIME.pb.gz; the extension "
                          "picks the format: .pb.gz/.pprof, .txt/.folded, .html, .speedscope.json)")(f)
    f = click.option("--format", "fmt", type=click.Choice(FILE_FORMAT_NAMES), default=None,
                     help="output format (default: from the file name, else pprof)")(f)
    f = click.option("-r", "--rate", type=click.IntRange(1, 10_000), default=99, show_default=True,
                     help="samples per second per CPU (cpu-clock)")(f)
    f = click.option("--stack-bytes", type=click.IntRange(1024, 65536), default=32768, show_default=True,
                     help="bytes of user stack copied per sample")(f)
    f = click.option("--json", "as_json", is_flag=True, help="print the summary as JSON on stdout")(f)
    f = allow_unsafe_kernel_option(f)
    f = events_option(f)
    f = event_tuning_options(f)
    f = click.option("--no-progress", is_flag=True, help="no progress line")(f)
    f = click.option("-v", "--verbose", is_flag=True,
                     help="also report the caches (entries, hits, misses, evictions) in the summary")(f)
    return f


class _Progress:
    """A one-line progress display on a terminal's stderr (nothing elsewhere)."""

    def __init__(self, session: ProfileSession, enabled: bool) -> None:
        self.session = session
        self.live = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=True)

    def __enter__(self) -> _Progress:
        if self.live is not None:
            self.live.start()
        return self

    def update(self, elapsed_s: float) -> None:
        if self.live is not None:
            c = self.session.counters()
            self.live.update(f"[bold]pyprof[/] {self.session.pid}: {elapsed_s:5.1f} s, "
                             f"{c.samples} samples, {c.lost} lost")

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()


def sample_until_stopped(session: ProfileSession, stop: StopSignals, duration: Optional[float],
                         show_progress: bool, child: Optional[subprocess.Popen] = None) -> str:
    """Sample until the duration, a signal, or the target's exit. Returns why it ended."""
    def alive() -> bool:
        return (child is None or child.poll() is None) and session.target_alive()

    def step() -> None:
        session.step(STEP_MS)

    with _Progress(session, show_progress) as progress:
        return run_until_stopped(step, stop, duration=duration, target_alive=alive, on_check=progress.update)


def _unwind_summary(u: UnwindStats) -> dict[str, Any]:
    """How complete the stacks are: what users need to trust the profile (and to report a bug)."""
    complete = 100.0 * u.java_reached_root / u.java_samples if u.java_samples else None
    percent = round(complete, 2) if complete is not None else None
    return {**u.as_dict(), "java_stacks_complete_percent": percent}


def _cache_summary() -> list[dict[str, Any]]:
    return [{"cache": c.name, "entries": c.size, "capacity": c.capacity, "hits": c.hits, "misses": c.misses,
             "evictions": c.evictions, "hit_percent": round(c.hit_percent, 2)} for c in cache_stats()]


def summarize(session: ProfileSession, profile: ProfileData, output: str, fmt: str, why: str,
              verbose: bool = False) -> dict[str, Any]:
    """The run's summary (what `--json` prints): counters, completeness, timings, top self functions."""
    c, t = session.counters(), session.timings
    events, events_lost = session.code_events()
    total = c.samples if session.plan.events == ("cpu",) else profile.total_samples
    top = [{"function": name, "samples": n, "percent": round(100.0 * n / max(total, 1), 2)}
           for name, n in profile.self_counts().most_common(10)]
    summary: dict[str, Any] = {
        "output": output, "format": fmt, "ended": why, "samples": c.samples, "lost": c.lost,
        "truncated_stacks": c.truncated, "unknown_frames": c.unknown_frames, "frames": c.frames,
        "unknown_frames_percent": round(c.unknown_percent, 3),
        "duration_s": round(profile.duration_ns / 1e9, 3),
        "first_sample_s": round(t.first_sample_s, 3) if t.first_sample_s is not None else None,
        "code_cache_events": events, "code_cache_events_lost": events_lost,
        "no_user_regs": c.no_user_regs, "unwind": _unwind_summary(session.unwind_stats), "top_self": top,
        "early_samples_unwound": session.early.unwound,
        "startup_s": round(t.startup_s, 3), "startup_cpu_s": round(t.startup_cpu_s, 3),
        "sampling_cpu_s": round(t.sampling_cpu_s, 3),
        "cpu_us_per_sample": round(1e6 * t.sampling_cpu_s / c.samples, 1) if c.samples else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "startup_rss_mib": round(t.startup_rss_mib, 1),
        # the process's own start (interpreter, imports) before the session's start-up
        "before_startup_s": round(t.before_session_s, 3),
        "bpf_cache": bpf_cache.STATS.as_dict(),   # compiled (misses) or loaded from the cache (hits)
    }
    if session.plan.events != ("cpu",):
        summary["events"] = {event: {"samples": p.total_samples,
                                     p.sample_types[1].type: sum(p.weight(k) for k in p.counts)}
                             for event, p in session.profiles.items()}
        summary["event_counters"] = session.event_counters()
    if session.agent is not None:
        summary["agent"] = session.agent.summary()
    if session.target is not None:   # virtual-thread samples labelled #<tid>: the name was unreadable
        summary["virtual_thread_names_unread"] = session.target.virtual_names.unread
    if verbose:
        summary["caches"] = _cache_summary()
    return summary


def write_and_summarize(session: ProfileSession, output: str, fmt: str, as_json: bool, why: str,
                        verbose: bool = False) -> None:
    profile = session.finish()
    written = write_reports(list(session.profiles.values()), output, fmt)
    summary = summarize(session, profile, output, fmt, why, verbose)
    summary["outputs"] = written   # folded stacks of several events: one file per event
    if as_json:
        emit_json(summary)
        return
    c = session.counters()
    err = click.get_text_stream("stderr")
    err.write(f"pyprof: wrote {', '.join(written)} ({fmt}); ended by {why}\n")
    err.write(f"  {c.samples} samples in {summary['duration_s']} s, {c.lost} lost, "
              f"{c.truncated} truncated stacks, unknown frames {c.unknown_percent:.2f}% "
              f"({c.unknown_frames}/{c.frames})\n")
    for event, totals in summary.get("events", {}).items():
        err.write(f"  {event}: " + ", ".join(f"{k} {v:,}" for k, v in totals.items()) + "\n")
    if summary.get("event_counters"):
        err.write("  " + ", ".join(f"{k} {v:,}" for k, v in summary["event_counters"].items()) + "\n")
    complete = summary["unwind"].get("java_stacks_complete_percent")
    if complete is not None:
        err.write(f"  {complete:.2f}% of Java-thread stacks reach the thread's root frame\n")
    if session.agent is not None:
        a = summary["agent"]
        err.write(f"  GC: {a['gc_pauses']} pauses, {a['gc_pause_ms']} ms (samples labelled pause=gc)\n")
    if summary["top_self"]:
        err.write("  top self:\n")
        for row in summary["top_self"]:
            err.write(f"    {row['percent']:6.2f}%  {row['samples']:>7}  {row['function']}\n")
    if verbose:
        err.write("  caches (entries/capacity, hit %, evictions):\n")
        for row in summary["caches"]:
            err.write(f"    {row['cache']:<32} {row['entries']:>8}/{row['capacity']:<8} "
                      f"{row['hit_percent']:6.2f}%  {row['evictions']}\n")


def _announce(session: ProfileSession, duration: Optional[float]) -> None:
    """One line on stderr when sampling has begun (scripts may wait for it before sending signals)."""
    until = f"for {duration:g} s" if duration else "until Ctrl-C or the JVM exits"
    events = "" if session.plan.events == ("cpu",) else f" ({','.join(session.plan.events)})"
    click.echo(f"pyprof: sampling {session.pid} ({session.description}) at {session.options.rate_hz} Hz"
               f"{events} {until}", err=True)
    for note in session.jvm_notes:   # what this JVM cannot decode
        click.echo(f"pyprof: note: {note}", err=True)
    if session.degraded_code_map:
        click.echo(f"pyprof: note: no live code-cache probes ({session.degraded_code_map}); new JIT code is "
                   "found through the JVM's segment map instead", err=True)
    if not KernelSymbols.shared().available:
        click.echo("pyprof: note: kernel frames are not named: /proc/kallsyms shows this process no "
                   "addresses (needs CAP_SYSLOG, and kernel.kptr_restrict below 2)", err=True)


@click.command("attach")
@click.argument("pid", type=PID)
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), default=None,
              help="seconds to sample (default: until Ctrl-C or the JVM exits)")
@click.option("--agent", "use_agent", is_flag=True,
              help="also label samples with the optional Java agent's data (Java thread id and state, GC "
                   "and safepoint pauses); loads the agent into the JVM if it is not running")
@_common_options
def attach(pid: int, duration: Optional[float], use_agent: bool, output: Optional[str], fmt: Optional[str],
           rate: int, stack_bytes: int, as_json: bool, force: bool, events: str,
           wall_interval: Optional[float], alloc_interval: int, lock_threshold: float, no_progress: bool,
           verbose: bool) -> None:
    """Profile the running JVM PID: no agent needed, no JVM flags, the target never stops."""
    output, fmt = resolve_output(output, fmt, pid)
    options = ProfileOptions(rate_hz=rate, stack_bytes=stack_bytes, force=force, agent=use_agent,
                             events=parse_events_option(events),
                             **event_tuning(wall_interval, alloc_interval, lock_threshold))
    require_privileges(pid)
    with StopSignals() as stop:
        session = ProfileSession.attach(pid, options)
        _announce(session, duration)
        why = sample_until_stopped(session, stop, duration, not no_progress and not as_json)
        write_and_summarize(session, output, fmt, as_json, why, verbose)


@click.command("record", context_settings={"ignore_unknown_options": True})
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), default=None,
              help="stop sampling after SECONDS (the JVM keeps running)")
@_common_options
@click.option("--agent", "java_agent", is_flag=True,
              help="start the JVM with the pyprof Java agent (-javaagent; see `pyprof agent --help`)")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def record(duration: Optional[float], output: Optional[str], fmt: Optional[str], rate: int,
           stack_bytes: int, as_json: bool, force: bool, events: str, wall_interval: Optional[float],
           alloc_interval: int, lock_threshold: float, no_progress: bool, verbose: bool, java_agent: bool,
           command: tuple[str, ...]) -> None:
    """Start `java ARGS...` and profile it from its first instruction; exits with the JVM's exit code.

    \b
    Example: pyprof record -o app.pb.gz -- java -jar app.jar
    """
    if not command:
        raise UsageError("record needs a command: pyprof record [options] -- java ARGS...")
    options = ProfileOptions(rate_hz=rate, stack_bytes=stack_bytes, force=force,
                             events=parse_events_option(events),
                             **event_tuning(wall_interval, alloc_interval, lock_threshold))
    if shutil.which(command[0]) is None:
        raise UsageError(f"cannot start {command[0]}: no such command")
    if java_agent:
        from pyprof.agent.jar import agent_command

        command = agent_command(command)
    require_privileges()
    session = ProfileSession(0, options)
    with StopSignals() as stop:
        # The sampler is compiled and attached *before* the JVM starts, so its first instruction is seen.
        session.start_sampler()
        try:
            child, gate = _spawn_gated(command)
        except BaseException:
            session.finish()
            raise
        try:
            output, fmt = resolve_output(output, fmt, child.pid)
            session.retarget(child.pid)
            os.write(gate, b"go\n")
            os.close(gate)
            why = _open_when_ready(session, child, stop)
            if why == JVM_READY:
                why = sample_until_stopped(session, stop, duration, not no_progress and not as_json, child)
        except BaseException:
            if child.poll() is None:
                child.kill()
            session.finish()
            raise
        write_and_summarize(session, output, fmt, as_json, why, verbose)
    code = child.wait()
    raise click.exceptions.Exit(code if code >= 0 else 128 - code)


def _spawn_gated(command: tuple[str, ...]) -> tuple[subprocess.Popen, int]:
    """Start `command` held at a gate: a shell that waits for a line on a pipe, then execs the command
    under its own pid. Returns the child and the gate's write end."""
    read_end, write_end = os.pipe()
    script = 'read _ <&3; exec 3<&-; exec "$@"'   # POSIX sh redirects single-digit fds only: use fd 3
    try:
        child = subprocess.Popen(["/bin/sh", "-c", script, "pyprof-record", *command], pass_fds=(3,),
                                 preexec_fn=lambda: os.dup2(read_end, 3))
    except OSError as e:
        os.close(write_end)
        raise UsageError(f"cannot start {command[0]}: {e.strerror}") from e
    finally:
        os.close(read_end)
    return child, write_end


def _open_when_ready(session: ProfileSession, child: subprocess.Popen, stop: StopSignals) -> str:
    """Keep samples while the JVM boots; open the target once VMStructs and the code cache are readable.
    Returns JVM_READY, or why the run ended first (a signal, the process exited before it was a JVM)."""
    last_error: list[Exception] = []

    def try_open() -> Optional[str]:
        try:
            session.open_target()
            return JVM_READY
        except (PyprofError, MemoryReadError) as e:   # still booting: VMStructs or the code cache not ready
            last_error[:] = [e]
        session.step(10)
        return None

    why = run_until_stopped(try_open, stop, duration=JVM_START_TIMEOUT,
                            target_alive=lambda: child.poll() is None)
    if why == DURATION:
        raise PyprofError(f"process {child.pid} did not become a readable JVM in {JVM_START_TIMEOUT:.0f} s"
                          f" ({last_error[0] if last_error else 'no error'})")
    return why


COMMANDS = [attach, record]
