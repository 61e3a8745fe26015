"""The long fuzz run: mutated VMStructs tables, code-cache walks, debug info, thread lists and unwinder
samples, fed to pyprof's real readers (tests/unit/fuzzing.py says what each target mutates and how a
case is classified). A sample of it runs in the suite (tests/unit/test_fuzz.py).

    .venv/bin/python bench/fuzz.py --cases 10000 [--seed S] [--target all|vmstructs|codecache|...]
                                   [--jdk 11,17,21,25] [--save DIR | --load DIR] [--case N]

One small JVM per JDK is started, read once and killed ("worlds"); the unwind target replays the
recorded samples of tests/unit/data. --cases is the total over the chosen targets. A failure prints its
seed, target and case id; the worlds of the run are then saved (or --save DIR), and
`--load DIR --seed S --target T --case N` replays that one case on the same bytes with its traceback.
Exit status: 0 no failure, 1 failures, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import JDK_VERSIONS  # noqa: E402
from tests.unit.fuzzing import (  # noqa: E402
    TARGETS,
    Fuzzer,
    Result,
    World,
    capture_world,
    load_worlds,
    save_worlds,
    unwind_recordings,
)

SLOWEST = 8


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/fuzz.py", description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=10_000, help="total cases over the chosen targets")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target", choices=("all", *TARGETS), default="all")
    p.add_argument("--jdk", default=",".join(map(str, JDK_VERSIONS)), help="JDKs to capture worlds from")
    p.add_argument("--save", type=Path, help="save the captured worlds here (for --load)")
    p.add_argument("--load", type=Path, help="use worlds saved by --save instead of starting JVMs")
    p.add_argument("--case", type=int, help="replay this one case of --target, with its traceback")
    p.add_argument("--no-trace-memory", action="store_true", help="no tracemalloc (faster, no memory bound)")
    args = p.parse_args(argv)
    if args.cases < 1 or (args.case is not None and args.target == "all"):
        p.error("--cases must be positive; --case needs one --target")
    return args


def worlds_for(args: argparse.Namespace) -> list[World]:
    if args.load:
        worlds = load_worlds(args.load)
        if not worlds:
            raise SystemExit(f"bench/fuzz.py: error: no saved worlds in {args.load}")
        return worlds
    started = time.monotonic()
    worlds = [capture_world(int(v)) for v in args.jdk.split(",")]
    print(f"captured {len(worlds)} JVMs (JDK {args.jdk}) in {time.monotonic() - started:.1f} s: "
          f"{sum(len(d) for w in worlds for _, d in w.cap.regions) >> 20} MiB of memory", flush=True)
    if args.save:
        save_worlds(worlds, args.save)
    return worlds


def replay_one(fuzzer: Fuzzer, target: str, case: int) -> int:
    source, built = fuzzer.case(target, case)
    print(f"seed {fuzzer.seed} target {target} case {case}: {source}, mutation {built.mutation}")
    result = fuzzer.run(target, case)
    print(f"{result.outcome}: {result.detail} ({result.seconds:.3f} s, peak {result.peak_bytes >> 10} KiB)")
    if result.outcome == "failure":
        _source, again = fuzzer.case(target, case)   # the same mutation, run bare for the traceback
        try:
            again.run()
        except Exception:   # noqa: BLE001 - shown, not handled
            traceback.print_exc()
    return 1 if result.outcome == "failure" else 0


def report(target: str, results: list[Result], seconds: float) -> None:
    outcomes = Counter(r.outcome for r in results)
    details = Counter(f"{r.outcome}:{r.detail}" for r in results)
    mutations = Counter(r.mutation for r in results)
    peak = max((r.peak_bytes for r in results), default=0)
    print(f"\n{target}: {len(results)} cases in {seconds:.1f} s - ok {outcomes['ok']}, "
          f"expected {outcomes['expected']}, FAILURE {outcomes['failure']}; largest peak {peak >> 10} KiB")
    print("  outcomes:  " + ", ".join(f"{k} {n}" for k, n in details.most_common()))
    print("  mutations: " + ", ".join(f"{k} {n}" for k, n in mutations.most_common()))
    for r in sorted(results, key=lambda r: r.seconds, reverse=True)[:SLOWEST]:
        print(f"  slow: case {r.case:5d} {r.seconds * 1000:7.1f} ms  {r.source} {r.mutation} -> "
              f"{r.outcome} {r.detail}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    targets = TARGETS if args.target == "all" else (args.target,)
    needs_worlds = any(t != "unwind" for t in targets)
    worlds = worlds_for(args) if needs_worlds else []
    fuzzer = Fuzzer(worlds, unwind_recordings(), args.seed, trace_memory=not args.no_trace_memory)
    if fuzzer.trace_memory:
        tracemalloc.start()
    if args.case is not None:
        return replay_one(fuzzer, args.target, args.case)
    per_target = [args.cases // len(targets) + (i < args.cases % len(targets)) for i in range(len(targets))]
    failures: list[Result] = []
    started = time.monotonic()
    for target, count in zip(targets, per_target):
        t0 = time.monotonic()
        results = []
        for n in range(count):
            results.append(fuzzer.run(target, n))
            if (n + 1) % 500 == 0:
                print(f"  {target}: {n + 1}/{count} ({time.monotonic() - t0:.0f} s)", file=sys.stderr,
                      flush=True)
        report(target, results, time.monotonic() - t0)
        failures += [r for r in results if r.outcome == "failure"]
    total = sum(per_target)
    elapsed = time.monotonic() - started
    print(f"\n{total} cases, seed {args.seed}, {elapsed:.0f} s: {len(failures)} FAILURE(s)")
    for r in failures:
        print(f"FAILURE {r.replay_hint(args.seed)}: {r.detail}")
    if failures and needs_worlds:
        where = args.load or args.save or Path(tempfile.mkdtemp(prefix="pyprof-fuzz-"))
        if not (args.load or args.save):
            save_worlds(worlds, where)
        print(f"replay one: .venv/bin/python bench/fuzz.py --load {where} --seed {args.seed} "
              f"--target TARGET --case N")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
