"""What `-e alloc` (and `-e lock`) costs the target, side by side with no profiling, in one run.

A JVM runs tests/java EventThroughput (one thread: `young` builds small object graphs that die young,
~1 GB/s; `park` parks with its permit present, so every unit is one Parker::park entry and return).
pyprof's event program runs on it for the whole run, as `attach -e alloc` runs it (the sampler module
with the program, records unwound and aggregated through the session's route_record), and its probes
are attached in one window and detached in the next: unprofiled, profiled, unprofiled, ... Each
profiled window's throughput is compared with the unprofiled windows on either side of it.

Why toggled windows of a few seconds, not a pyprof started per window, and `young`, not `alloc` (which
keeps 4096 units alive, so some are promoted): `alloc`'s throughput moves between regimes for seconds at
a time on this machine with nothing else running (unprofiled 5-s windows: 800k-1.2M ops/s, bimodal, with
G1 or Serial GC, pinned to a CPU or not); `young` stays within ±4 % like a CPU-bound loop. Short
alternating windows, many of them, put both kinds in the same conditions; the median of the paired
ratios is then the cost. Start-up is not in it (bench/startup.py measures that).

Printed: the throughput ratio profiled / unprofiled (median over rounds, and its interquartile range),
the probe hits and records per second, the cost per probe hit in the target's thread: (1 - ratio) x 1 s /
hits per second (the workload is one busy thread, so its lost throughput is its lost CPU time), and
pyprof's CPU per record (unwinding and aggregation in Python). Also the target's work per CPU second of
its own (user + system time of all its threads, where the uprobe handlers run), profiled / unprofiled.
For alloc, the unwinding of the same records replayed in one process: the full walk (kernel and VM
frames by CFI, then only the Java part kept) against the walk begun at the JavaThread's anchor that the
session does, and how many records give the same Java frames both ways. And the kernel's own measure of
the BPF programs' run time per run (BPF_ENABLE_STATS, bench/bpf_stats.py), which the machine's load does
not disturb; the uprobe's trap (int3, single-step, ~1 us) comes on top of it.

    .venv/bin/python bench/alloc.py [--event alloc|lock] [--jdk 17] [--interval 512k] [--rounds 30]
                                    [--window 2]
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
from pyprof.model import ProfileData  # noqa: E402
from pyprof.sampling.alloc import AllocProgram, parse_interval  # noqa: E402
from pyprof.sampling.events import java_part  # noqa: E402
from pyprof.sampling.lock import LockProgram  # noqa: E402
from pyprof.sampling.programs import EventPlan  # noqa: E402
from pyprof.sampling.sampler import Sampler  # noqa: E402
from pyprof.session.session import JvmTarget, route_record  # noqa: E402
from tests.conftest import CLASSES, JDK_HOMES  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
BPF_PROG_TYPE_KPROBE = 2   # uprobes run kprobe-type programs
# A fixed, pre-touched heap: G1 resizing the default heap during the run adds its own swings
WORKLOAD_JVM_FLAGS = ("-Xms2g", "-Xmx2g", "-XX:+AlwaysPreTouch")
SETTLE_SECONDS = 5
SKIP_AFTER_TOGGLE = 0.3    # seconds of a window not measured: the probes attach or detach meanwhile
REPLAYED = 3000            # records unwound again both ways (alloc)
REPLAY_PASSES = 5
HITS = {"alloc": ("alloc_events", "alloc_samples"), "lock": ("parks", "lock_records")}


def cpu_seconds(pid: int) -> float:
    """The target's CPU time (all threads, user + system: uprobe handlers run in its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start_workload(jdk: int, mode: str) -> subprocess.Popen:
    java = JDK_HOMES[jdk] / "bin" / "java"
    cmd = [str(java), *WORKLOAD_JVM_FLAGS, "-cp", str(CLASSES), "pyproftest.EventThroughput", mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    while proc.stdout.readline().strip() != "ready":
        pass
    return proc


class ToggledSession:
    """One event program on one JVM for the whole run; its probes attached only while profiling."""

    def __init__(self, pid: int, program) -> None:
        self.pid, self.program = pid, program
        self.target = JvmTarget.open(pid)
        self.sampler = Sampler(pid, rate_hz=program.records_per_second, cpu=False, programs=[program])
        self.plan = EventPlan((program.name,), False, {program.name: program},
                              {program.event: (program.name,)})
        self.profiles = {program.name: ProfileData(event=program.name)}
        self.kept: list = []
        self.records = 0
        self.cpu_s = 0.0        # pyprof's CPU while profiling (draining, unwinding, aggregating)
        self.sampler.start()
        self.target.threads.refresh()
        self.sampler.set_java_threads(self.target.threads.anchor_addresses())
        self.sampler.remove_target(pid)
        self.sampler.poll(0)

    def window(self, seconds: float, log: ThroughputLog, profiled: bool) -> dict:
        if profiled:
            self.sampler.add_target(self.pid)
        raw_before = self.sampler.raw_counters()
        cpu_before, records_before = time.process_time(), self.records
        began = time.monotonic()
        target_cpu = cpu_seconds(self.pid)
        while time.monotonic() < began + seconds:
            batch = self.sampler.poll(100)
            self.target.live.poll(0)      # once per batch, as the session does
            for sample in batch:
                route_record(self.plan, self.target, self.profiles, sample)
                self.records += 1
                if len(self.kept) < REPLAYED:
                    self.kept.append(sample)
        now = time.monotonic()
        rate = log.mean(began + SKIP_AFTER_TOGGLE, now)
        per_cpu = rate * (now - began) / max(cpu_seconds(self.pid) - target_cpu, 1e-9)
        if profiled:
            self.sampler.remove_target(self.pid)
            for sample in self.sampler.poll(0):   # what came before the probes were gone
                route_record(self.plan, self.target, self.profiles, sample)
                self.records += 1
            self.cpu_s += time.process_time() - cpu_before
        counters = self.program.counters([a - b for a, b in zip(self.sampler.raw_counters(), raw_before)])
        hits, records = (counters[k] for k in HITS[self.program.name])
        return {"rate": rate, "per_cpu": per_cpu, "hits_per_s": hits / seconds,
                "records_per_s": records / seconds, "routed": self.records - records_before}

    def bpf_ns_per_run(self) -> float:
        ns = runs = 0
        probes = self.program.uprobes
        for fn in probes.entry_functions + tuple(f + "_return" for f in probes.return_functions):
            fd = bpf_stats.program_fd(self.sampler._bpf, fn, BPF_PROG_TYPE_KPROBE)
            spent, count = bpf_stats.run_stats(fd)
            ns, runs = ns + spent, runs + count
        return ns / max(runs, 1)

    def close(self) -> None:
        self.sampler.close()
        self.target.close()


def replay_walks(target: JvmTarget, records: list) -> dict:
    """µs per record of the full walk and of the anchor-first walk over the same records (alternated
    passes; medians), and the records whose Java frames agree."""
    unwinder = target.unwinder
    full = lambda s: java_part(unwinder.unwind(s))  # noqa: E731
    anchored = lambda s: java_part(unwinder.unwind(s, java_only=True))  # noqa: E731
    same = sum(1 for s in records if full(s) == anchored(s))
    times: dict[str, list[float]] = {"full": [], "anchor": []}
    for _ in range(REPLAY_PASSES):
        for name, walk in (("full", full), ("anchor", anchored)):
            began = time.process_time()
            for sample in records:
                walk(sample)
            times[name].append((time.process_time() - began) * 1e6 / max(len(records), 1))
    return {"same": same, "records": len(records), "full_us": statistics.median(times["full"]),
            "anchor_us": statistics.median(times["anchor"])}


def quartiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return f"{q[0]:.3f}-{q[2]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--event", default="alloc", choices=sorted(HITS))
    parser.add_argument("--jdk", type=int, default=17, choices=sorted(JDK_HOMES))
    parser.add_argument("--interval", default="512k", help="alloc: sampling interval in bytes")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--window", type=float, default=2.0, help="seconds per window")
    parser.add_argument("--workload", default="", help="EventThroughput's mode (default: young for alloc, "
                        "park for lock; alloc: the one with promotion)")
    args = parser.parse_args()
    program = AllocProgram(parse_interval(args.interval)) if args.event == "alloc" else LockProgram()

    mode = args.workload or ("young" if args.event == "alloc" else "park")
    proc = start_workload(args.jdk, mode)
    log = ThroughputLog(proc)
    stats_fd = bpf_stats.enable_stats()
    session = None
    try:
        session = ToggledSession(proc.pid, program)
        time.sleep(SETTLE_SECONDS)  # let the throughput settle after warm-up
        plain = [session.window(args.window, log, profiled=False)]
        runs: list[dict] = []
        for _ in range(args.rounds):
            runs.append(session.window(args.window, log, profiled=True))
            plain.append(session.window(args.window, log, profiled=False))
        bpf_us = session.bpf_ns_per_run() / 1000
        replay = replay_walks(session.target, session.kept) if args.event == "alloc" else None
        cpu_us = session.cpu_s * 1e6 / max(sum(r["routed"] for r in runs), 1)
        lost = session.sampler.counters().lost
    finally:
        bpf_stats.close(stats_fd)
        if session is not None:
            session.close()
        proc.kill()
    # each profiled window against the unprofiled windows on either side of it (the machine drifts)
    paired = [r["rate"] / statistics.fmean([plain[i]["rate"], plain[i + 1]["rate"]])
              for i, r in enumerate(runs)]
    per_cpu = [r["per_cpu"] / statistics.fmean([plain[i]["per_cpu"], plain[i + 1]["per_cpu"]])
               for i, r in enumerate(runs)]
    ratio = statistics.median(paired)
    hits = statistics.median(r["hits_per_s"] for r in runs)
    records = statistics.median(r["records_per_s"] for r in runs)
    cost_us = (1 - ratio) * 1e6 / hits if hits else float("nan")
    what = f"interval {args.interval}" if args.event == "alloc" else "threshold 10 us"
    rates = [p["rate"] for p in plain]
    print(f"JDK {args.jdk}, -e {args.event} ({what}) on EventThroughput {mode}, {args.rounds} rounds of "
          f"{args.window:.0f} s windows; "
          f"unprofiled median {statistics.median(rates):,.0f} ops/s "
          f"(range {min(rates):,.0f}-{max(rates):,.0f})")
    print(f"ratio {ratio:.3f} (interquartile {quartiles(paired)}), probe hits {hits:,.0f}/s, records "
          f"{records:,.0f}/s, lost {lost}, cost {cost_us:.2f} us per hit in the "
          f"target; work per CPU second of the target profiled / unprofiled {statistics.median(per_cpu):.3f} "
          f"(interquartile {quartiles(per_cpu)}); BPF programs {bpf_us:.2f} us per run (kernel stats); "
          f"pyprof's CPU {cpu_us:,.0f} us per record")
    if replay is not None:
        print(f"unwinding a record, replayed in one process: full walk {replay['full_us']:.1f} us, from the "
              f"anchor {replay['anchor_us']:.1f} us; same Java frames in {replay['same']} of "
              f"{replay['records']} records")


if __name__ == "__main__":
    main()
