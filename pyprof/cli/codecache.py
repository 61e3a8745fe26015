"""`pyprof codecache ls|lookup|stats|watch`: the JIT code cache of a running JVM, read attach-free."""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from typing import Any, Iterable, Optional

import click

from pyprof.cli.common import PID, emit_json, human_bytes, parse_address
from pyprof.errors import MemoryReadError, ProcessExited, PyprofError, SourceUnavailable, UsageError
from pyprof.hotspot.codecache import BlobKind, CodeBlobInfo, CodeCacheSnapshot
from pyprof.procfs.process import is_running
from pyprof.session.runloop import TARGET_EXITED, StopSignals, run_until_stopped
from pyprof.sources import open_source
from pyprof.sources.base import SOURCE_NAMES

KINDS = [k.value for k in BlobKind]
SORT_KEYS = {
    "address": lambda b: b.address,
    "size": lambda b: -b.size,
    "level": lambda b: (-b.level, b.address),
    "id": lambda b: (b.compile_id, b.address),
}
LEVEL_NAMES = {0: "native", 1: "C1", 2: "C1+counters", 3: "C1+profile", 4: "C2"}

source_option = click.option(
    "--source", type=click.Choice(SOURCE_NAMES), default="auto", show_default=True,
    help="where the code-cache map comes from: the attach-free VMStructs reader, jcmd, or the pyprof agent")
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.group()
def codecache() -> None:
    """Inspect the JIT code cache: compiled methods, stubs, heaps, live compiles."""


def _snapshot(pid: int, source: str, announce: bool) -> CodeCacheSnapshot:
    choice = open_source(pid, source)
    try:
        snap = choice.source.snapshot()
    except (MemoryReadError, SourceUnavailable) as e:
        if not is_running(pid):
            raise ProcessExited(f"process {pid} exited while its code cache was read") from e
        if isinstance(e, SourceUnavailable):
            raise
        raise PyprofError(f"cannot read the code cache of {pid}: {e}") from e
    finally:
        choice.source.close()
    # A JVM that exits mid-walk makes the rest of its heap unreadable: that is no partial answer.
    if not is_running(pid):
        raise ProcessExited(f"process {pid} exited while its code cache was read")
    if announce and source == "auto":
        click.echo(f"# source: {choice.source.name} ({choice.reason})", err=True)
    # the agent source: "loaded the agent into ..."; the VMStructs one: what this JVM cannot decode
    for note in getattr(choice.source, "notes", ()):
        click.echo(f"# {note}", err=True)
    if snap.stats.invalid_total:
        click.echo(f"# {snap.stats.invalid_total} unreadable blob(s) skipped: "
                   f"{dict(snap.stats.invalid)}", err=True)
    return snap


def blob_json(b: CodeBlobInfo, snap: Optional[CodeCacheSnapshot] = None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": b.kind.value, "address": b.address, "size": b.size,
                           "start": b.code_begin, "end": b.code_end}
    if b.is_nmethod:
        out.update(
            compile_id=b.compile_id, level=b.level, state=b.state, method=b.method_name,
            osr_bci=b.entry_bci if b.is_osr else None, frame_size=b.frame_size,
        )
        if b.method is not None and b.method.source_file:
            out["source_file"] = b.method.source_file
    else:
        out["name"] = b.name
    if snap is not None and 0 <= b.heap < len(snap.heaps):
        out["heap"] = snap.heaps[b.heap].name
    return out


def _text_row(b: CodeBlobInfo, snap: CodeCacheSnapshot) -> str:
    if b.is_nmethod:
        osr = f" %{b.entry_bci}" if b.is_osr else ""
        state = snap.state_name(b.state) if b.state >= 0 else ""
        return (f"0x{b.code_begin:012x} {b.code_end - b.code_begin:>7} {b.level:>2} {b.compile_id:>6} "
                f"{state:<11} {b.method_name or '?'}{osr}")
    return f"0x{b.code_begin:012x} {b.code_end - b.code_begin:>7}  -      - {b.kind.value:<11} {b.name}"


@codecache.command("ls")
@click.argument("pid", type=PID)
@json_option
@click.option("--kind", type=click.Choice(KINDS + ["all"]), default="all", show_default=True,
              help="only blobs of this kind")
@click.option("--sort", "sort_key", type=click.Choice(list(SORT_KEYS)), default="address",
              show_default=True)
