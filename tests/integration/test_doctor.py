"""`pyprof doctor`: what this machine can do, and what a given PID is."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import pyprof

pytestmark = pytest.mark.usefixtures("root_and_bpf")


def test_doctor_on_a_ready_machine_is_all_ok() -> None:
    # GIVEN this machine after `make setup`  WHEN doctor runs
    done = pyprof("doctor", "--json")
    # THEN every requirement is met, including compiling and loading a BPF program, and it exits 0
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    names = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True
    for name in ("kernel", "kernel safety (BPF reads)", "privileges", "perf events (cpu-clock)", "bcc",
                 "kernel headers (bcc)", "BPF compile + load"):
        assert names[name]["status"] == "ok", names[name]
    # AND the kernel lines say the minimum and why this kernel is safe (6.18: by its version)
    assert "minimum 5.15.0" in names["kernel"]["detail"]
    # AND -e wall/offcpu's tracepoints are there
    assert names["event wall/offcpu"]["status"] == "ok", names["event wall/offcpu"]
    assert "outside the affected versions" in names["kernel safety (BPF reads)"]["detail"]


@pytest.mark.jvm
def test_doctor_describes_a_jvm(jdk, java_workload) -> None:
    # GIVEN a running JVM  WHEN doctor is given its pid
    jvm = java_workload(jdk, "Throughput")
    done = pyprof("doctor", str(jvm.pid), "--json")
    report = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    # THEN it names the JDK and GC, and says the code-cache sources work
    assert done.returncode == 0, done.stdout
    assert report["HotSpot JVM"]["detail"].startswith(f"JDK {jdk} ")
    assert "G1 GC" in report["HotSpot JVM"]["detail"]
    assert report["code cache (attach-free)"]["status"] == "ok"
    assert report["live code-cache updates"]["status"] == "ok"
    # AND the events' needs: the thread-state fields (wall) and the alloc/lock libjvm symbols, found
    assert report["thread states (wall)"]["status"] == "ok"
    assert "AllocTracer::send_allocation_outside_tlab" in report["event alloc"]["detail"]
    assert "Parker::park" in report["event lock"]["detail"]
    assert "lacks" not in report["event alloc"]["detail"] + report["event lock"]["detail"]


def test_doctor_on_a_process_that_is_not_a_jvm_fails_with_the_fix() -> None:
    # GIVEN a process that is not a JVM
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        done = pyprof("doctor", str(sleeper.pid))
    finally:
        sleeper.kill()
    # THEN doctor says so, with the fix, and exits non-zero
    assert done.returncode == 1
    assert "is not a HotSpot JVM" in done.stdout and "fix:" in done.stdout


@pytest.mark.jvm
@pytest.mark.parametrize("gc", ["Serial", "Parallel", "G1"])
def test_live_code_cache_probes_exist_for_every_gc(jdk, gc, java_workload) -> None:
    # GIVEN a JVM running with a given collector (Serial's heap class is GenCollectedHeap before JDK 23)
    jvm = java_workload(jdk, "Throughput", jvm_flags=(f"-XX:+Use{gc}GC",))
    # WHEN doctor looks at it
    report = {c["name"]: c for c in json.loads(pyprof("doctor", str(jvm.pid), "--json").stdout)["checks"]}
    # THEN it found that GC's register_nmethod to probe
    assert report["live code-cache updates"]["status"] == "ok", report["live code-cache updates"]
    assert f"({gc} GC)" in report["live code-cache updates"]["detail"]
