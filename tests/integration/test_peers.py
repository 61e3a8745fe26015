"""pyprof against the JDK's own profiler: JFR records the same JVM over the same window.

Workload: tests/java/src/pyproftest/Mix.java, twelve methods with CPU weights 1..12 on one thread.
JFR samples only threads in Java and attributes native leaf time (System.nanoTime's clock_gettime) to
the calling Java method, so pyprof is compared by its innermost *Java* frame.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from pyprof.model import FrameKind, ProfileData
from pyprof.output.pprof import read_pprof
from tests.conftest import JDK_VERSIONS, java_bin, pyprof, start_java

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]

JAVA_KINDS = {FrameKind.INTERPRETED, FrameKind.C1, FrameKind.C2, FrameKind.INLINED, FrameKind.NATIVE_METHOD}
SECONDS = 8
JFC = Path(__file__).parent / "data" / "execution-sample-2ms.jfc"
THREAD = "mix-main"


def normalized(method: str, line: int) -> tuple[str, int]:
    """One spelling for both profilers: JFR's JSON has internal names (pkg/Class) and line -1 for
    "none"; hidden (lambda) classes carry an address and, in JFR, a hash code after the name."""
    method = method.replace("/", ".")
    lambda_at = method.find("$$Lambda")
    if lambda_at >= 0:
        method = method[:lambda_at + len("$$Lambda")] + "." + method.rsplit(".", 1)[1]
    return method, max(line, 0)


def java_frames(key) -> list[tuple[str, int]]:
    """(method, line) of every Java frame, innermost first (inlined ones expanded)."""
    return [normalized(lf.name, lf.line) for pf in key.frames for lf in pf.frames if lf.kind in JAVA_KINDS]


def pyprof_stacks(profile: ProfileData) -> Counter:
    out: Counter = Counter()
    for key, n in profile.counts.items():
        if key.thread_name == THREAD:
            frames = java_frames(key)
            if frames:
                out[tuple(frames)] += n
    return out


def jfr_stacks(jfr_file: Path, version: int) -> Counter:
    done = subprocess.run([java_bin(version, "jfr"), "print", "--json", "--stack-depth", "64", "--events",
                           "jdk.ExecutionSample",
                           str(jfr_file)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out: Counter = Counter()
    for event in json.loads(done.stdout)["recording"]["events"]:
        values = event["values"]
        if values["sampledThread"]["javaName"] != THREAD:
            continue
        frames = tuple(normalized(f"{f['method']['type']['name']}.{f['method']['name']}", f["lineNumber"])
                       for f in values["stackTrace"]["frames"])
        out[frames] += 1
    return out


def self_methods(stacks: Counter) -> Counter:
    out: Counter = Counter()
    for frames, n in stacks.items():
        out[frames[0][0]] += n
    return out


def shares(counter: Counter) -> dict:
    total = sum(counter.values())
    return {k: 100.0 * v / total for k, v in counter.items()}


def record_both(version: int, pid: int, tmp_path: Path) -> tuple[Counter, Counter]:
    """JFR and pyprof over the same seconds of the same JVM."""
    jfr_file = tmp_path / "rec.jfr"
    out = tmp_path / "rec.pb.gz"
    result: dict = {}

    def run_pyprof() -> None:
        result["done"] = pyprof("attach", str(pid), "-d", str(SECONDS + 2), "-r", "199", "-o", str(out),
                                timeout=180)

    worker = threading.Thread(target=run_pyprof)
    worker.start()
    start = subprocess.run([java_bin(version, "jcmd"), str(pid), "JFR.start", "name=peer", f"settings={JFC}",
                            f"duration={SECONDS}s", f"filename={jfr_file}"],
                           capture_output=True, text=True, timeout=120)
    worker.join()
    assert start.returncode == 0, start.stdout + start.stderr
    assert result["done"].returncode == 0, result["done"].stderr
    for _ in range(100):
        if jfr_file.exists() and jfr_file.stat().st_size > 0:
            break
        threading.Event().wait(0.2)
    return pyprof_stacks(read_pprof(str(out))), jfr_stacks(jfr_file, version)


@pytest.fixture(scope="module", params=JDK_VERSIONS, ids=[f"jdk{v}" for v in JDK_VERSIONS])
def recordings(request, root_and_bpf, tmp_path_factory):
    """One JFR + pyprof recording per JDK, compared two ways by the tests below (~22 s each)."""
    jdk = request.param
    jvm = start_java(jdk, "Mix")
    try:
        return record_both(jdk, jvm.pid, tmp_path_factory.mktemp(f"peers-jdk{jdk}"))
    finally:
        jvm.stop()


def test_top10_self_methods_agree_with_jfr(recordings) -> None:
    # GIVEN pyprof and JFR profiles of the same window
    ours, jfr = recordings
    # WHEN both rank methods by self time (innermost Java frame)
    our_top = [m for m, _ in self_methods(ours).most_common(10)]
    jfr_top = [m for m, _ in self_methods(jfr).most_common(10)]
    # THEN at least 8 of JFR's top 10 are in pyprof's top 10
    assert len(set(our_top) & set(jfr_top)) >= 8, (our_top, jfr_top)
    # AND the heaviest method is one the workload made heavy (weights are wall-clock: a loaded machine
    # reorders neighbours, not work12 and work01)
    assert our_top[0] in {"pyproftest.Mix.work12", "pyproftest.Mix.work11", "pyproftest.Mix.work10"}, our_top
    assert "pyproftest.Mix.work01" not in our_top[:5]


def share_tolerance(share: float, n_ours: int, n_jfr: int) -> float:
    """How far two sampled shares of one stack may differ, in points: four standard errors of the
    difference of two binomial proportions, at least 3 points. JDK 11's JFR takes ~50 samples/s whatever
    the period asks (~400 in 8 s: a 15 % share is then +-1.8 points by chance alone), 17+'s ~500/s."""
    p = share / 100.0
    return max(3.0, 400.0 * math.sqrt(p * (1.0 - p) * (1.0 / n_ours + 1.0 / n_jfr)))


def test_top20_stacks_with_lines_agree_with_jfr(recordings) -> None:
    # GIVEN the same two profiles, stacks of Java frames with their source lines (JFR keeps 64 frames)
    ours, jfr = recordings
    ours_share, jfr_share = shares(ours), shares(jfr)
    n_ours, n_jfr = sum(ours.values()), sum(jfr.values())
    # WHEN JFR's 20 heaviest full stacks are looked up in pyprof's profile
    top = sorted(jfr_share, key=lambda k: -jfr_share[k])[:20]
    # THEN each has the same share within what sampling noise allows (share_tolerance)
    diffs = {stack[0]: (round(jfr_share[stack], 1), round(ours_share.get(stack, 0.0), 1),
                        round(share_tolerance(jfr_share[stack], n_ours, n_jfr), 1)) for stack in top}
    apart = {k: v for k, v in diffs.items() if abs(v[0] - v[1]) > v[2]}
    assert not apart, (f"(jfr, pyprof, tolerance) of {n_jfr} and {n_ours} samples", apart)
    # AND together they cover most of both profiles (the stacks really are the same)
    assert sum(ours_share.get(stack, 0.0) for stack in top) >= 0.8 * sum(jfr_share[s] for s in top), diffs