@source_option
def ls(pid: int, as_json: bool, kind: str, sort_key: str, source: str) -> None:
    """List compiled methods and other code blobs of JVM PID."""
    snap = _snapshot(pid, source, announce=not as_json)
    # Like `jcmd Compiler.codelist`: not JDK 17's unloaded / zombie nmethods waiting for the sweeper.
    blobs = [b for b in snap.blobs if b.alive and (kind == "all" or b.kind.value == kind)]
    blobs.sort(key=SORT_KEYS[sort_key])
    if as_json:
        emit_json([blob_json(b, snap) for b in blobs])
        return
    click.echo(f"{'CODE':<14} {'SIZE':>7} LV {'ID':>6} {'STATE':<11} METHOD")
    out = sys.stdout
    for b in blobs:
        out.write(_text_row(b, snap) + "\n")
    click.echo(f"# {sum(1 for b in blobs if b.is_nmethod)} nmethods, {len(blobs)} blobs "
               f"({snap.source}, {snap.stats.seconds * 1000:.0f} ms)", err=True)


def _read_addresses(addresses: Iterable[str]) -> list[int]:
    out = []
    for a in addresses:
        if a == "-":
            out.extend(parse_address(tok) for line in sys.stdin for tok in line.split())
        else:
            out.append(parse_address(a))
    if not out:
        raise UsageError("no address given (pass addresses, or - to read them from stdin)")
    return out


@codecache.command("lookup")
@click.argument("pid", type=PID)
@click.argument("addresses", nargs=-1, required=True)
@json_option
@source_option
def lookup(pid: int, addresses: tuple[str, ...], as_json: bool, source: str) -> None:
    """Which code holds each ADDRESS (hex; `-` reads addresses from stdin)."""
    wanted = _read_addresses(addresses)
    snap = _snapshot(pid, source, announce=not as_json)
    rows = []
    for address in wanted:
        b = snap.lookup(address)
        row: dict[str, Any] = {"address": address, "method": None, "kind": None}
        if b is not None:
            row.update(kind=b.kind.value, method=b.method_name, name=b.name,
                       offset=address - b.code_begin, blob=b.address)
            if b.is_nmethod:
                row.update(compile_id=b.compile_id, level=b.level)
        rows.append(row)
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        if row["kind"] is None:
            click.echo(f"0x{row['address']:x}  not in the code cache")
        elif row["method"]:
            click.echo(f"0x{row['address']:x}  {row['method']}+0x{row['offset']:x}  "
                       f"(level {row['level']}, compile id {row['compile_id']})")
        else:
            click.echo(f"0x{row['address']:x}  [{row['kind']}] {row['name']}+0x{row['offset']:x}")


def compute_stats(snap: CodeCacheSnapshot, top: int = 10) -> dict[str, Any]:
    heaps = []
    for h in snap.heaps:
        u = snap.usage.get(h.index)
        free = (u.free_bytes + u.unallocated_bytes) if u else 0
        largest = max(u.largest_free, u.unallocated_bytes) if u else 0
        heaps.append({
            "name": h.name, "start": h.low_boundary, "reserved": h.reserved, "committed": h.committed,
            "used": u.used_bytes if u else 0, "free": free, "free_blocks": u.free_blocks if u else 0,
            "largest_free": largest, "blobs": u.blobs if u else 0,
            # fragmentation: how much of the free space is not in the largest free block
            "fragmentation": round(1 - largest / free, 4) if free else 0.0,
        })
    by_level: dict[int, dict[str, int]] = defaultdict(lambda: {"count": 0, "bytes": 0})
    by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "bytes": 0})
    dead = 0
    for b in snap.blobs:
        by_kind[b.kind.value]["count"] += 1
        by_kind[b.kind.value]["bytes"] += b.size
        if b.is_nmethod and b.alive:
            by_level[b.level]["count"] += 1
            by_level[b.level]["bytes"] += b.size
        elif b.is_nmethod:
            dead += 1
    largest = sorted(snap.live_nmethods, key=lambda b: -b.size)[:top]
    states = Counter(b.state for b in snap.nmethods)
    return {
        "source": snap.source,
        "heaps": heaps,
        "tiers": {str(k): v for k, v in sorted(by_level.items())},
        "kinds": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["bytes"])),
        "nmethod_states": {str(k): v for k, v in sorted(states.items())},
        # JDK 17: unloaded / zombie nmethods still occupying the heap (in "kinds", not in "tiers")
        "dead_nmethods": dead,
        "largest": [{"method": b.method_name, "size": b.size, "level": b.level,
                     "compile_id": b.compile_id} for b in largest],
        "invalid_blobs": snap.stats.invalid_total,
        "walk_seconds": round(snap.stats.seconds, 4),
    }


