"""Java-exact stacks: inlined frames with their lines, every kind of frame named, current thread names.

Workloads (tests/java/src/pyproftest): Inlining (inner inlined into outer by C2, lines marked),
JitZoo (lambdas, an OSR loop, a deoptimization storm, CRC32 intrinsics, zlib in native code),
Threads (four workers, two renamed after start, one of them by another thread).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pyprof.model import FrameKind, ProfileData
from pyprof.output.pprof import read_pprof
from tests.conftest import go_pprof, pyprof
from tests.integration.test_workloads import marker_line

INNER, OUTER = "pyproftest.Inlining.inner", "pyproftest.Inlining.outer"
DEBUG_NON_SAFEPOINTS = ("-XX:+UnlockDiagnosticVMOptions", "-XX:+DebugNonSafepoints")
pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]


def profile_of(pid: int, out: Path, seconds: float = 6) -> ProfileData:
    done = pyprof("attach", str(pid), "-d", str(seconds), "-r", "199", "-o", str(out), timeout=seconds + 90)
    assert done.returncode == 0, done.stderr
    return read_pprof(str(out))


def profile_and_summary(pid: int, out: Path, seconds: float) -> tuple[ProfileData, dict]:
    """The profile and the `--json` summary (its unwinder counters) of one attach."""
    done = pyprof("attach", str(pid), "-d", str(seconds), "-r", "199", "-o", str(out), "--json",
                  timeout=seconds + 90)
    assert done.returncode == 0, done.stderr
    return read_pprof(str(out)), json.loads(done.stdout)


def samples_of(profile: ProfileData, thread: str) -> dict:
    return {key: n for key, n in profile.counts.items() if key.thread_name == thread}


def test_inlined_callee_shows_under_its_caller_with_both_lines(jdk, java_workload, tmp_path) -> None:
    # GIVEN a hot outer() whose callee inner() C2 inlines. C2 records debug info (PcDescs) only at
    # safepoints and calls; inner's unrolled loop has neither, so without -XX:+DebugNonSafepoints every
    # profiler (JFR, async-profiler, pyprof) can only name the nearest safepoint's scope (outer's loop).
    # With it, each PC has its own inlining chain, and pyprof must decode it exactly.
    jvm = java_workload(jdk, "Inlining", jvm_flags=DEBUG_NON_SAFEPOINTS)
    inner_lines = {marker_line("Inlining", m) for m in ("inner-loop", "inner-hot")}
    call_line = marker_line("Inlining", "outer-call")
    # WHEN pyprof profiles it
    samples = samples_of(profile_of(jvm.pid, tmp_path / "p.pb.gz"), "main")
    # THEN inner appears as an inlined frame inside outer's compiled frame, each with its own line
    in_inner = exact = 0
    for key, n in samples.items():
        for frame in key.frames:
            names = [lf.name for lf in frame.frames]
            if INNER not in names:
                continue
            in_inner += n
            inner, outer = frame.frames[0], frame.frames[-1]
            shape = (inner.name, inner.kind, outer.name, outer.kind)
            if shape == (INNER, FrameKind.INLINED, OUTER, FrameKind.C2) \
                    and inner.line in inner_lines and outer.line == call_line:
                exact += n
    total = sum(samples.values())
    assert in_inner >= 0.5 * total, (in_inner, total)
    assert exact >= 0.95 * in_inner, (exact, in_inner)


def test_jit_zoo_every_kind_of_frame_is_named(java_workload, tmp_path) -> None:
    # GIVEN lambdas, an OSR loop, a deoptimization storm, CRC32 intrinsics and zlib, one thread each
    # (the stream pipeline and its lambdas are inlined: see the inlining test for why the flag)
    jvm = java_workload(21, "JitZoo", jvm_flags=DEBUG_NON_SAFEPOINTS)
    out = tmp_path / "zoo.pb.gz"
    profile, summary = profile_and_summary(jvm.pid, out, seconds=8)

    def names(thread: str) -> Counter:
        return Counter(lf.name for key, n in samples_of(profile, thread).items()
                       for f in key.frames for lf in f.frames for _ in range(n))

    # THEN the lambda bodies and their hidden classes are named as Java names them
    lambdas = names("lambdas")
    assert any(n.startswith("pyproftest.JitZoo.lambda$lambdaLoop$") for n in lambdas), lambdas.most_common(8)
    assert any("JitZoo$$Lambda" in n for n in lambdas), lambdas.most_common(20)
    # AND the OSR loop is its own leaf, marked OSR and compiled
    osr = samples_of(profile, "osr")
    leaf = Counter((f.frames[0].name, f.frames[0].osr, f.frames[0].kind) for key, n in osr.items()
                   for f in key.frames[:1] for _ in range(n))
    (name, is_osr, kind), count = leaf.most_common(1)[0]
    assert name == "pyproftest.JitZoo.osrLoop" and is_osr and kind in (FrameKind.C1, FrameKind.C2), leaf
    assert count >= 0.9 * sum(osr.values())
    # AND the deoptimization storm does not break unwinding: the victim is named, frames stay known
    deopt = samples_of(profile, "deopt")
    assert any(lf.name == "pyproftest.JitZoo$Victim.work" for key in deopt for f in key.frames
               for lf in f.frames)
    frames = sum(len(key.frames) * n for key, n in deopt.items())
    unknown = sum(n for key, n in deopt.items() for f in key.frames if f.frames[0].kind is FrameKind.UNKNOWN)
    assert unknown <= 0.01 * frames, (unknown, frames)
    # AND frames being deoptimized were unwound: each round, Victim.workThenDeflate's compiled frame is
    # deoptimized while it waits for a ~50 ms native deflate (its return address is the deopt handler, the
    # original pc saved in the frame), and samples in zlib then have it on their stack
    assert summary["unwind"]["deoptimized_frames"] >= 1, summary["unwind"]
    assert any(lf.name == "pyproftest.JitZoo$Victim.workThenDeflate"
               and lf.line == marker_line("JitZoo", "victim-deflate")
               for key in deopt for f in key.frames for lf in f.frames)
    # AND zlib's native code is there under the Java native method that called it
    deflate = names("deflate")
    assert any(n.startswith("java.util.zip.Deflater.deflateBytes") for n in deflate), deflate.most_common(10)
    # AND the tier of every Java frame is visible to pprof users
    top = go_pprof("-top", "-nodecount=200", str(out)).stdout
    for suffix in ("[C2]", "[interp]", "[C2 OSR]", "[inlined]", "[jni]"):
        assert suffix in top, suffix


def test_thread_names_are_the_current_java_names(jdk, java_workload, tmp_path) -> None:
    # GIVEN four workers, one renamed by itself and one renamed by the main thread after start
    jvm = java_workload(jdk, "Threads")
    expected = next(line for line in jvm.lines if line.startswith("names ")).split(" ", 1)[1].split(",")
    # WHEN pyprof profiles it
    profile = profile_of(jvm.pid, tmp_path / "t.pb.gz", seconds=4)
    # THEN the busy threads carry exactly their current Java names (JFR keeps the old name; /proc comm
    # is truncated to 15 bytes and not updated when another thread renames one)
    busy = Counter()
    for key, n in profile.counts.items():
        if any(lf.name == "pyproftest.Threads.spin" for f in key.frames for lf in f.frames):
            busy[key.thread_name] += n
    assert set(busy) == set(expected), (busy, expected)
    assert "renamed-by-main-thread" in busy
