"""What `pyprof attach` costs to start, cold (BPF compiled by bcc) and warm (loaded from the BPF cache), in
one run: rounds alternate cold and warm on one JVM (machines are noisy; medians are printed).

A JVM runs tests/java Throughput (or --workload HttpServerLoad). Each round runs `pyprof attach -d
SECONDS --json` twice: with an empty cache directory (cold), then with the one the first run filled
(warm). Printed per mode, from attach's own summary: the process's start before the session (interpreter
and imports), time from the session's start to the first sample and from exec to the first sample,
start-up CPU, RSS at the end of start-up, peak RSS, and the cache's hits and misses.

    .venv/bin/python bench/startup.py [--jdk 17|21|25] [--rounds 3] [--seconds 2] [--workload NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import ThroughputLog, start_workload  # noqa: E402
from tests.conftest import CLASSES, JDK_HOMES  # noqa: E402

COLUMNS = (("before_startup_s", "imports", "s"), ("first_sample_s", "1st sample", "s"),
           ("first_sample_since_exec_s", "since exec", "s"), ("startup_cpu_s", "start CPU", "s"),
           ("startup_rss_mib", "start RSS", "MiB"), ("peak_rss_mib", "peak RSS", "MiB"))


def attach(pid: int, seconds: float, cache: Path) -> dict:
    env = dict(os.environ, PYPROF_BPF_CACHE=str(cache))
    done = subprocess.run([sys.executable, "-m", "pyprof.cli.main", "attach", str(pid), "-d", str(seconds),
                           "-o", "/tmp/pyprof-bench-startup.pb.gz", "--json", "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    summary = json.loads(done.stdout)
    summary["first_sample_since_exec_s"] = summary["before_startup_s"] + (summary["first_sample_s"] or 0.0)
    return summary


def start_http_workload(jdk: int) -> subprocess.Popen:
    java = JDK_HOMES[jdk] / "bin" / "java"
    proc = subprocess.Popen([str(java), "-cp", str(CLASSES), "pyproftest.HttpServerLoad"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    while "ready" not in proc.stdout.readline():
        pass
    ThroughputLog(proc)   # drains its "requests N" lines
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jdk", type=int, default=17, choices=sorted(JDK_HOMES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="sampling per run")
    parser.add_argument("--workload", default="Throughput", choices=("Throughput", "HttpServerLoad"))
    args = parser.parse_args()
    if args.workload == "Throughput":
        proc = start_workload(args.jdk)
        ThroughputLog(proc)   # drains its "ops" lines
    else:
        proc = start_http_workload(args.jdk)
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    try:
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="pyprof-bench-bpf-") as tmp:
                cache = Path(tmp) / "cache"
                runs["cold"].append(attach(proc.pid, args.seconds, cache))
                runs["warm"].append(attach(proc.pid, args.seconds, cache))
    finally:
        proc.kill()
    print(f"JDK {args.jdk}, {args.workload}, {args.rounds} rounds of cold + warm "
          f"`attach -d {args.seconds:g}` "
          f"(medians; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(f"{'':>5} " + " ".join(f"{title:>11}" for _key, title, _unit in COLUMNS) + "  cache hits/misses")
    for mode, results in runs.items():
        cells = [f"{statistics.median(r[key] for r in results):>8.{0 if unit == 'MiB' else 2}f}{unit:<3}"
                 for key, _title, unit in COLUMNS]
        hits = sum(r["bpf_cache"]["hits"] for r in results)
        misses = sum(r["bpf_cache"]["misses"] for r in results)
        print(f"{mode:>5} " + " ".join(cells) + f"  {hits}/{misses}")


if __name__ == "__main__":
    main()