@codecache.command("stats")
@click.argument("pid", type=PID)
@json_option
@click.option("--top", default=10, show_default=True, help="how many of the largest methods to show")
@source_option
def stats(pid: int, as_json: bool, top: int, source: str) -> None:
    """Code heap usage and fragmentation, counts and bytes per tier and per blob kind."""
    snap = _snapshot(pid, source, announce=not as_json)
    data = compute_stats(snap, top)
    if as_json:
        emit_json(data)
        return
    if data["heaps"]:
        click.echo(f"{'HEAP':<24} {'RESERVED':>10} {'COMMITTED':>10} {'USED':>10} {'FREE':>10} "
                   f"{'BLOBS':>6} FRAG")
        for h in data["heaps"]:
            click.echo(f"{h['name']:<24} {human_bytes(h['reserved']):>10} {human_bytes(h['committed']):>10} "
                       f"{human_bytes(h['used']):>10} {human_bytes(h['free']):>10} {h['blobs']:>6} "
                       f"{h['fragmentation'] * 100:.1f}%")
        click.echo("")
    click.echo("TIER                   COUNT      BYTES")
    for level, v in data["tiers"].items():
        label = f"{level} ({LEVEL_NAMES.get(int(level), '?')})"
        click.echo(f"{label:<20} {v['count']:>7} {human_bytes(v['bytes']):>10}")
    click.echo("\nKIND                   COUNT      BYTES")
    for kind, v in data["kinds"].items():
        click.echo(f"{kind:<20} {v['count']:>7} {human_bytes(v['bytes']):>10}")
    click.echo("\nLARGEST METHODS")
    for m in data["largest"]:
        click.echo(f"{human_bytes(m['size']):>10}  L{m['level']}  {m['method']}")


@codecache.command("watch")
@click.argument("pid", type=PID)
@json_option
@click.option("-d", "--duration", type=float, default=None, help="stop after SECONDS (default: Ctrl-C)")
@click.option("--source", type=click.Choice(["auto", "agent"]), default="auto", show_default=True,
              help="auto: uprobes on libjvm; agent: JFR events from the pyprof agent (loads it if needed)")
def watch(pid: int, as_json: bool, duration: Optional[float], source: str) -> None:
    """Print a line per compile, unload and make-not-entrant, live (uprobes on libjvm)."""
    if source == "agent":
        from pyprof.cli.agent import watch_agent

        watch_agent(pid, as_json, duration)
        return
    from pyprof.codemap.live import CodeCacheChange, LiveCodeCache, monotonic_ns
    from pyprof.hotspot.codecache import CodeCache
    from pyprof.hotspot.jvm import HotSpotJvm

    jvm = HotSpotJvm.open(pid)
    live = LiveCodeCache(jvm, CodeCache(jvm))
    started_ns = monotonic_ns()
    wall0 = time.time()

    def show(change: CodeCacheChange) -> None:
        b = change.blob
        when = wall0 + (change.time_ns - started_ns) / 1e9
        if as_json:
            row: dict[str, Any] = {"event": change.kind, "time": round(when, 6), "tid": change.tid,
                                   "address": change.address}
            if b is not None:
                row.update(blob_json(b))
            emit_json(row)
            sys.stdout.flush()
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when * 1000) % 1000:03d}"
        if b is None:
            click.echo(f"{stamp} {change.kind:<12} 0x{change.address:x}")
        else:
            osr = f" %{b.entry_bci}" if b.is_osr else ""
            click.echo(f"{stamp} {change.kind:<12} L{b.level} id={b.compile_id:<6} {b.size:>6} B  "
                       f"{b.method_name or b.name}{osr}")
        sys.stdout.flush()

    def step() -> None:
        for change in live.poll(200):
            show(change)

    with StopSignals() as stop:
        try:
            snap = live.start()
            # On stderr in --json mode too: it tells a consumer that the probes are attached.
            click.echo(f"# watching {jvm.description}: {len(snap.live_nmethods)} nmethods now; Ctrl-C stops",
                       err=True)
            why = run_until_stopped(step, stop, duration=duration, target_alive=lambda: is_running(pid))
            if why == TARGET_EXITED:
                click.echo(f"# process {pid} exited", err=True)
        finally:
            lost = live.lost_events
            live.close()
            jvm.close()
    if lost:
            click.echo(f"# {lost} event(s) lost (ring buffer full)", err=True)
