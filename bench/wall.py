"""What `-e wall` costs a server: throughput side by side with no profiling and with `-e cpu` alone.

A JVM runs tests/java HttpServerLoad (an HTTP server on loopback with worker and client threads in the
same JVM, -Dsun.net.httpserver.nodelay=true: thousands of context switches a second, "requests N"
printed every second). Windows alternate, repeated: unprofiled, `pyprof attach -e cpu`, `pyprof attach
-e cpu,wall`. Each profiled window's throughput while sampling (after pyprof's start-up, before its
final drain and write) is compared with the median of the unprofiled ones.

Printed per mode: throughput ratio, the target's context switches per second seen by the wall program
(switch-outs: blocked intervals sent or skipped, unmatched, preemptions), wall records per second,
pyprof's CPU per record (its --json sampling CPU / samples), and the target's CPU time lost per switch,
(1 - ratio) x the target's CPU use (s/s, /proc/PID/stat) / switches per second: a derived, noisy figure.

    .venv/bin/python bench/wall.py [--jdk 17|21|25] [--rounds 2] [--window 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import CLASSES, JDK_HOMES  # noqa: E402

MODES = ("cpu", "cpu,wall")
TICKS = os.sysconf("SC_CLK_TCK")


class RequestLog:
    """Reads "requests N" lines (every second) in a thread, stamped with our monotonic clock."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.points: list[tuple[float, int]] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "requests":
                self.points.append((time.monotonic(), int(parts[1])))

    def rate(self, start: float, end: float) -> float:
        inside = [(t, n) for t, n in self.points if start <= t <= end]
        if len(inside) < 2:
            return float("nan")
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        return (n1 - n0) / (t1 - t0)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def unprofiled(log: RequestLog, pid: int, seconds: float) -> tuple[float, float]:
    start, cpu = time.monotonic(), cpu_seconds(pid)
    time.sleep(seconds)
    end = time.monotonic()
    return log.rate(start + 0.5, end), (cpu_seconds(pid) - cpu) / (end - start)


def profiled(log: RequestLog, pid: int, events: str, seconds: float, wall_interval: str) -> dict:
    started = time.monotonic()
    interval = ["--wall-interval", wall_interval] if wall_interval and "wall" in events else []
    done = subprocess.run([sys.executable, "-m", "pyprof.cli.main", "attach", str(pid), "-d", str(seconds),
                           "-e", events, *interval, "-o", "/tmp/pyprof-bench-wall.pb.gz", "--json"],
                          capture_output=True, text=True, cwd=ROOT, check=True)
    summary = json.loads(done.stdout)
    # the sampling window only: not pyprof's start-up, nor its end (draining, writing the file), which
    # compete for CPU once per run, not per switch
    sampling_from = started + summary["startup_s"]
    summary["throughput"] = log.rate(sampling_from + 0.5, sampling_from + seconds)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jdk", type=int, default=21, choices=(17, 21, 25))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--window", type=float, default=8.0, help="seconds per window")
    parser.add_argument("--wall-interval", default="", metavar="MS",
                        help="attach's --wall-interval (1000: nearly every interval skipped, which leaves "
                             "the cost of the tracepoints themselves)")
    args = parser.parse_args()
    java = JDK_HOMES[args.jdk] / "bin" / "java"
    # nodelay: the server's replies are not held back by Nagle against the client's delayed ACKs (else
    # the loopback server idles at ~80 requests/s, latency-bound)
    proc = subprocess.Popen([str(java), "-Dsun.net.httpserver.nodelay=true", "-cp", str(CLASSES),
                             "pyproftest.HttpServerLoad"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    while not proc.stdout.readline().startswith("ready"):
        pass
    log = RequestLog(proc)
    time.sleep(3)   # warm-up
    baseline: list[float] = []
    cpu_use: list[float] = []
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    try:
        for _ in range(args.rounds):
            for mode in MODES:
                rate, cpu = unprofiled(log, proc.pid, args.window)
                baseline.append(rate)
                cpu_use.append(cpu)
                runs[mode].append(profiled(log, proc.pid, mode, args.window, args.wall_interval))
        rate, cpu = unprofiled(log, proc.pid, args.window)
        baseline.append(rate)
        cpu_use.append(cpu)
    finally:
        proc.kill()
    base, used = statistics.median(baseline), statistics.median(cpu_use)
    interval = f", --wall-interval {args.wall_interval}" if args.wall_interval else ""
    print(f"JDK {args.jdk}, HttpServerLoad{interval}, {args.rounds} rounds of {args.window:.0f} s windows: "
          f"unprofiled median {base:,.0f} requests/s, target CPU {used:.2f} s/s")
    print(f"{'events':>9} {'ratio':>7} {'switches/s':>11} {'records/s':>10} {'us/record':>10} "
          f"{'ns lost/switch':>15}")
    for mode, results in runs.items():
        ratio = statistics.median(r["throughput"] for r in results) / base
        duration = statistics.median(r["duration_s"] for r in results)
        counters = [r.get("event_counters", {}) for r in results]
        switches = statistics.median(sum(c.get(k, 0) for k in ("offcpu_sent", "offcpu_skipped_short",
                                                               "offcpu_unmatched", "preempted"))
                                     for c in counters) / duration
        records = statistics.median(r["samples"] for r in results) / duration
        us_per_record = statistics.median(r["cpu_us_per_sample"] or 0 for r in results)
        lost_ns = (1 - ratio) * used / switches * 1e9 if switches else float("nan")
        print(f"{mode:>9} {ratio:>7.3f} {switches:>11,.0f} {records:>10,.0f} {us_per_record:>10.1f} "
              f"{lost_ns:>15,.0f}")


if __name__ == "__main__":
    main()
