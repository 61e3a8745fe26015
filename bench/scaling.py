"""What pyprof costs as the work grows: its CPU against the sample rate, busy threads, idle threads and
the number of JVMs, with the unique stacks of each run, so the cost on a big host can be predicted
(docs/performance.md).

Each point runs the real server workload (tests/java HttpServerLoad: a com.sun.net.httpserver thread pool
driven by a loopback load loop) and `pyprof attach --json` (one JVM) or `pyprof daemon` (several), and
reads pyprof's own CPU from its summary (attach) or from /proc (daemon). Points of one axis run
back to back in one invocation, so their ratios are comparable even on a noisy machine.

`--compare DIR` runs every attach point twice against the same JVM, alternating this tree's pyprof with
the one in DIR (another checkout, e.g. of main): before/after side by side in one run.

The server runs with -Dsun.net.httpserver.nodelay=true: without it each response waits for the client's
delayed ACK (Nagle), and the "loaded" server idles at ~90 requests/s, a few percent of a core.

    .venv/bin/python bench/scaling.py [--seconds 20] [--axes rate,busy,idle,jvms] [--compare DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import CLASSES, JDK_HOMES  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_server(workers: int, clients: int, idle: int) -> subprocess.Popen:
    java = JDK_HOMES[17] / "bin" / "java"
    cmd = [str(java), "-Dsun.net.httpserver.nodelay=true", "-cp", str(CLASSES), "pyproftest.HttpServerLoad",
           str(workers), str(clients), "-1", str(idle)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready"):
            break
    time.sleep(3)   # let the JIT settle
    return proc


def attach(pid: int, seconds: float, rate: int, root: Path = ROOT) -> dict:
    """One `pyprof attach --json` of the pyprof in `root` (`python -m` imports it from there)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.pb.gz"
        cmd = [sys.executable, "-m", "pyprof.cli.main", "attach", str(pid), "-d", str(seconds), "-r",
               str(rate), "-o", str(out), "--json"]
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True)
        summary = json.loads(done.stdout)
        from pyprof.output.pprof import read_pprof

        summary["unique_stacks"] = len(read_pprof(str(out)).counts)
    return summary


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def daemon_point(jvms: int, seconds: float, rate: int, root: Path = ROOT) -> dict:
    """`pyprof daemon` (of the checkout in `root`) over `jvms` servers: its CPU after 10 s of start-up,
    i.e. with warm caches, per sample of the windows it logged."""
    servers = [start_server(2, 2, 0) for _ in range(jvms)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pyprof.cli.main", "daemon", "--out", str(Path(tmp) / "store"),
                   "--interval", str(seconds / 2), "--rate", str(rate)]
            for s in servers:
                cmd += ["--pid", str(s.pid)]
            daemon = subprocess.Popen(cmd, cwd=root, stderr=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL)
            time.sleep(10)                   # start-up and discovery: not part of the steady cost
            cpu0 = cpu_seconds(daemon.pid)
            time.sleep(seconds)
            cpu = cpu_seconds(daemon.pid) - cpu0
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=60)
            # the first window of each JVM holds the start-up seconds the CPU figure leaves out
            samples, seen = 0, set()
            for line in err.splitlines():
                if " window " not in line:
                    continue
                fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
                if fields.get("pid") in seen:
                    samples += int(fields.get("samples", 0))
                seen.add(fields.get("pid"))
        return {"jvms": jvms, "steady_cpu_s": round(cpu, 3), "samples_total": samples}
    finally:
        for s in servers:
            s.kill()


def row(label: str, s: dict, seconds: float) -> str:
    per_s = s["samples"] / seconds
    return (f"{label:<18} {s['samples']:>7} samples ({per_s:6.0f}/s) "
            f"{s['unique_stacks']:>6} unique stacks "
            f"pyprof CPU {s['sampling_cpu_s']:6.2f} s = "
            f"{100 * s['sampling_cpu_s'] / seconds:5.1f} % of a core, "
            f"{s['cpu_us_per_sample'] or 0:6.0f} us/sample, start-up CPU {s['startup_cpu_s']:.2f} s, "
            f"first sample {s['first_sample_s'] or 0:.2f} s, RSS {s['peak_rss_mib']:.0f} MiB, "
            f"complete {s['unwind']['java_stacks_complete_percent']} %, "
            f"unknown {s['unknown_frames_percent']:.2f} %")


def points(label: str, pid: int, seconds: float, rate: int, compare: Optional[Path]) -> None:
    """One point of an axis: this tree's attach, or (compare) the other tree's and this one's in turn."""
    if compare is None:
        print(row(label, attach(pid, seconds, rate), seconds), flush=True)
        return
    for name, root in (("old", compare), ("new", ROOT)):
        print(row(f"{label} {name}", attach(pid, seconds, rate, root), seconds), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--axes", default="rate,busy,idle,jvms")
    parser.add_argument("--compare", type=Path, help="another pyprof checkout (alternates with ours)")
    args = parser.parse_args()
    axes = set(args.axes.split(","))
    t = args.seconds
    cmp = args.compare
    if "rate" in axes:
        print("# sample rate (4 workers, 4 clients)")
        server = start_server(4, 4, 0)
        try:
            for rate in (99, 299, 999):
                points(f"{rate} Hz", server.pid, t, rate, cmp)
        finally:
            server.kill()
    if "busy" in axes:
        print("# busy threads (workers = clients), 199 Hz")
        for busy in (1, 2, 4, 8):
            server = start_server(busy, busy, 0)
            try:
                points(f"{busy} busy", server.pid, t, 199, cmp)
            finally:
                server.kill()
    if "idle" in axes:
        print("# idle threads (2 workers, 2 clients), 99 Hz")
        for idle in (10, 1000, 5000):
            server = start_server(2, 2, idle)
            try:
                points(f"{idle} idle", server.pid, t, 99, cmp)
            finally:
                server.kill()
    if "jvms" in axes:
        print("# JVMs in one daemon (2 workers + 2 clients each), 49 Hz")
        trees = [("", ROOT)] if cmp is None else [(" old", cmp), (" new", ROOT)]
        for jvms in (1, 2, 4):
            for name, root in trees:
                d = daemon_point(jvms, t, 49, root)
                samples = d["samples_total"]
                per_sample = 1e6 * d["steady_cpu_s"] / samples if samples else float("nan")
                print(f"{jvms} JVMs{name:<12} {d['samples_total']:>7} samples  pyprof CPU "
                      f"{d['steady_cpu_s']:6.2f} s = {100 * d['steady_cpu_s'] / t:5.1f} % of a core, "
                      f"{per_sample:6.0f} us/sample (all-in, warm)", flush=True)


if __name__ == "__main__":
    main()
