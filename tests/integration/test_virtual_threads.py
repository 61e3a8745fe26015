"""Virtual threads (JDK 21+): a sample taken while a virtual thread is mounted carries its name (or `#<id>`)
in the `virtual_thread` label, read by the BPF sampler at sample time; `thread` stays the carrier.

Workload: tests/java/src/pyproftest/VirtualThreads.java (virtual threads vt-1 .. vt-6 and two unnamed
ones, thread K burning CPU under its own method workK, yielding all the time so that carriers switch
between them; one platform thread under work0). On JDK 11 and 17 the same threads are platform threads.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from pyprof.model import ProfileData, StackKey
from pyprof.output.pprof import read_pprof
from pyprof.reporters.flamegraph import build
from tests.conftest import JavaProcess, pyprof

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]
DEBUG_NON_SAFEPOINTS = ("-XX:+UnlockDiagnosticVMOptions", "-XX:+DebugNonSafepoints")
WORK = re.compile(r"^pyproftest\.VirtualThreads\.work(\d)$")


def ground_truth(jvm: JavaProcess) -> tuple[str, dict[int, str]]:
    """("virtual" | "platform", K -> the thread's label) from the workload's stdout."""
    mode = next(line for line in jvm.lines if line.startswith("mode ")).split()[1]
    threads = next(line for line in jvm.lines if line.startswith("threads ")).split()[1]
    labels = {int(k): label for label, k in (item.rsplit(":", 1) for item in threads.split(","))}
    return mode, labels


def worker_of(key: StackKey) -> int | None:
    """K when the stack runs under exactly one workK (the thread it must be), else None."""
    names = (lf.name for frame in key.frames for lf in frame.frames)
    found = {int(m.group(1)) for m in map(WORK.match, names) if m}
    return found.pop() if len(found) == 1 else None


def profile_of(jvm: JavaProcess, out: Path, seconds: float = 6) -> ProfileData:
    done = pyprof("attach", str(jvm.pid), "-d", str(seconds), "-r", "199", "-o", str(out),
                  timeout=seconds + 90)
    assert done.returncode == 0, done.stderr
    return read_pprof(str(out))


def test_samples_of_virtual_threads_carry_the_mounted_one(jdk, java_workload, tmp_path) -> None:
    # GIVEN eight busy virtual threads (six named vt-N, two unnamed) switching carriers, and a platform one
    jvm = java_workload(jdk, "VirtualThreads", jvm_flags=DEBUG_NON_SAFEPOINTS)
    mode, labels = ground_truth(jvm)
    assert mode == ("virtual" if jdk >= 21 else "platform"), jvm.lines
    # WHEN pyprof profiles it
    profile = profile_of(jvm, tmp_path / "vt.pb.gz", seconds=6 if jdk >= 21 else 3)
    by_worker: dict[int, Counter] = {}
    for key, n in profile.counts.items():
        k = worker_of(key)
        if k is not None:
            by_worker.setdefault(k, Counter())[(key.thread_name, key.virtual_thread)] += n
    if jdk < 21:
        # THEN (11, 17) nothing is virtual: every thread is its own platform thread, no label anywhere
        assert all(key.virtual_thread is None for key in profile.counts), "virtual_thread label before 21"
        for k, seen in by_worker.items():
            right = sum(n for (thread, _), n in seen.items() if thread == labels[k])
            assert right >= 0.95 * sum(seen.values()), (k, seen)
        return
    # THEN (21+) >= 95 % of each virtual thread's samples (those under its workK) carry its label, on a
    # ForkJoinPool carrier, and the platform thread's carry none
    assert len(set(by_worker) - {0}) >= 6, by_worker
    for k, seen in by_worker.items():
        total = sum(seen.values())
        if k == 0:
            assert seen == Counter({("platform-burner", None): total}), seen
            continue
        right = sum(n for (thread, vt), n in seen.items()
                    if vt == labels[k] and thread.startswith("ForkJoinPool-"))
        assert right >= 0.95 * total, (labels[k], seen)
    # ... and a label names only the virtual threads of the workload, never a platform thread's sample
    expected = {label for k, label in labels.items() if k > 0}
    for key in profile.counts:
        if key.virtual_thread is not None:
            assert key.virtual_thread in expected and key.thread_name.startswith("ForkJoinPool-"), key
    unnamed = [label for label in expected if label.startswith("#")]
    assert unnamed and any(key.virtual_thread in unnamed for key in profile.counts), "no #<id> label"

    # AND `report --thread` selects a virtual thread by its name, or its carriers by theirs
    out = tmp_path / "vt3.pb.gz"
    done = pyprof("report", str(tmp_path / "vt.pb.gz"), "--thread", "^vt-3$", "--format", "pprof",
                  "-o", str(out))
    assert done.returncode == 0, done.stderr
    selected = read_pprof(str(out)).counts
    assert selected and {key.virtual_thread for key in selected} == {"vt-3"}, Counter(selected)
    done = pyprof("report", str(tmp_path / "vt.pb.gz"), "--thread", "^ForkJoinPool-", "--format", "pprof",
                  "-o", str(out))
    assert done.returncode == 0, done.stderr
    carried = {key.virtual_thread for key in read_pprof(str(out)).counts}
    assert len(carried & expected) >= 6, carried

    # AND the flame graph's thread level names the virtual threads
    doc = build(profile)
    thread_kind = doc["kinds"].index("thread")
    thread_names = {name for name, kind in zip(doc["names"], doc["frameKinds"]) if kind == thread_kind}
    assert "platform-burner" in thread_names and len(thread_names & expected) >= 6, thread_names
