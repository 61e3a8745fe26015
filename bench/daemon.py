"""`pyprof daemon` over a long run: JVMs coming and going (one in its own namespaces), a SIGTERM and a
restart half-way; what it costs and whether anything leaks or is lost.

Printed: the daemon's CPU per sample and per window, its RSS every minute (and its growth over the second
half of each daemon run), open file descriptors at the start and the end, windows logged vs windows in
the store, and whether the SIGTERM + restart lost a window.

    .venv/bin/python bench/daemon.py [--minutes 30] [--interval 15] [--rate 49]

Needs root (BPF) and the built Java workloads (`make setup`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import CLASSES, JDK_HOMES, NATIVE_LIBS, _container_script, _make_root  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Daemon:
    """One `pyprof daemon` process and its log lines."""

    def __init__(self, store: Path, marker: str, interval: float, rate: int) -> None:
        cmd = [sys.executable, "-m", "pyprof.cli.main", "daemon", "--out", str(store), "--interval",
               str(interval), "--rate", str(rate), "--match", marker]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True, stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self.rss: list[tuple[float, float]] = []     # (seconds since start, MiB)
        self.started = time.monotonic()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def sample(self) -> None:
        self.rss.append((time.monotonic() - self.started, rss_mib(self.proc.pid)))

    def windows(self) -> list[dict]:
        out = []
        for line in self.lines:
            m = re.search(r" window pid=(\d+) .*samples=(\d+)", line)
            if m:
                out.append({"pid": int(m.group(1)), "samples": int(m.group(2))})
        return out

    def stop(self) -> tuple[float, int]:
        """SIGTERM; returns (its CPU seconds, its exit code)."""
        cpu = cpu_seconds(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        return cpu, self.proc.wait(timeout=120)


def start_jvm(version: int, main: str, marker: str, *args: str) -> subprocess.Popen:
    java = JDK_HOMES[version] / "bin" / "java"
    return subprocess.Popen([str(java), f"-Dpyproftest.bench={marker}", "-cp", str(CLASSES),
                             f"-Djava.library.path={NATIVE_LIBS}", f"pyproftest.{main}", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def start_container_jvm(tmp: Path, marker: str) -> subprocess.Popen:
    jdk_path = f"/opt/bench-jdk-{secrets.token_hex(4)}"
    root = _make_root(tmp, jdk_path)
    script = _container_script(root, JDK_HOMES[21], jdk_path, f"-Dpyproftest.bench={marker}")
    return subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c",
                             script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)


def growth_second_half(rss: list[tuple[float, float]]) -> float:
    if len(rss) < 4:
        return float("nan")
    half = rss[len(rss) // 2:]
    return 100.0 * (half[-1][1] - half[0][1]) / half[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--interval", type=float, default=15)
    parser.add_argument("--rate", type=int, default=49)
    args = parser.parse_args()
    marker = secrets.token_hex(4)
    tmp = Path(tempfile.mkdtemp(prefix="pyprof-bench-daemon-"))
    store = tmp / "store"
    total_s = args.minutes * 60
    server = start_jvm(17, "HttpServerLoad", marker, "4", "2", "-1", "200")
    container = start_container_jvm(tmp, marker)
    churn: list[subprocess.Popen] = []
    runs: list[dict] = []
    daemon = Daemon(store, marker, args.interval, args.rate)
    fds_start = None
    started = time.monotonic()
    next_churn = started + 30
    restarted = False
    try:
        while time.monotonic() - started < total_s:
            time.sleep(5)
            now = time.monotonic()
            if fds_start is None and now - daemon.started > 60:
                fds_start = open_fds(daemon.proc.pid)
            if int(now - started) % 60 < 5:
                daemon.sample()
            if now >= next_churn:   # a JVM that lives 40 s, on JDK 21 and 25 in turn
                churn.append(start_jvm(21 if len(churn) % 2 else 25, "Phases", marker, "60,30,10", "100",
                                       "40"))
                next_churn = now + 60
            if not restarted and now - started >= total_s / 2:
                cpu, code = daemon.stop()
                runs.append({"cpu_s": cpu, "exit": code, "windows": daemon.windows(), "rss": daemon.rss,
                             "fds": (fds_start, None), "log": daemon.lines})
                daemon = Daemon(store, marker, args.interval, args.rate)
                fds_start = None
                restarted = True
        fds_end = open_fds(daemon.proc.pid)
        cpu, code = daemon.stop()
        runs.append({"cpu_s": cpu, "exit": code, "windows": daemon.windows(), "rss": daemon.rss,
                     "fds": (fds_start, fds_end), "log": daemon.lines})
    finally:
        for proc in (server, container, *churn):
            if proc.poll() is None:
                proc.kill()
        subprocess.run(["pkill", "-f", f"pyproftest.bench={marker}"], check=False)
    listing = subprocess.run([sys.executable, "-m", "pyprof.cli.main", "store", "ls", str(store),
                              "--json"], cwd=ROOT, capture_output=True, text=True, check=True)
    stored = json.loads(listing.stdout)["windows"]
    logged = sum(len(r["windows"]) for r in runs)
    print(f"pyprof daemon over {args.minutes:g} min, interval {args.interval:g} s, {args.rate} Hz "
          f"(HttpServerLoad + a JVM in its own namespaces + a Phases JVM every minute; restart half-way)")
    for i, r in enumerate(runs, 1):
        samples = sum(w["samples"] for w in r["windows"])
        per_sample = 1e6 * r["cpu_s"] / samples if samples else float("nan")
        peak = max((mib for _, mib in r["rss"]), default=float("nan"))
        print(f"run {i}: exit {r['exit']}, {len(r['windows'])} windows, {samples} samples, "
              f"CPU {r['cpu_s']:.1f} s ({per_sample:.0f} us per sample, all-in), peak RSS {peak:.0f} MiB, "
              f"RSS growth over the second half {growth_second_half(r['rss']):+.1f} %, "
              f"fds after 1 min / at the end {r['fds']}")
        print("  RSS (min: MiB): " + ", ".join(f"{t / 60:.0f}: {mib:.0f}" for t, mib in r["rss"]))
        if r["exit"] != 0:
            print("  its last log lines:\n    " + "\n    ".join(r["log"][-8:]))
    print(f"windows logged {logged}, windows in the store {len(stored)} "
          f"({'none lost' if len(stored) >= logged else f'{logged - len(stored)} LOST'})")


if __name__ == "__main__":
    main()
