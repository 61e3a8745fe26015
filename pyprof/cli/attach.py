"""`pyprof attach PID` and `pyprof record -- java ...`: sample CPU with eBPF, write pprof or folded stacks.

Ctrl-C, SIGTERM and the JVM exiting all end the run the same way: drain, write the profile atomically
(temp file + rename), print the summary.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Optional

import click

from pyprof.cli.common import PID, emit_json
from pyprof.errors import MemoryReadError, PyprofError, UsageError
from pyprof.sampling.unwind import UnwindStats
from pyprof.session.session import ProfileOptions, ProfileSession

FORMATS = ("pprof", "collapsed", "flamegraph", "speedscope")   # the last two: pyprof.reporters
JVM_START_TIMEOUT = 60.0


def _common_options(f):
    f = click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
                     help="where to write the profile (default: pyprof-PID-TIME.pb.gz; the extension "
                          "picks the format: .pb.gz/.pprof, .txt/.folded, .html, .speedscope.json)")(f)
    f = click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                     help="output format (default: from the file name, else pprof)")(f)
    f = click.option("-r", "--rate", type=click.IntRange(1, 10_000), default=99, show_default=True,
                     help="samples per second per CPU (cpu-clock)")(f)
    f = click.option("--stack-bytes", type=click.IntRange(1024, 65536), default=32768, show_default=True,
                     help="bytes of user stack copied per sample")(f)
    f = click.option("--json", "as_json", is_flag=True, help="print the summary as JSON on stdout")(f)
    f = click.option("--force", is_flag=True,
                     help="sample even on kernels with known BPF stack-copy problems (5.19-6.1)")(f)
    f = click.option("--no-progress", is_flag=True, help="no progress line")(f)
    return f


def resolve_output(output: Optional[str], fmt: Optional[str], pid: int) -> tuple[str, str]:
    from pyprof.output import format_for_path

    if output is None:
        fmt = fmt or "pprof"
        ext = {"pprof": ".pb.gz", "flamegraph": ".html", "speedscope": ".speedscope.json"}.get(fmt, ".txt")
        output = f"pyprof-{pid}-{time.strftime('%Y%m%d-%H%M%S')}{ext}"
    elif fmt is None:
        fmt = format_for_path(output) or "pprof"
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise UsageError(f"cannot write {output}: directory {directory} is not writable")
    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r} is not written by attach/record (use pyprof report)")
    return output, fmt


class _Stop:
    """SIGTERM (and SIGINT) set a flag; the loop ends at its next step and the profile is written."""

    def __init__(self) -> None:
        self.reason = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _progress(enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.live import Live

    return Live(console=Console(stderr=True), refresh_per_second=4, transient=True)


def run_session(session: ProfileSession, duration: Optional[float], stop: _Stop, show_progress: bool,
                child: Optional[subprocess.Popen] = None) -> str:
    """Sample until the duration, a signal, or the target's exit. Returns why it ended."""
    deadline = None if duration is None else time.monotonic() + duration
    live = _progress(show_progress)
    started = time.monotonic()
    last_check = 0.0
    why = "duration"
    if live is not None:
        live.start()
    try:
        while True:
            if stop.reason:
                why = stop.reason
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            session.step(100)
            now = time.monotonic()
            if now - last_check > 0.25:
                last_check = now
                if (child is not None and child.poll() is not None) or not session.target_alive():
                    why = "target exited"
                    break
                if live is not None:
                    live.update(f"[bold]pyprof[/] {session.pid}: {now - started:5.1f} s, "
                                f"{session.stats.samples} samples, {session.sampler_lost()} lost")
    finally:
        if live is not None:
            live.stop()
    return why


def save_profile(profile, output: str, fmt: str) -> None:
    """Write a session's profile in any format attach, record and top accept (atomically)."""
    from pyprof.output import write_profile
    from pyprof.reporters import SESSION_FORMATS, write_report

    if fmt in SESSION_FORMATS:
        write_report(profile, output, fmt)
    else:
        write_profile(profile, output, fmt)


def _unwind_summary(u: Optional[UnwindStats]) -> dict[str, Any]:
    """How complete the stacks are: what users need to trust the profile (and to report a bug)."""
    if u is None:
        return {}
    complete = 100.0 * u.java_reached_root / u.java_samples if u.java_samples else None
    return {"java_samples": u.java_samples,
            "java_stacks_complete_percent": round(complete, 2) if complete is not None else None,
            "anchor_used": u.anchor_used, "deoptimized_frames": u.deoptimized_frames,
            "live_stack_reads": u.live_reads, "unknown_frame_reasons": dict(u.unknown_frames)}


