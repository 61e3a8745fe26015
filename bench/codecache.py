"""How long a code-cache snapshot takes: the attach-free VMStructs walk vs `jcmd Compiler.codelist`.

A JVM runs tests/java ManyMethods (generated classes whose small methods all get compiled: 500 classes x
100 methods = ~50k nmethods) with `-Xbatch -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m`
(blocking C1 compiles, so it is done in ~10 s, and room for all of them). Then, alternating, `--repeat`
times each:
- walk: CodeCache(jvm).walk() in this process, with a fresh MethodResolver every time (as cold as one
  `pyprof codecache ls`): every blob decoded, every Method* resolved to its name;
- codelist: `jcmd PID Compiler.codelist`, output read to the end (a warm-up jcmd first starts the JVM's
  Attach Listener, which only the first attach pays for);
- ls: `pyprof codecache ls PID --json` end to end (Python start-up, imports, opening the JVM, walk, JSON).
Medians are printed (min in brackets), with walk CPU time, as the machine may be shared.

    .venv/bin/python bench/codecache.py [--jdk 11,17,21,25] [--classes 500] [--methods 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyprof.hotspot.codecache import CodeCache  # noqa: E402
from pyprof.hotspot.jvm import HotSpotJvm  # noqa: E402
from pyprof.sources.jcmd import parse_codelist  # noqa: E402
from tests.conftest import CLASSES, JDK_HOMES  # noqa: E402

JVM_FLAGS = ("-Xbatch", "-XX:TieredStopAtLevel=1", "-XX:ReservedCodeCacheSize=256m")
START_TIMEOUT = 180.0


def start_workload(jdk: int, classes: int, methods: int) -> tuple[subprocess.Popen, float]:
    java = JDK_HOMES[jdk] / "bin" / "java"
    started = time.monotonic()
    proc = subprocess.Popen([str(java), *JVM_FLAGS, "-cp", str(CLASSES), "pyproftest.ManyMethods",
                             str(classes), str(methods)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready"):
            return proc, time.monotonic() - started
        if time.monotonic() - started > START_TIMEOUT:
            break
    proc.kill()
    raise SystemExit(f"JDK {jdk}: ManyMethods did not get ready in {START_TIMEOUT:.0f} s")


def timed_walk(jvm: HotSpotJvm) -> tuple[float, float, int, int]:
    """(wall s, CPU s, nmethods, nmethods without a name) of one cold walk."""
    wall, cpu = time.perf_counter(), time.process_time()
    snap = CodeCache(jvm).walk()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, len(snap.live_nmethods), snap.stats.method_failures


def timed_codelist(jcmd: Path, pid: int) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run([str(jcmd), str(pid), "Compiler.codelist"], capture_output=True, text=True,
                          check=True)
    return time.perf_counter() - started, len(parse_codelist(done.stdout))


def timed_ls(pid: int) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pyprof.cli.main", "codecache", "ls", str(pid), "--json"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        print(f"# pyprof codecache ls failed ({done.returncode}): {lines[-1] if lines else ''}", flush=True)
        return float("nan")
    return time.perf_counter() - started


def bench(jdk: int, classes: int, methods: int, repeat: int) -> dict:
    proc, ready_s = start_workload(jdk, classes, methods)
    try:
        jcmd = JDK_HOMES[jdk] / "bin" / "jcmd"
        timed_codelist(jcmd, proc.pid)           # start the Attach Listener outside the timings
        opened = time.perf_counter()
        jvm = HotSpotJvm.open(proc.pid)
        open_s = time.perf_counter() - opened
        walks, cpus, codelists, lss = [], [], [], []
        nmethods = listed = unnamed = 0
        for _ in range(repeat):
            wall, cpu, nmethods, unnamed = timed_walk(jvm)
            walks.append(wall)
            cpus.append(cpu)
            seconds, listed = timed_codelist(jcmd, proc.pid)
            codelists.append(seconds)
            lss.append(timed_ls(proc.pid))
        jvm.close()
        return {"jdk": jdk, "release": jvm.release, "ready_s": ready_s, "open_s": open_s,
                "nmethods": nmethods, "codelist_nmethods": listed, "unnamed": unnamed,
                "walk": walks, "walk_cpu": cpus, "codelist": codelists, "ls": lss}
    finally:
        proc.kill()
        proc.wait()


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jdk", default="11,17,21,25",
                        help="comma-separated JDK versions (11, 17, 21, 25)")
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--methods", type=int, default=100, help="methods per class")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    versions = [int(v) for v in args.jdk.split(",")]
    for v in versions:
        if v not in JDK_HOMES:
            parser.error(f"unknown JDK {v}: choose from {sorted(JDK_HOMES)}")
    rows = []
    for v in versions:
        row = bench(v, args.classes, args.methods, args.repeat)
        rows.append(row)
        print(f"# JDK {v} ({row['release']}): ManyMethods ready in {row['ready_s']:.1f} s, "
              f"{row['nmethods']} nmethods walked ({row['unnamed']} unnamed), "
              f"{row['codelist_nmethods']} in codelist; HotSpotJvm.open {row['open_s']:.3f} s", flush=True)
    print(f"\nmedian [min] of {args.repeat} runs, seconds")
    print(f"{'JDK':>3} {'nmethods':>9} {'walk':>15} {'walk CPU':>15} {'nmethods/s':>11} "
          f"{'codelist':>15} {'codelist/walk':>13} {'ls --json':>15}")
    for r in rows:
        walk = statistics.median(r["walk"])
        print(f"{r['jdk']:>3} {r['nmethods']:>9} {_fmt(r['walk']):>15} {_fmt(r['walk_cpu']):>15} "
              f"{r['nmethods'] / walk:>11.0f} {_fmt(r['codelist']):>15} "
              f"{statistics.median(r['codelist']) / walk:>13.2f} {_fmt(r['ls']):>15}")


if __name__ == "__main__":
    main()
