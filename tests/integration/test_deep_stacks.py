"""Java stacks deeper than the stack copy: completed from live memory, or marked [truncated] at their
root end, never joined wrongly (tests/java/src/pyproftest/DeepStacks.java: a recursion a -> b -> c -> a
of a known depth with the work at the bottom)."""

from __future__ import annotations

import collections
import json
from collections import Counter
from pathlib import Path

import pytest

from pyprof.output.pprof import read_pprof
from tests.conftest import pyprof, require
from tests.integration.joins import java_names, wrong_callers

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]

D = "pyproftest.DeepStacks$Deep"
ALLOWED_CALLERS = {f"{D}.a": {f"{D}.c", "pyproftest.DeepStacks.run"}, f"{D}.b": {f"{D}.a"},
                   f"{D}.c": {f"{D}.b"}, f"{D}.work": {f"{D}.a", f"{D}.b", f"{D}.c"}}
RECURSION = {f"{D}.a", f"{D}.b", f"{D}.c"}


def profile_deep(java_workload, tmp_path: Path, depth: int, *extra: str, jdk: int = 17):
    jvm = java_workload(jdk, "DeepStacks", str(depth), "2", "600", jvm_flags=("-Xss64m",))
    out = tmp_path / "deep.pb.gz"
    done = pyprof("attach", str(jvm.pid), "-d", "12", "-r", "499", "--json", "--no-progress", "-o", str(out),
                  *extra, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    profile = read_pprof(str(out))
    samples = {k: n for k, n in profile.counts.items() if k.thread_name.startswith("deep-")}
    require(sum(samples.values()) >= 100, f"too few samples on this machine: {summary}")
    return summary, samples


def check_chains(samples: dict) -> Counter:
    return wrong_callers(samples, ALLOWED_CALLERS)


def test_stack_deeper_than_the_copy_is_completed_exactly(jdk, java_workload, tmp_path) -> None:
    # GIVEN two threads 2500 frames deep (~45 KiB of stack: more than the 32 KiB copy), a recursion
    # that C2 compiles and partly inlines into itself
    depth = 2500
    summary, samples = profile_deep(java_workload, tmp_path, depth, jdk=jdk)
    # THEN the walk read the rest of the stack live ...
    assert summary["unwind"]["live_stack_reads"] > 0, summary["unwind"]
    # ... and every sample taken at the bottom (Deep.work, the leaf) has the whole recursion: exactly
    # depth + 1 frames of it, under run(). Samples above it were taken while the recursion returned or
    # descended again (legitimately shallower: a slow, loaded machine spends more time there).
    at_bottom = {key: n for key, n in samples.items() if java_names(key)[:1] == [f"{D}.work"]}
    total, bottom = sum(samples.values()), sum(at_bottom.values())
    assert bottom >= 0.8 * total, (bottom, total)
    exact = sum(n for key, n in at_bottom.items()
                if sum(name in RECURSION for name in java_names(key)) == depth + 1
                and java_names(key)[-1] == "pyproftest.DeepStacks.run")
    assert exact >= 0.99 * bottom, (exact, bottom, summary["unwind"], collections.Counter(
        sum(name in RECURSION for name in java_names(key)) for key in at_bottom).most_common(8))
    # AND no frame has a caller it cannot have
    bad = check_chains(samples)
    assert not bad, bad.most_common(5)


def test_stack_deeper_than_every_bound_is_marked_truncated(java_workload, tmp_path) -> None:
    # GIVEN threads 20000 frames deep: more than the copy, the live-read budget and the depth cap
    summary, samples = profile_deep(java_workload, tmp_path, 20_000)
    total = sum(samples.values())
    # THEN their stacks end in [truncated] at the root end; the few others were sampled while the
    # recursion was still shallow (going down or coming back) and are complete, under run()
    truncated = sum(n for key, n in samples.items() if key.frames[-1].frames[0].name == "[truncated]")
    assert truncated >= 0.9 * total, (truncated, total)
    for key in samples:
        names = java_names(key)
        if not names:
            continue   # sampled in the VM before the thread's first Java frame, or after its last
        assert key.frames[-1].frames[0].name == "[truncated]" or names[-1] == "pyproftest.DeepStacks.run", \
            names[-3:]
    # AND what is shown is a correct chain from the leaf, with no unknown frame counted for it
    bad = check_chains(samples)
    assert not bad, bad.most_common(5)
    assert summary["unknown_frames"] <= 0.001 * summary["frames"], summary