def write_and_summarize(session: ProfileSession, output: str, fmt: str, as_json: bool, why: str) -> None:

    profile = session.finish()
    save_profile(profile, output, fmt)
    s = session.stats
    top = [{"function": name, "samples": n, "percent": round(100.0 * n / max(s.samples, 1), 2)}
           for name, n in s.self_counts.most_common(10)]
    summary = {
        "output": output, "format": fmt, "ended": why, "samples": s.samples, "lost": s.lost,
        "truncated_stacks": s.truncated, "unknown_frames": s.unknown_frames, "frames": s.frames,
        "unknown_frames_percent": round(s.unknown_pct, 3), "duration_s": round(profile.duration_ns / 1e9, 3),
        "first_sample_s": round(s.first_sample_s, 3) if s.first_sample_s is not None else None,
        "code_cache_events": s.code_events, "code_cache_events_lost": s.code_events_lost,
        "no_user_regs": s.no_user_regs, "unwind": _unwind_summary(s.unwind), "top_self": top,
        "startup_s": round(s.startup_s, 3), "startup_cpu_s": round(s.startup_cpu_s, 3),
        "sampling_cpu_s": round(s.sampling_cpu_s, 3),
        "cpu_us_per_sample": round(1e6 * s.sampling_cpu_s / s.samples, 1) if s.samples else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if session.agent is not None:
        summary["agent"] = session.agent.summary()
    if as_json:
        emit_json(summary)
        return
    err = click.get_text_stream("stderr")
    err.write(f"pyprof: wrote {output} ({fmt}); ended by {why}\n")
    err.write(f"  {s.samples} samples in {summary['duration_s']} s, {s.lost} lost, "
              f"{s.truncated} truncated stacks, unknown frames {s.unknown_pct:.2f}% "
              f"({s.unknown_frames}/{s.frames})\n")
    complete = summary["unwind"].get("java_stacks_complete_percent")
    if complete is not None:
        err.write(f"  {complete:.2f}% of Java-thread stacks reach the thread's root frame\n")
    if session.agent is not None:
        a = summary["agent"]
        err.write(f"  GC: {a['gc_pauses']} pauses, {a['gc_pause_ms']} ms (samples labelled pause=gc)\n")
    if top:
        err.write("  top self:\n")
        for row in top:
            err.write(f"    {row['percent']:6.2f}%  {row['samples']:>7}  {row['function']}\n")


def _announce(session: ProfileSession, duration: Optional[float]) -> None:
    """One line on stderr when sampling has begun (scripts may wait for it before sending signals)."""
    jvm = session.jvm.description if session.jvm is not None else "starting JVM"
    until = f"for {duration:g} s" if duration else "until Ctrl-C or the JVM exits"
    click.echo(f"pyprof: sampling {session.pid} ({jvm}) at {session.options.rate_hz} Hz {until}", err=True)
    for note in session.jvm.notes if session.jvm is not None else ():   # what this JVM cannot decode
        click.echo(f"pyprof: note: {note}", err=True)
    if session.live is not None and session.live.degraded:
        click.echo(f"pyprof: note: no live code-cache probes ({session.live.degraded}); new JIT code is "
                   "found through the JVM's segment map instead", err=True)


@click.command("attach")
@click.argument("pid", type=PID)
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), default=None,
              help="seconds to sample (default: until Ctrl-C or the JVM exits)")
@click.option("--agent", "use_agent", is_flag=True,
              help="also label samples with the optional Java agent's data (Java thread id and state, GC "
                   "and safepoint pauses); loads the agent into the JVM if it is not running")
@_common_options
def attach(pid: int, duration: Optional[float], use_agent: bool, output: Optional[str], fmt: Optional[str],
           rate: int, stack_bytes: int, as_json: bool, force: bool, no_progress: bool) -> None:
    """Profile the running JVM PID: no agent needed, no JVM flags, the target never stops."""
    output, fmt = resolve_output(output, fmt, pid)
    session = ProfileSession(pid, ProfileOptions(rate_hz=rate, stack_bytes=stack_bytes, force=force,
                                                 agent=use_agent))
    with _Stop() as stop:
        session.start()
        _announce(session, duration)
        why = run_session(session, duration, stop, not no_progress and not as_json)
        write_and_summarize(session, output, fmt, as_json, why)


@click.command("record", context_settings={"ignore_unknown_options": True})
@click.option("-d", "--duration", type=click.FloatRange(min=0.1), default=None,
              help="stop sampling after SECONDS (the JVM keeps running)")
@_common_options
@click.option("--agent", "java_agent", is_flag=True,
              help="start the JVM with the pyprof Java agent (-javaagent; see `pyprof agent --help`)")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def record(duration: Optional[float], output: Optional[str], fmt: Optional[str], rate: int,
           stack_bytes: int, as_json: bool, force: bool, no_progress: bool, java_agent: bool,
           command: tuple[str, ...]) -> None:
    """Start `java ARGS...` and profile it from its first instruction; exits with the JVM's exit code.

    \b
    Example: pyprof record -o app.pb.gz -- java -jar app.jar
    """
    if not command:
        raise UsageError("record needs a command: pyprof record [options] -- java ARGS...")
    if shutil.which(command[0]) is None:
        raise UsageError(f"cannot start {command[0]}: no such command")
    if java_agent:
        from pyprof.agent.jar import agent_command

        command = agent_command(command)
    session = ProfileSession(0, ProfileOptions(rate_hz=rate, stack_bytes=stack_bytes, force=force))
    with _Stop() as stop:
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
            _wait_for_jvm(session, child, stop)
            why = run_session(session, duration, stop, not no_progress and not as_json, child=child)
        except BaseException:
            if child.poll() is None:
                child.kill()
            session.finish()
            raise
        write_and_summarize(session, output, fmt, as_json, why)
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


def _wait_for_jvm(session: ProfileSession, child: subprocess.Popen, stop: _Stop) -> None:
    """Buffer samples while the JVM boots; attach the code-cache map once VMStructs are readable."""
    deadline = time.monotonic() + JVM_START_TIMEOUT
    last_error: Optional[Exception] = None
    while time.monotonic() < deadline and not stop.reason:
        if child.poll() is not None:
            return   # exited before it was a JVM: the samples still make a (native) profile
        try:
            session.attach_jvm()
            return
        except (PyprofError, MemoryReadError) as e:   # still booting: VMStructs or the code cache not ready
            last_error = e
        session.buffer_step(10)
    if not stop.reason:
        raise PyprofError(f"process {child.pid} did not become a readable JVM in {JVM_START_TIMEOUT:.0f} s"
                          f" ({last_error})")


COMMANDS = [attach, record]
