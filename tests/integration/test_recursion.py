"""Recursive methods compiled by C2 and inlined into themselves (tests/java/src/pyproftest/Recursion.java:
fib, an interface recursion over three node classes, and Deflater calls between them on the same threads):
every stack reaches its root, and no frame is joined to a caller the source does not allow.

(JDK 25 once lost fib's caller in 3.3 % of the samples - `fib [inlined] <- fib [C2] <- [unknown]`: its
epilogue's return poll and its prologue's entry barrier were not decoded - and once put fib under
Deflater.end, which never calls it: a stale return address taken for a caller.)
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pyprof.model import FrameKind, StackKey
from pyprof.output.pprof import read_pprof
from pyprof.sampling.unwind import ROOT_SYMBOLS
from tests.conftest import JDK_VERSIONS, pyprof, require
from tests.integration.joins import java_names, wrong_callers

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]

R = "pyproftest.Recursion"
SUMS = {f"{R}$Leaf.sum", f"{R}$Pair.sum", f"{R}$Triple.sum"}
# Who may call whom (the workload's header says so); any other caller of these is a wrongly joined stack
ALLOWED_CALLERS = {
    f"{R}.fib": {f"{R}.fib", f"{R}.fibPhase"},
    f"{R}.fibPhase": {f"{R}.run"},
    f"{R}.treePhase": {f"{R}.run"},
    f"{R}.deflatePhase": {f"{R}.run"},
    f"{R}.run": set(),      # the thread's run(): called by the JVM (the call stub), by no Java method
    **{s: {f"{R}$Pair.sum", f"{R}$Triple.sum", f"{R}.treePhase"} for s in SUMS},
}
MIN_SAMPLES = 300


def wrong_joins(samples: dict[StackKey, int]) -> Counter:
    bad = wrong_callers(samples, ALLOWED_CALLERS)
    for key, n in samples.items():
        names = java_names(key)
        # a complete stack's outermost Java frame is run()
        if names and names[-1] != f"{R}.run" and complete(key):
            bad[f"{names[-1]} at the root"] += n
    return bad


def complete(key: StackKey) -> bool:
    return key.frames[-1].frames[-1].name.split("(", 1)[0] in ROOT_SYMBOLS


def fib_inlined_into_fib(key: StackKey) -> bool:
    """A compiled fib frame with fib inlined into it: the recursion C2 compiles into itself."""
    return any(len(pf.frames) > 1 and pf.frames[-1].name == f"{R}.fib" and pf.frames[-1].kind is FrameKind.C2
               and any(lf.name == f"{R}.fib" for lf in pf.frames[:-1]) for pf in key.frames)


@pytest.mark.parametrize("jdk", JDK_VERSIONS, ids=[f"jdk{v}" for v in JDK_VERSIONS])
def test_recursive_compiled_methods_reach_the_root_with_only_possible_callers(jdk, java_workload,
                                                                                tmp_path: Path) -> None:
    # GIVEN two threads running fib (C2 inlines it into itself), an interface recursion and Deflater
    # calls in turn, warmed up (C2 has compiled them)
    jvm = java_workload(jdk, "Recursion", "2")
    out = tmp_path / "recursion.pb.gz"
    # WHEN sampled at 499 Hz
    done = pyprof("attach", str(jvm.pid), "-d", "12", "-r", "499", "--json", "--no-progress", "-o", str(out),
                  timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    samples = {k: n for k, n in read_pprof(str(out)).counts.items() if k.thread_name.startswith("rec-")}
    total = sum(samples.values())
    require(total >= MIN_SAMPLES // 3, f"too few samples on this machine: {summary}")
    # THEN C2 did compile fib with fib inlined into it (what this test is about) ...
    inlined = sum(n for k, n in samples.items() if fib_inlined_into_fib(k))
    assert inlined >= 0.05 * total, (inlined, total)
    # ... every sample of the recursing threads reaches the thread's entry ...
    broken = Counter()
    for key, n in samples.items():
        if not complete(key):
            broken[" <- ".join(lf.name for pf in key.frames[:3] for lf in pf.frames[-1:]) + " ... " +
                   " <- ".join(pf.frames[-1].name for pf in key.frames[-2:])] += n
    assert not broken, (sum(broken.values()), total, broken.most_common(5))
    # ... and no frame has a caller the source does not allow
    bad = wrong_joins(samples)
    assert not bad, bad.most_common(5)
    assert summary["unknown_frames"] == 0, summary["unwind"]
