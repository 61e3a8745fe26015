"""`pyprof doctor [PID]`: one line per requirement, ok or what is missing and the exact fix."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional

import click

from pyprof.cli.common import PID, emit_json
from pyprof.errors import MemoryReadError, PyprofError


@dataclass
class Line:
    name: str
    status: str       # "ok", "missing", "warn"
    detail: str
    fix: str = ""
    required: bool = True


def system_lines() -> list[Line]:
    from pyprof.kernel import features

    out = []
    for check in features.run_all():
        required = getattr(check, "required", True)
        out.append(Line(check.name, "ok" if check.ok else ("missing" if required else "warn"),
                        check.detail, check.fix, required))
    return out


def capability_lines() -> list[Line]:
    """One line per capability pyprof uses (least privilege: docs/deploy/README.md)."""
    from pyprof.kernel import features

    return [Line(check.name, "ok" if check.ok else ("missing" if check.required else "warn"), check.detail,
                 check.fix, check.required) for check in features.capability_checks()]


# libjvm's .symtab functions each event's uprobes need (issue #14's hook points): name -> mangled prefix
EVENT_SYMBOLS: dict[str, dict[str, str]] = {
    "alloc": {"AllocTracer::send_allocation_in_new_tlab": "_ZN11AllocTracer27send_allocation_in_new_tlab",
              "AllocTracer::send_allocation_outside_tlab": "_ZN11AllocTracer28send_allocation_outside_tlab"},
    "lock": {"ObjectMonitor::enter": "_ZN13ObjectMonitor5enter", "Parker::park": "_ZN6Parker4park"},
}


def event_lines() -> list[Line]:
    """Which events (-e) this kernel serves: cpu (the perf-event line above), wall and offcpu."""
    from pyprof.kernel import features
    from pyprof.kernel.requirements import SCHED_SWITCH_PREV_STATE, upstream_version

    missing = features.raw_tracepoints_present(("sched_switch", "sys_exit"))
    if missing:
        return [Line("event wall/offcpu", "warn", f"no raw tracepoint {', '.join(missing)}",
                     "-e wall/offcpu need the sched_switch and sys_exit tracepoints", required=False)]
    if upstream_version()[0] < SCHED_SWITCH_PREV_STATE:
        return [Line("event wall/offcpu", "warn", "sched_switch, sys_exit; before 5.18 sched_switch has no "
                     "prev_state: a thread rescheduled on its way back to user mode is counted, not timed",
                     "", required=False)]
    return [Line("event wall/offcpu", "ok", "raw tracepoints sched_switch, sys_exit", required=False)]


def jvm_event_lines(jvm) -> list[Line]:
    """alloc and lock: their libjvm symbols (uprobes), and whether this pyprof has their programs."""
    from pyprof.sampling.programs import available_events

    lines = []
    for event, symbols in EVENT_SYMBOLS.items():
        absent = [name for name, prefix in symbols.items() if jvm.symbols is None or next(
            jvm.symbols.find(lambda symbol, prefix=prefix: symbol.startswith(prefix)), None) is None]
        if absent:
            lines.append(Line(f"event {event}", "warn", f"libjvm lacks {', '.join(absent)}",
                              "a libjvm with its .symtab (not stripped)", required=False))
        elif event not in available_events():
            lines.append(Line(f"event {event}", "warn", f"libjvm has {', '.join(symbols)}; this pyprof has "
                              f"no {event} program", "", required=False))
        else:
            lines.append(Line(f"event {event}", "ok", f"libjvm has {', '.join(symbols)}", required=False))
    return lines


def jvm_lines(pid: int) -> list[Line]:
    from pyprof.hotspot.codecache import CodeCache
    from pyprof.hotspot.jvm import TESTED_MAJORS, HotSpotJvm
    from pyprof.hotspot.threads import JavaThreads
    from pyprof.jvmtools.jcmd import find_jcmd

    lines: list[Line] = []
    try:
        jvm = HotSpotJvm.open(pid)
    except PyprofError as e:
        lines.append(Line(f"process {pid}", "missing", str(e), _jvm_fix(e)))
        return lines
    with jvm:
        tested = jvm.major in TESTED_MAJORS
        lines.append(Line("HotSpot JVM", "ok" if tested else "warn", jvm.description,
                          "" if tested else f"JDK {jvm.major} is untested: pyprof is tested on "
                          f"{', '.join(map(str, TESTED_MAJORS))}", required=False))
        for feature, loss in jvm.layout.missing_features.items():
            lines.append(Line(feature, "warn", loss, "", required=False))
        lines.append(Line("libjvm", "ok", f"{jvm.libjvm_path} (read via {jvm.libjvm_open_path})",
                          required=False))
        lines.append(Line("VMStructs", "ok", f"{len(jvm.vm.fields)} fields, {len(jvm.vm.types)} types"))
        try:
            snap = CodeCache(jvm).walk(resolve_methods=False)
            lines.append(Line("code cache (attach-free)", "ok",
                              f"{len(snap.heaps)} heaps, {len(snap.nmethods)} nmethods, "
                              f"{snap.stats.invalid_total} unreadable blobs, "
                              f"{snap.stats.seconds * 1000:.0f} ms"))
        except MemoryReadError as e:
            lines.append(Line("code cache (attach-free)", "missing", str(e),
                              "use --source jcmd (needs jcmd of the same JDK)"))
        lines.append(_live_updates_line(jvm, jvm.nmethod_probes()))
        threads = JavaThreads(jvm)
        threads.refresh()
        lines.append(Line("Java threads", "ok" if threads.tids() else "warn",
                          f"{len(threads.tids())} JavaThreads readable", required=False))
        states = jvm.layout.has("JavaThread._thread_state") and jvm.layout.has("OSThread._state")
        lines.append(Line("thread states (wall)", "ok" if states else "warn",
                          "JavaThread::_thread_state, OSThread::_state" if states else
                          "VMStructs lacks JavaThread::_thread_state or OSThread::_state",
                          "" if states else "wall samples get no thread_state label", required=False))
        lines += jvm_event_lines(jvm)
    try:
        jcmd = find_jcmd(pid)
        lines.append(Line("jcmd fallback", "ok", jcmd, required=False))
    except PyprofError as e:
        lines.append(Line("jcmd fallback", "warn", str(e), "optional: install the full JDK", required=False))
    return lines


def _live_updates_line(jvm, probes: dict) -> Line:
    from pyprof.kernel.features import uprobes_permitted

    if "register" not in probes or "free" not in probes:
        detail = "libjvm has no .symtab (stripped): no register_nmethod symbols"
    elif not uprobes_permitted():
        detail = "the kernel refuses uprobes to this process (CAP_SYS_ADMIN on this kernel)"
    else:
        return Line("live code-cache updates", "ok", f"uprobes on {sum(len(v) for v in probes.values())} "
                    f"libjvm symbols ({jvm.gc_name} GC)", required=False)
    return Line("live code-cache updates", "warn", detail,
                "optional: new JIT code is found through the segment map", required=False)


def _jvm_fix(error: PyprofError) -> str:
    name = type(error).__name__
    return {
        "NoSuchProcess": "check the pid (`jps -l` or `pgrep java`)",
        "NotAJvm": "point pyprof at the java process itself",
        "PermissionDenied": "run as root, or grant the capability named (docs/deploy/README.md)",
        "UnsupportedJvm": "pyprof reads HotSpot JDK 11 and later (tested on 11, 17, 21 and 25)",
    }.get(name, "")


@click.command("doctor")
@click.argument("pid", type=PID, required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def doctor(pid: Optional[int], as_json: bool) -> None:
    """Check what pyprof needs on this machine (and for JVM PID), with the fix for anything missing.

    A kernel older than the minimum is one line and exit 7: nothing else matters until it changes."""
    from pyprof.kernel import features

    features.require_minimum_kernel()
    lines = system_lines()
    lines += capability_lines()
    lines += event_lines()
    if pid is not None:
        lines += jvm_lines(pid)
    failed = [line for line in lines if line.status == "missing" and line.required]
    if as_json:
        emit_json({"ok": not failed, "checks": [asdict(line) for line in lines]})
    else:
        for line in lines:
            mark = {"ok": "ok     ", "warn": "warn   ", "missing": "MISSING"}[line.status]
            click.echo(f"{mark} {line.name:<26} {line.detail}")
            if line.status != "ok" and line.fix:
                click.echo(f"{'':8}{'':26} fix: {line.fix}")
        if not os.environ.get("PYPROF_QUIET"):
            verdict = "ready: `pyprof attach PID` can run" if not failed else \
                f"not ready: {len(failed)} requirement(s) missing"
            click.echo(f"\n{verdict}")
    if failed:
        raise click.exceptions.Exit(1)
