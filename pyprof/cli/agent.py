"""`pyprof agent load|status|unload|threads|gc|compiles PID`: the optional Java agent (java-helper/).

pyprof works without it; see docs/agent.md for what it adds and how it is secured.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

import click

from pyprof.cli.common import PID, emit_json
from pyprof.errors import NoSuchProcess, SourceUnavailable
from pyprof.procfs.process import is_running
from pyprof.session.runloop import TARGET_EXITED, StopSignals, run_until_stopped

json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.group()
def agent() -> None:
    """The optional in-JVM helper: JIT events, thread ids, GC/safepoint pauses (py4j, 127.0.0.1 + token)."""


def _stamp(epoch_ns: int) -> str:
    seconds = epoch_ns / 1e9
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}"


@agent.command("load")
@click.argument("pid", type=PID)
@json_option
@click.option("--no-jfr", is_flag=True, help="no JFR stream (no JIT events, no pauses)")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="seconds to wait for the agent")
def load(pid: int, as_json: bool, no_jfr: bool, timeout: float) -> None:
    """Load the agent into the running JVM PID (jcmd JVMTI.agent_load); a no-op when it runs already."""
    from pyprof.agent.control import load_agent

    result = load_agent(pid, options="jfr=false" if no_jfr else "", timeout=timeout)
    if as_json:
        emit_json({"pid": pid, "already_running": result.already_running, "jar": result.jar,
                   "notes": result.notes, "status": result.status})
        return
    s = result.status
    verb = "already runs in" if result.already_running else "loaded into"
    click.echo(f"pyprof agent {verb} {pid} (JDK {s.get('java_version')}, 127.0.0.1:{s.get('port')}, "
               f"JFR: {_jfr_summary(s)})")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


def _jfr_summary(status: dict[str, Any]) -> str:
    jfr = status.get("jfr") or {}
    enabled = jfr.get("enabled") or []
    if not enabled:
        return f"off ({jfr.get('error') or 'unavailable'})"
    flush = "flushed when polled" if jfr.get("flush_on_demand") else "flushed once a second"
    return f"{len(enabled)} event types, {flush}"


@agent.command("status")
@click.argument("pid", type=PID)
@json_option
def status(pid: int, as_json: bool) -> None:
    """Whether the agent runs in PID, its port, threads and JFR state; exit 1 when it does not run."""
    from pyprof.agent.control import running_status

    s = running_status(pid)
    if as_json:
        emit_json({"pid": pid, "running": s is not None, "status": s})
    elif s is None:
        click.echo(f"no pyprof agent runs in {pid}")
    else:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.get("started_ms", 0) / 1000))
        how = "loaded into the running JVM" if s.get("dynamic") else "-javaagent at start"
        click.echo(f"pyprof agent {s.get('version')} runs in {pid} since {started} ({how})")
        click.echo(f"  JDK {s.get('java_version')}, gateway 127.0.0.1:{s.get('port')} (token required)")
        click.echo(f"  threads: {', '.join(t['name'] for t in s.get('threads', []))}")
        jfr = s.get("jfr") or {}
        click.echo(f"  JFR: {_jfr_summary(s)}; {jfr.get('jit_events', 0)} JIT events, "
                   f"{jfr.get('pauses', 0)} pauses seen")
        if jfr.get("note"):
            click.echo(f"  note: {jfr['note']}")
        if jfr.get("error"):
            click.echo(f"  JFR error: {jfr['error']}")
    if s is None:
        raise click.exceptions.Exit(1)


@agent.command("unload")
@click.argument("pid", type=PID)
@click.option("--timeout", type=float, default=30.0, show_default=True)
def unload(pid: int, timeout: float) -> None:
    """Stop the agent in PID: gateway, JFR stream, every agent thread; delete its connection file."""
    from pyprof.agent.control import unload_agent

    if unload_agent(pid, timeout=timeout):
        click.echo(f"pyprof agent stopped in {pid} (no agent thread left; `pyprof agent load {pid}` "
                   "starts it again)")
    else:
        click.echo(f"no pyprof agent runs in {pid}: nothing to unload")


def _client(pid: int):
    from pyprof.agent.client import AgentClient

    return AgentClient.connect(pid)


@agent.command("threads")
@click.argument("pid", type=PID)
@json_option
def threads(pid: int, as_json: bool) -> None:
    """Every thread of JVM PID: OS thread id, Java thread id, state, name (from the agent)."""
    with _client(pid) as client:
        rows = client.threads()
    if as_json:
        emit_json(rows)
        return
    click.echo(f"{'TID':>8} {'JAVA_ID':>7} {'STATE':<14} NAME")
    for r in rows:
        tid = r.get("tid") if r.get("tid") is not None else "?"
        java_id = r["java_id"] if r.get("java_id") is not None else "-"
        click.echo(f"{tid:>8} {java_id:>7} {str(r.get('state'))[:14]:<14} {r.get('name')}")


@agent.command("gc")
@click.argument("pid", type=PID)
@json_option
@click.option("--kind", type=click.Choice(["all", "gc", "safepoint"]), default="all", show_default=True)
@click.option("--since", type=int, default=0, help="only pauses after this sequence number")
def gc(pid: int, as_json: bool, kind: str, since: int) -> None:
    """GC and safepoint pauses of JVM PID since the agent started (JFR): when, how long, why."""
    with _client(pid) as client:
        pauses, last, dropped = client.pauses(since)
    pauses = sorted((p for p in pauses if kind in ("all", p.get("kind"))), key=lambda p: p["start_ns"])
    if as_json:
        emit_json({"pid": pid, "last": last, "dropped": dropped, "pauses": pauses})
        return
    click.echo(f"{'TIME':<12} {'PAUSE ms':>9} {'KIND':<9} WHAT")
    for p in pauses:
        if p.get("kind") == "gc":
            what = f"{p.get('name', '?')} {p.get('phase', '')} ({p.get('cause', '?')})"
        else:
            what = p.get("operation", f"safepoint {p.get('safepoint_id')}")
        click.echo(f"{_stamp(p['start_ns']):<12} {p['duration_ns'] / 1e6:>9.3f} {p['kind']:<9} {what}")
    total = sum(p["duration_ns"] for p in pauses) / 1e6
    longest = max((p["duration_ns"] for p in pauses), default=0) / 1e6
    click.echo(f"# {len(pauses)} pauses, {total:.1f} ms in total, longest {longest:.1f} ms"
               + (f", {dropped} older ones dropped" if dropped else ""), err=True)


@agent.command("compiles")
@click.argument("pid", type=PID)
@click.argument("compile_ids", nargs=-1, type=int, required=True)
@json_option
def compiles(pid: int, compile_ids: tuple[int, ...], as_json: bool) -> None:
    """What compile ids compiled: method, tier, OSR, and what each compile inlined (JFR)."""
    with _client(pid) as client:
        data = client.compiles(list(compile_ids))
    if as_json:
        emit_json({str(k): v for k, v in data.items()})
        return
    for cid in compile_ids:
        c = data.get(cid)
        if c is None:
            click.echo(f"{cid}: unknown to the agent (compiled before it started, or forgotten)")
            continue
        osr = " OSR" if c.get("osr") else ""
        click.echo(f"{cid}: L{c.get('level')}{osr} {c.get('method')} ({c.get('code_size')} B)")
        for i in c.get("inlined", []):
            mark = "+" if i.get("inlined") else "-"
            click.echo(f"    {mark} @{i.get('bci')} {i.get('method')}  {i.get('message') or ''}".rstrip())


# ---- codecache watch --source agent ---------------------------------------------------------------
def watch_agent(pid: int, as_json: bool, duration: Optional[float], poll_s: float = 0.1) -> None:
    """`pyprof codecache watch PID --source agent`: compiles, deopts, failures, code-cache-full, unloads."""
    from pyprof.procfs.process import host_tids
    from pyprof.sources.agent import AgentSource

    source = AgentSource.open(pid, load=True)
    tids: dict[int, int] = {}

    def step() -> None:
        for ev in source.changes():
            os_tid = ev.data.get("os_tid")
            if os_tid is not None and os_tid not in tids:
                try:
                    tids.update(host_tids(pid))
                except NoSuchProcess:
                    pass
            _show(ev, tids.get(os_tid, os_tid), as_json)
        time.sleep(poll_s)

    with StopSignals() as stop:
        try:
            for note in source.notes:
                click.echo(f"# {note}", err=True)
            status = source.client.status()
            jfr = status.get("jfr") or {}
            if "jdk.Compilation" not in (jfr.get("enabled") or []):
                raise SourceUnavailable(f"the agent in {pid} has no JFR compilation events "
                                        f"({jfr.get('error') or 'not enabled'})")
            source.start_changes(from_now=True)
            click.echo(f"# watching {pid} through the agent (JFR: {_jfr_summary(status)}); Ctrl-C stops",
                       err=True)
            why = run_until_stopped(step, stop, duration=duration, target_alive=lambda: is_running(pid))
            if why == TARGET_EXITED:
                click.echo(f"# process {pid} exited", err=True)
        finally:
            dropped = source.dropped
            source.close()
    if dropped:
        click.echo(f"# {dropped} event(s) lost (the agent's ring overflowed)", err=True)


def _show(ev: Any, tid: Optional[int], as_json: bool) -> None:
    d = ev.data
    if as_json:
        row = {"event": ev.kind, "time": round(ev.time_ns / 1e9, 6), "tid": tid}
        row.update({k: v for k, v in d.items() if k not in ("kind", "time_ns", "end_ns", "seq", "os_tid")})
        emit_json(row)
    else:
        stamp = _stamp(ev.time_ns)
        if ev.kind == "compile":
            osr = " %" if d.get("osr") else ""
            failed = "" if d.get("success", True) else " FAILED"
            click.echo(f"{stamp} {'compile':<12} L{d.get('level')} id={d.get('compile_id'):<6} "
                       f"{d.get('code_size', 0):>6} B  {d.get('method')}{osr}{failed}")
        elif ev.kind == "deopt":
            click.echo(f"{stamp} {'deopt':<12} id={d.get('compile_id'):<6} {d.get('method')} @{d.get('bci')} "
                       f"{d.get('reason')}/{d.get('action')}")
        else:
            rest = " ".join(f"{k}={v}" for k, v in d.items()
                            if k not in ("kind", "time_ns", "end_ns", "seq", "os_tid", "thread"))
            click.echo(f"{stamp} {ev.kind:<12} {rest}")
    sys.stdout.flush()
