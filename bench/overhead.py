"""What profiling costs the target and pyprof itself, measured in one run (machines are noisy).

A JVM runs tests/java Throughput (one thread of steady C2-compiled work printing "ops N NANOS" every
250 ms). Windows alternate, interleaved and repeated: unprofiled, `pyprof attach` at 99 Hz, unprofiled,
at 999 Hz, ... The target's throughput in each profiled window (after pyprof's start-up, which competes
for CPU only once) is compared with the unprofiled windows around it.

Printed: throughput ratio profiled / unprofiled per rate, pyprof's CPU per sample (median over runs, from
attach's own --json summary: CPU after start-up / samples), its start-up CPU, peak RSS, and the time from
`attach` to the first sample.

`--compare DIR` profiles each window twice more, with the pyprof checkout in DIR (e.g. of main) and
with this one in turn, and prints both: before/after in one run.

    .venv/bin/python bench/overhead.py [--jdk 17|21|25] [--rounds 3] [--window 10] [--compare DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import CLASSES, JDK_HOMES  # noqa: E402


class ThroughputLog:
    """Reads the workload's "ops N NANOS" lines in a thread, stamping each with our monotonic clock."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.points: list[tuple[float, float]] = []   # (time, ops per second)
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ops":
                self.points.append((time.monotonic(), int(parts[1]) * 1e9 / int(parts[2])))

    def mean(self, start: float, end: float) -> float:
        values = [v for t, v in self.points if start <= t <= end]
        return statistics.fmean(values) if values else float("nan")


def start_workload(jdk: int) -> subprocess.Popen:
    java = JDK_HOMES[jdk] / "bin" / "java"
    proc = subprocess.Popen([str(java), "-cp", str(CLASSES), "pyproftest.Throughput"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    while proc.stdout.readline().strip() != "ready":
        pass
    return proc


def profiled_window(pid: int, rate: int, seconds: float, log: ThroughputLog, root: Path = ROOT) -> dict:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pyprof.cli.main", "attach", str(pid), "-d", str(seconds),
                           "-r", str(rate), "-o", "/tmp/pyprof-bench.pb.gz", "--json"],
                          capture_output=True, text=True, cwd=root, check=True)
    ended = time.monotonic()
    summary = json.loads(done.stdout)
    sampling_from = started + summary["startup_s"] + 0.5
    summary["throughput"] = log.mean(sampling_from, ended)
    summary["wall_to_first_sample_s"] = summary["first_sample_s"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jdk", type=int, default=17, choices=sorted(JDK_HOMES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--rates", default="99,999")
    parser.add_argument("--compare", type=Path, help="another pyprof checkout, profiled in turn with ours")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    trees = [("", ROOT)] if args.compare is None else [(" old", args.compare), (" new", ROOT)]

    proc = start_workload(args.jdk)
    log = ThroughputLog(proc)
    time.sleep(3)  # let the throughput settle after warm-up
    baseline: list[float] = []
    runs: dict[tuple[int, str], list[dict]] = {(r, name): [] for r in rates for name, _ in trees}
    try:
        for _ in range(args.rounds):
            for rate in rates:
                start = time.monotonic()
                time.sleep(args.window)
                baseline.append(log.mean(start + 0.5, time.monotonic()))
                for name, root in trees:
                    runs[(rate, name)].append(profiled_window(proc.pid, rate, args.window, log, root))
        start = time.monotonic()
        time.sleep(args.window)
        baseline.append(log.mean(start + 0.5, time.monotonic()))
    finally:
        proc.kill()
    base = statistics.median(baseline)
    print(f"JDK {args.jdk}, Throughput workload, {args.rounds} rounds of {args.window:.0f} s windows, "
          f"unprofiled median {base:,.0f} ops/s")
    print(f"{'rate':>10} {'ratio':>7} {'samples':>8} {'lost':>5} {'us/sample':>10} {'startup cpu':>12} "
          f"{'first sample':>13} {'peak RSS':>9} {'unknown %':>9}")
    for (rate, name), results in runs.items():
        ratio = statistics.median(r["throughput"] for r in results) / base
        label = f"{rate}{name}"
        print(f"{label:>10} {ratio:>7.3f} {statistics.median(r['samples'] for r in results):>8.0f} "
              f"{sum(r['lost'] for r in results):>5} "
              f"{statistics.median(r['cpu_us_per_sample'] for r in results):>10.1f} "
              f"{statistics.median(r['startup_cpu_s'] for r in results):>11.2f}s "
              f"{statistics.median(r['first_sample_s'] for r in results):>12.2f}s "
              f"{max(r['peak_rss_mib'] for r in results):>7.0f}MiB "
              f"{statistics.median(r['unknown_frames_percent'] for r in results):>9.2f}")


if __name__ == "__main__":
    main()
