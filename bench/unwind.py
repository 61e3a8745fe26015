"""What unwinding costs per sample, and how much of it is inline expansion and line lookup.

Raw samples (registers + stack copies) are recorded once from a live JVM; the same samples are then
unwound again and again while the JVM keeps running (code and metadata are read from it):

  - full: inlining chains from the nmethods' debug info, line numbers from the line tables;
  - no debug info: the nmethod's own method only, no lines;
  - full without planned steps: every frame through Unwinder._step (what a frame costs without the
    per-pc plans of issue 12; the frames and counters are the same, see tests/unit/test_sample_path_speed);
each with cold caches (a new unwinder) and warm caches (the same samples a second time), with the
completeness of Java stacks and the unknown frames of the cold pass.

    .venv/bin/python bench/unwind.py [--jdk 17|21|25] [--workload Inlining|JitZoo|Mix|HttpServerLoad]
                                     [--seconds 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyprof.hotspot.method import MethodResolver  # noqa: E402
from pyprof.sampling.unwind import Unwinder  # noqa: E402
from pyprof.session.session import ProfileOptions, ProfileSession  # noqa: E402
from pyprof.symbols.kernel import KernelSymbols  # noqa: E402
from pyprof.symbols.native import NativeSymbolizer  # noqa: E402
from tests.conftest import CLASSES, JDK_HOMES, NATIVE_LIBS  # noqa: E402

DEBUG_NON_SAFEPOINTS = ["-XX:+UnlockDiagnosticVMOptions", "-XX:+DebugNonSafepoints"]
# HttpServerLoad: responses without Nagle's wait for the client's delayed ACK (else the server idles)
NODELAY = "-Dsun.net.httpserver.nodelay=true"


def start(jdk: int, workload: str) -> subprocess.Popen:
    proc = subprocess.Popen([str(JDK_HOMES[jdk] / "bin" / "java"), *DEBUG_NON_SAFEPOINTS, NODELAY, "-cp",
                             str(CLASSES), f"-Djava.library.path={NATIVE_LIBS}", f"pyproftest.{workload}"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    while not proc.stdout.readline().startswith("ready"):
        pass
    return proc


def record(pid: int, seconds: float, rate: int) -> tuple[ProfileSession, list]:
    session = ProfileSession.attach(pid, ProfileOptions(rate_hz=rate))
    assert session.sampler is not None and session.target is not None
    raw: list = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        raw += session.sampler.poll(100)
        session.target.live.poll(0)
    return session, raw


def fresh_unwinder(session: ProfileSession, kernel: KernelSymbols, debug_info: bool, plans: bool = True
                   ) -> Unwinder:
    assert session.target is not None
    jvm, live = session.target.jvm, session.target.live
    unwinder = Unwinder(jvm, live.lookup, MethodResolver(jvm.reader, jvm.layout), session.target.threads,
                        NativeSymbolizer(session.pid), kernel)
    unwinder.debug.available = debug_info
    if not plans:
        unwinder._planned_step = lambda *args: None   # type: ignore[method-assign]
    return unwinder


def per_sample_us(unwinder: Unwinder, raw: list) -> float:
    started = time.process_time()
    for sample in raw:
        unwinder.unwind(sample)
    return 1e6 * (time.process_time() - started) / len(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jdk", type=int, default=17, choices=sorted(JDK_HOMES))
    parser.add_argument("--workload", default="Inlining")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rate", type=int, default=499)
    args = parser.parse_args()
    proc = start(args.jdk, args.workload)
    try:
        session, raw = record(proc.pid, args.seconds, args.rate)
        kernel = KernelSymbols.load()
        frames = 0
        results = {}
        for label, debug_info, plans in (("full", True, True), ("no debug info", False, True),
                                         ("full, no plans", True, False)):
            unwinder = fresh_unwinder(session, kernel, debug_info, plans)
            cold = per_sample_us(unwinder, raw)
            stats = unwinder.stats
            complete = 100.0 * stats.java_reached_root / stats.java_samples if stats.java_samples else 0.0
            unknown = 100.0 * stats.unknown_total / stats.frames if stats.frames else 0.0
            warm = per_sample_us(unwinder, raw)
            results[label] = (cold, warm, complete, unknown)
            if debug_info:
                some = raw[:200]
                frames = sum(len(pf.frames) for s in some for pf in unwinder.unwind(s)) / len(some)
        session.finish()
    finally:
        proc.kill()
    print(f"JDK {args.jdk}, {args.workload} (-XX:+DebugNonSafepoints), {len(raw)} samples, "
          f"{frames:.1f} logical frames per sample")
    print(f"{'':16}{'cold us/sample':>16}{'warm us/sample':>16}{'complete %':>12}{'unknown %':>11}")
    for label, (cold, warm, complete, unknown) in results.items():
        print(f"{label:<16}{cold:>16.1f}{warm:>16.1f}{complete:>12.2f}{unknown:>11.2f}")
    full, bare = results["full"], results["no debug info"]
    print(f"inline expansion + lines: {full[0] - bare[0]:+.1f} us cold, "
          f"{full[1] - bare[1]:+.1f} us warm per sample")


if __name__ == "__main__":
    main()
