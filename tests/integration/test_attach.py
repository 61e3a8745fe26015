"""`pyprof attach` and `pyprof record` on real JVMs (17, 21, 25) with real eBPF.

Ground truth is tests/java/src/pyproftest/Phases.java: one thread, "phases-main", spends 60/30/10 % of
its on-CPU time in phaseA (Java), phaseB (Java) and nativePhase (JNI, C without frame pointers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pyprof.model import FrameKind, ProfileData
from pyprof.output.pprof import read_pprof
from tests.conftest import CLASSES, NATIVE_LIBS, ROOT, go_pprof, java_bin, pyprof

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]

PHASES = {"A": "pyproftest.Phases.phaseA", "B": "pyproftest.Phases.phaseB",
          "C": "pyproftest.Phases.nativePhase"}
EXPECTED = {"A": 60.0, "B": 30.0, "C": 10.0}
ROOT_FRAMES = {"thread_native_entry", "ThreadJavaMain", "start_thread", "clone3"}
JAVA_KINDS = {FrameKind.INTERPRETED, FrameKind.C1, FrameKind.C2, FrameKind.INLINED, FrameKind.NATIVE_METHOD}


def thread_samples(profile: ProfileData, thread: str) -> dict:
    return {key: n for key, n in profile.counts.items() if key.thread_name == thread}


def phase_shares(profile: ProfileData) -> dict[str, float]:
    samples = thread_samples(profile, "phases-main")
    total = sum(samples.values())
    shares: Counter = Counter()
    for key, n in samples.items():
        names = {logical.name for frame in key.frames for logical in frame.frames}
        for phase, method in PHASES.items():
            if method in names:
                shares[phase] += n
    return {phase: 100.0 * shares[phase] / total for phase in PHASES}


def root_name(key) -> str:
    return key.frames[-1].frames[-1].name.split("(", 1)[0] if key.frames else ""


def attach(pid: int, out: Path, *extra: str, seconds: float = 6, rate: int = 199) -> dict:
    done = pyprof("attach", str(pid), "-d", str(seconds), "-r", str(rate), "-o", str(out), "--json",
                  *extra, timeout=seconds + 90)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_phase_shares_stacks_and_pprof(jdk, java_workload, tmp_path) -> None:
    # GIVEN a JVM whose one busy thread splits its CPU 60/30/10, the last part in a JNI library
    jvm = java_workload(jdk, "Phases", "60,30,10")
    out = tmp_path / "phases.pb.gz"
    # WHEN pyprof attaches from outside for 8 s
    summary = attach(jvm.pid, out, seconds=8)
    profile = read_pprof(str(out))
    # THEN each phase's share is within 3 points of the construction
    shares = phase_shares(profile)
    for phase, expected in EXPECTED.items():
        assert abs(shares[phase] - expected) <= 3.0, (jdk, shares)
    samples = thread_samples(profile, "phases-main")
    total = sum(samples.values())
    assert total >= 300, summary   # enough for the share check (a loaded CI machine gives fewer)
    # AND >= 99 % of the thread's samples reach its root frame
    rooted = sum(n for key, n in samples.items() if root_name(key) in ROOT_FRAMES)
    assert rooted / total >= 0.99, Counter(root_name(k) for k in samples).most_common(5)
    # AND >= 99.5 % of compiled-code frames are named
    java_frames = unknown = 0
    for key, n in profile.counts.items():
        for frame in key.frames:
            kinds = {logical.kind for logical in frame.frames}
            if kinds & JAVA_KINDS:
                java_frames += n
            elif FrameKind.UNKNOWN in kinds:
                unknown += n
    assert unknown / (java_frames + unknown) <= 0.005, summary
    # AND the JNI phase shows the native function under its Java native method, named with its tier
    native = [key for key in samples if any(f.frames[0].name == "Java_pyproftest_Phases_nativePhase"
                                            for f in key.frames)]
    assert native, "no sample in the JNI library"
    kinds = {logical.kind for f in native[0].frames for logical in f.frames if logical.name == PHASES["C"]}
    assert kinds == {FrameKind.NATIVE_METHOD}
    # AND the summary counts what it must
    assert summary["samples"] == sum(profile.counts.values())
    assert summary["lost"] == 0 and summary["unknown_frames_percent"] < 0.5
    assert summary["unwind"]["java_stacks_complete_percent"] >= 99.0, summary["unwind"]
    assert summary["top_self"][0]["function"].startswith("pyproftest.Phases.phaseA")


def test_go_pprof_reads_the_file_without_warnings(java_workload, tmp_path) -> None:
    # GIVEN a profile written by attach
    jvm = java_workload(21, "Phases", "60,30,10")
    out = tmp_path / "p.pb.gz"
    attach(jvm.pid, out, seconds=3)
    # WHEN the real pprof client reads it
    top = go_pprof("-top", "-nodecount=15", str(out))
    tags = go_pprof("-tags", str(out))
    # THEN it reads it without a warning, with both sample types and our thread labels
    for done in (top, tags):
        assert done.returncode == 0, done.stderr
        assert "warning" not in done.stderr.lower(), done.stderr
    assert "pyproftest.Phases.phaseA" in top.stdout
    assert "phases-main" in tags.stdout and "tid" in tags.stdout
    raw = go_pprof("-raw", str(out))
    assert "samples/count cpu/nanoseconds" in raw.stdout
    assert "Period: " in raw.stdout and "Duration: " in raw.stdout


def test_collapsed_output(java_workload, tmp_path) -> None:
    # GIVEN a running JVM  WHEN attach writes folded stacks (picked by the file extension)
    jvm = java_workload(17, "Phases", "60,30,10")
    out = tmp_path / "p.folded"
    attach(jvm.pid, out, seconds=2)
    lines = out.read_text().splitlines()
    # THEN every line is "frames count", root first, with the thread as the root frame
    assert lines and all(line.rsplit(" ", 1)[1].isdigit() for line in lines)
    phase_lines = [line for line in lines if line.startswith("phases-main;")]
    assert any("pyproftest.Phases.phaseA" in line for line in phase_lines)


def _wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not path.exists():
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "jvm-exit"])
def test_interrupted_runs_still_write_a_valid_profile(how, java_workload, tmp_path) -> None:
    # GIVEN attach running without a duration on a JVM
    jvm = java_workload(25, "Exiter", "8" if how == "jvm-exit" else "60")
    out = tmp_path / "p.pb.gz"
    cmd = [sys.executable, "-m", "pyprof.cli.main", "attach", str(jvm.pid), "-o", str(out), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    # WHEN it is interrupted (or the JVM exits) after a few seconds of sampling
    assert proc.stderr is not None
    announced = proc.stderr.readline()
    assert announced.startswith(f"pyprof: sampling {jvm.pid} "), announced
    if how != "jvm-exit":
        time.sleep(3)
        proc.send_signal(getattr(signal, how))
    stdout, stderr = proc.communicate(timeout=120)
    # THEN it exits cleanly and the profile is complete and readable
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["ended"] == ("target exited" if how == "jvm-exit" else how)
    profile = read_pprof(str(out))
    assert sum(profile.counts.values()) == summary["samples"] > 50
    assert go_pprof("-top", str(out)).returncode == 0
    assert not list(tmp_path.glob("*.tmp*")), "temporary file left behind"


def test_record_profiles_from_the_first_instruction_and_keeps_the_exit_code(tmp_path) -> None:
    # GIVEN a Java program that works 6 s and exits with status 3 (pyprof needs a few seconds to attach:
    # its code-cache probes are compiled once the JVM is readable; on a loaded machine a JVM that exits
    # sooner can be gone before that, and its early samples with it)
    out = tmp_path / "rec.pb.gz"
    # WHEN pyprof starts it (199 Hz: the JVM's own start-up is ~0.1 s of CPU, about 10 samples at that rate)
    done = pyprof("record", "-r", "199", "-o", str(out), "--json", "--", java_bin(21), "-cp", str(CLASSES),
                  f"-Djava.library.path={NATIVE_LIBS}", "pyproftest.Exiter", "6", timeout=120)
    # THEN pyprof exits with the JVM's status
    assert done.returncode == 3, done.stderr
    profile = read_pprof(str(out))
    names = {logical.name for key in profile.counts for f in key.frames for logical in f.frames}
    # AND the profile holds samples only the first instructions can give: the main thread creating the
    # JVM (JNI_CreateJavaVM -> Threads::create_vm). pyprof attaches to the JVM once its VMStructs and code
    # cache are readable, well after create_vm began (and seconds after it ended, as compiling the
    # code-cache probes takes that long): these samples were taken before pyprof could name a single
    # frame, and are in the profile only because they were kept until it could.
    booting = sum(n for key, n in profile.counts.items()
                  if any(lf.name.startswith("Threads::create_vm(") for f in key.frames for lf in f.frames))
    assert booting >= 1, sorted(names)[:50]
    # AND the JIT at work, and the program's own code (a thread named after the JVM exited has only its
    # comm, the first 15 bytes of its name: "C2 CompilerThre")
    threads = {key.thread_name for key in profile.counts}
    assert any("CompilerThre" in t for t in threads), threads
    assert "pyproftest.Exiter.main" in names or any(n.startswith("pyproftest.") for n in names)


def test_bad_input_is_one_line_and_an_exit_code(tmp_path) -> None:
    # GIVEN a pid that does not exist, a process that is not a JVM, and an unwritable output
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        cases = [
            (["attach", "4000000", "-d", "1"], 3),
            (["attach", str(sleeper.pid), "-d", "1", "-o", str(tmp_path / "x.pb.gz")], 4),
            (["attach", str(os.getpid()), "-d", "1", "-o", "/proc/nonexistent/x.pb.gz"], 2),
            (["attach", "not-a-pid"], 2),
            (["attach", "1", "--format", "xml"], 2),
        ]
        for args, code in cases:
            # WHEN pyprof is pointed at it
            done = pyprof(*args)
            # THEN one line on stderr, the documented exit code, no traceback, no file
            assert done.returncode == code, (args, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
            assert "Traceback" not in done.stderr
        assert not (tmp_path / "x.pb.gz").exists()
    finally:
        sleeper.kill()
