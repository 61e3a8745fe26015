"""What `-e alloc` (and `-e lock`) costs the target, side by side with no profiling, in one run.

A JVM runs tests/java EventThroughput (one thread: `alloc` builds small object graphs, ~1 GB/s; `park`
parks with its permit present, so every unit is one Parker::park entry and return). Windows alternate:
unprofiled, profiled (the event's program alone in the sampler module, through the test-side driver
tests/integration/events_driver.py until the session runs it), unprofiled, ... The target's throughput in
each profiled window is compared with the unprofiled windows around it.

Printed: the throughput ratio profiled / unprofiled (median over rounds), the probe hits and records per
second, the cost per probe hit in the target's thread: (1 - ratio) x 1 s / hits per second (the
workload is one busy thread, so its lost throughput is its lost CPU time; on a machine with fewer idle
cores than pyprof + the JVM need, pyprof's own CPU shows up there too), and pyprof's CPU per record
(unwinding and aggregation in Python).

    .venv/bin/python bench/alloc.py [--event alloc|lock] [--jdk 17] [--interval 512k] [--rounds 3]
                                    [--window 5]
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

from bench.overhead import ThroughputLog  # noqa: E402
from pyprof.sampling.alloc import AllocProgram, parse_interval  # noqa: E402
from pyprof.sampling.lock import LockProgram  # noqa: E402
from tests.conftest import CLASSES, JDK_HOMES  # noqa: E402
from tests.integration.events_driver import run_event  # noqa: E402

HITS = {"alloc": ("alloc_events", "alloc_samples"), "lock": ("parks", "lock_records")}


def start_workload(jdk: int, mode: str) -> subprocess.Popen:
    java = JDK_HOMES[jdk] / "bin" / "java"
    proc = subprocess.Popen([str(java), "-cp", str(CLASSES), "pyproftest.EventThroughput", mode],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    while proc.stdout.readline().strip() != "ready":
        pass
    return proc


def profiled_window(pid: int, event: str, interval: int, seconds: float, log: ThroughputLog) -> dict:
    program = AllocProgram(interval) if event == "alloc" else LockProgram()
    marks: list[float] = []
    cpu: list[float] = []

    def mark() -> None:
        marks.append(time.monotonic())
        cpu.append(time.process_time())

    run = run_event(pid, program, seconds, on_started=mark, on_stopped=mark)
    hits, records = (run.stats[k] for k in HITS[event])
    return {"throughput": log.mean(marks[0] + 0.3, marks[1]), "hits_per_s": hits / run.window_s,
            "records_per_s": records / run.window_s, "lost": run.raw_counters[0],
            "pyprof_cpu_us_per_record": (cpu[1] - cpu[0]) * 1e6 / max(run.records, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--event", default="alloc", choices=sorted(HITS))
    parser.add_argument("--jdk", type=int, default=17, choices=sorted(JDK_HOMES))
    parser.add_argument("--interval", default="512k", help="alloc: sampling interval in bytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=5.0, help="seconds per window")
    args = parser.parse_args()
    interval = parse_interval(args.interval)

    proc = start_workload(args.jdk, "alloc" if args.event == "alloc" else "park")
    log = ThroughputLog(proc)
    time.sleep(2)  # let the throughput settle after warm-up
    baseline: list[float] = []
    runs: list[dict] = []
    try:
        for _ in range(args.rounds):
            start = time.monotonic()
            time.sleep(args.window)
            baseline.append(log.mean(start + 0.3, time.monotonic()))
            runs.append(profiled_window(proc.pid, args.event, interval, args.window, log))
        start = time.monotonic()
        time.sleep(args.window)
        baseline.append(log.mean(start + 0.3, time.monotonic()))
    finally:
        proc.kill()
    base = statistics.median(baseline)
    ratio = statistics.median(r["throughput"] for r in runs) / base
    hits = statistics.median(r["hits_per_s"] for r in runs)
    records = statistics.median(r["records_per_s"] for r in runs)
    cost_us = (1 - ratio) * 1e6 / hits if hits else float("nan")
    what = f"interval {args.interval}" if args.event == "alloc" else "threshold 10 us"
    print(f"JDK {args.jdk}, -e {args.event} ({what}), {args.rounds} rounds of {args.window:.0f} s windows; "
          f"unprofiled median {base:,.0f} ops/s (windows: {', '.join(f'{b:,.0f}' for b in baseline)})")
    each = ", ".join(f"{r['throughput'] / base:.3f}" for r in runs)
    print(f"ratio {ratio:.3f} (profiled: {each}), "
          f"probe hits {hits:,.0f}/s, records {records:,.0f}/s, lost {sum(r['lost'] for r in runs)}, "
          f"cost {cost_us:.2f} us per hit in the target; pyprof's CPU "
          f"{statistics.median(r['pyprof_cpu_us_per_record'] for r in runs):,.0f} us per record")


if __name__ == "__main__":
    main()
