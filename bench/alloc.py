"""What `-e alloc` (and `-e lock`) costs the target, side by side with no profiling, in one run.

A JVM runs tests/java EventThroughput (one thread: `alloc` builds small object graphs, ~1 GB/s; `park`
parks with its permit present, so every unit is one Parker::park entry and return). Windows alternate:
unprofiled, profiled (the event's program alone in the sampler module, through the test-side driver
tests/integration/events_driver.py until the session runs it), unprofiled, ... The target's throughput in
each profiled window is compared with the unprofiled windows around it.

Printed: the throughput ratio profiled / unprofiled (each profiled window against the mean of the
unprofiled windows before and after it; the median over rounds), the probe hits and records per
second, the cost per probe hit in the target's thread: (1 - ratio) x 1 s / hits per second (the
workload is one busy thread, so its lost throughput is its lost CPU time; on a machine with fewer idle
cores than pyprof + the JVM need, pyprof's own CPU shows up there too), and pyprof's CPU per record
(unwinding and aggregation in Python). Also the target's work per CPU second of its own (user + system
time of all its threads, where the uprobe handlers run), profiled / unprofiled: what the probes cost
the target, apart from the CPU pyprof and other processes take from it on a busy machine. And the
kernel's own measure of the BPF programs' run time per run (BPF_ENABLE_STATS, held only for the
window: bench/bpf_stats.py), which the machine's load does not disturb; the uprobe's trap (int3,
single-step, ~1 us) comes on top of it.

    .venv/bin/python bench/alloc.py [--event alloc|lock] [--jdk 17] [--interval 512k] [--rounds 3]
                                    [--window 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bpf_stats  # noqa: E402
from bench.overhead import ThroughputLog  # noqa: E402
from pyprof.sampling.alloc import AllocProgram, parse_interval  # noqa: E402
from pyprof.sampling.lock import LockProgram  # noqa: E402
from tests.conftest import CLASSES, JDK_HOMES  # noqa: E402
from tests.integration.events_driver import run_event  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
BPF_PROG_TYPE_KPROBE = 2   # uprobes run kprobe-type programs


def cpu_seconds(pid: int) -> float:
    """The target's CPU time (all threads, user + system: uprobe handlers run in its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Window:
    """One window's throughput (ops/s) and ops per CPU second of the target."""

    def __init__(self, pid: int, log: ThroughputLog) -> None:
        self.pid, self.log = pid, log
        self.start, self.cpu = time.monotonic(), cpu_seconds(pid)

    def end(self) -> tuple[float, float]:
        now, cpu = time.monotonic(), cpu_seconds(self.pid)
        rate = self.log.mean(self.start + 0.3, now)
        return rate, rate * (now - self.start) / max(cpu - self.cpu, 1e-9)


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
    windows: list[Window] = []
    cpu: list[float] = []
    result: dict = {}

    def started() -> None:
        windows.append(Window(pid, log))
        cpu.append(time.process_time())

    def stopped() -> None:
        result["throughput"], result["per_cpu"] = windows[0].end()
        cpu.append(time.process_time())

    def bpf_cost(sampler) -> None:   # the kernel's measure of the programs' run time
        ns = runs = 0
        probes = program.uprobes
        for fn in probes.entry_functions + tuple(f + "_return" for f in probes.return_functions):
            spent, count = bpf_stats.run_stats(sampler._bpf.load_func(fn, BPF_PROG_TYPE_KPROBE).fd)
            ns, runs = ns + spent, runs + count
        result["bpf_ns_per_run"] = ns / max(runs, 1)

    stats_fd = bpf_stats.enable_stats()
    try:
        run = run_event(pid, program, seconds, on_started=started, on_stopped=stopped, inspect=bpf_cost)
    finally:
        bpf_stats.close(stats_fd)
    hits, records = (run.stats[k] for k in HITS[event])
    return {**result, "hits_per_s": hits / run.window_s,
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
    baseline_per_cpu: list[float] = []
    runs: list[dict] = []

    def unprofiled() -> None:
        window = Window(proc.pid, log)
        time.sleep(args.window)
        rate, per_cpu = window.end()
        baseline.append(rate)
        baseline_per_cpu.append(per_cpu)

    try:
        for _ in range(args.rounds):
            unprofiled()
            runs.append(profiled_window(proc.pid, args.event, interval, args.window, log))
        unprofiled()
    finally:
        proc.kill()
    base = statistics.median(baseline)
    # each profiled window against the unprofiled windows on either side of it (the machine drifts)
    paired = [r["throughput"] / statistics.fmean(baseline[i:i + 2]) for i, r in enumerate(runs)]
    ratio = statistics.median(paired)
    per_cpu = statistics.median(r["per_cpu"] / statistics.fmean(baseline_per_cpu[i:i + 2])
                                for i, r in enumerate(runs))
    hits = statistics.median(r["hits_per_s"] for r in runs)
    records = statistics.median(r["records_per_s"] for r in runs)
    cost_us = (1 - ratio) * 1e6 / hits if hits else float("nan")
    what = f"interval {args.interval}" if args.event == "alloc" else "threshold 10 us"
    print(f"JDK {args.jdk}, -e {args.event} ({what}), {args.rounds} rounds of {args.window:.0f} s windows; "
          f"unprofiled median {base:,.0f} ops/s (windows: {', '.join(f'{b:,.0f}' for b in baseline)})")
    each = ", ".join(f"{p:.3f}" for p in paired)
    print(f"ratio {ratio:.3f} (profiled: {each}), "
          f"probe hits {hits:,.0f}/s, records {records:,.0f}/s, lost {sum(r['lost'] for r in runs)}, "
          f"cost {cost_us:.2f} us per hit in the target; work per CPU second of the target profiled / "
          f"unprofiled {per_cpu:.3f}; BPF programs "
          f"{statistics.median(r['bpf_ns_per_run'] for r in runs) / 1000:.2f} us per run (kernel stats); "
          f"pyprof's CPU "
          f"{statistics.median(r['pyprof_cpu_us_per_record'] for r in runs):,.0f} us per record")


if __name__ == "__main__":
    main()
