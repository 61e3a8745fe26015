"""pyprof's memory over a long run on the server workload: `pyprof attach` (one profile open for the
whole run) and `pyprof daemon` (a profile per window) side by side on the same JVM, both at 99 Hz.

Printed every `--every` seconds: each process's RSS and CPU; at the end: RSS after start-up, at the end,
the peak, the growth over the second half of the run, the attach profile's samples and unique stacks
(what its memory may grow with), and the daemon's windows (its memory should not grow with them).

    .venv/bin/python bench/memory.py [--minutes 60] [--rate 99] [--every 60]

Needs root (BPF) and the built Java workloads (`make setup`).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.daemon import cpu_seconds, rss_mib  # noqa: E402
from bench.scaling import start_server  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def growth(series: list[tuple[float, float]]) -> float:
    """RSS growth over the second half of the run, MiB."""
    if len(series) < 2:
        return 0.0
    half = series[-1][0] / 2
    first = next(v for t, v in series if t >= half)
    return series[-1][1] - first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rate", type=int, default=99)
    parser.add_argument("--every", type=float, default=60, help="seconds between RSS lines")
    parser.add_argument("--window", type=float, default=60, help="the daemon's window, seconds")
    args = parser.parse_args()
    seconds = args.minutes * 60
    server = start_server(4, 4, 0)
    tmp = Path(tempfile.mkdtemp(prefix="pyprof-memory-"))
    out = tmp / "attach.pb.gz"
    attach = subprocess.Popen(
        [sys.executable, "-m", "pyprof.cli.main", "attach", str(server.pid), "-d", str(seconds), "-r",
         str(args.rate), "-o", str(out), "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL)
    daemon_log = open(tmp / "daemon.log", "w+")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "pyprof.cli.main", "daemon", "--out", str(tmp / "store"), "--interval",
         str(args.window), "--rate", str(args.rate), "--pid", str(server.pid)],
        cwd=ROOT, stderr=daemon_log, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    series: dict[str, list[tuple[float, float]]] = {"attach": [], "daemon": []}
    procs = {"attach": attach, "daemon": daemon}
    started = time.monotonic()
    print(f"# server pid {server.pid}, {args.rate} Hz, {args.minutes:g} min; files in {tmp}", flush=True)
    try:
        while attach.poll() is None:
            time.sleep(min(args.every, max(1.0, seconds + 30 - (time.monotonic() - started))))
            t = time.monotonic() - started
            parts = [f"{t:7.0f} s"]
            for name, p in procs.items():
                if p.poll() is None:
                    series[name].append((t, rss_mib(p.pid)))
                    parts.append(f"{name} RSS {series[name][-1][1]:6.1f} MiB CPU {cpu_seconds(p.pid):7.1f} s")
            print("  ".join(parts), flush=True)
        daemon_cpu = cpu_seconds(daemon.pid)
        daemon_peak = peak_rss_mib(daemon.pid)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
    finally:
        server.kill()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    assert attach.stdout is not None
    summary = json.loads(attach.stdout.read())
    from pyprof.output.pprof import read_pprof

    unique = len(read_pprof(str(out)).counts)
    daemon_log.seek(0)
    windows = [line for line in daemon_log.read().splitlines() if " window " in line]
    daemon_samples = 0
    for line in windows:
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        daemon_samples += int(fields.get("samples", 0))
    a, d = series["attach"], series["daemon"]
    print(f"attach: {summary['samples']} samples, {unique} unique stacks, RSS {a[0][1]:.0f} MiB after "
          f"{a[0][0]:.0f} s, {a[-1][1]:.0f} MiB at {a[-1][0]:.0f} s, peak {summary['peak_rss_mib']:.0f} MiB, "
          f"+{growth(a):.1f} MiB over the second half; CPU {summary['sampling_cpu_s']:.1f} s, "
          f"{summary['cpu_us_per_sample'] or 0:.0f} us/sample, lost {summary.get('lost_samples', 0)}, "
          f"BPF cache {summary.get('bpf_cache')}")
    print(f"daemon: {len(windows)} windows, {daemon_samples} samples, RSS {d[0][1]:.0f} MiB after "
          f"{d[0][0]:.0f} s, {d[-1][1]:.0f} MiB at {d[-1][0]:.0f} s, peak {daemon_peak:.0f} MiB, "
          f"+{growth(d):.1f} MiB over the second half; CPU {daemon_cpu:.1f} s "
          f"({1e6 * daemon_cpu / max(daemon_samples, 1):.0f} us/sample all-in)")


if __name__ == "__main__":
    main()
