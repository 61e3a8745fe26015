"""A fixed-seed sample of the fuzz run (bench/fuzz.py runs 10,000+ cases): mutated VMStructs tables,
code-cache walks, debug info, thread lists and unwinder samples through pyprof's real readers, on memory
captured from a small JVM of every JDK (tests/unit/fuzzing.py). No case may crash, hang, or allocate
without bound; a failure names its seed, target and case id for `bench/fuzz.py --case`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter

import pytest

from pyprof.hotspot.codecache import CodeCache
from pyprof.hotspot.layout import Layout
from tests.conftest import JDK_VERSIONS
from tests.unit.fuzzing import (
    CHANGED,
    TARGETS,
    Case,
    Fuzzer,
    World,
    capture_world,
    run_cases,
    unwind_recordings,
)

SEED = 20261130
# ~0.2 s a case for the first two (a VMStructs read / a code-cache walk under tracemalloc), ~15 ms others
SAMPLE = {"vmstructs": 50, "codecache": 50, "debuginfo": 150, "threads": 150, "unwind": 150}


@pytest.fixture(scope="module")
def worlds() -> list[World]:
    return [capture_world(v) for v in JDK_VERSIONS]


@pytest.fixture(scope="module")
def fuzzer(worlds: list[World]) -> Fuzzer:
    return Fuzzer(worlds, unwind_recordings(), SEED)


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_sample_survives(fuzzer: Fuzzer, target: str) -> None:
    # GIVEN a fixed-seed sample of mutated cases of one target
    # WHEN each runs through the real readers, bounded in time and memory
    results = run_cases(fuzzer, target, range(SAMPLE[target]))
    # THEN none crashed, hung or over-allocated (the seed and case id replay it)
    failures = [f"{r.replay_hint(SEED)}: {r.detail}" for r in results if r.outcome == "failure"]
    assert not failures, "\n".join(failures)
    # AND the mutations were felt: some cases were refused, counted, or answered differently
    felt = Counter(r.detail for r in results if r.outcome == "expected" or r.detail == CHANGED)
    assert sum(felt.values()) >= len(results) // 10, f"{target}: mutations changed too little: {felt}"
    # AND every kind of mutation of the target ran
    assert len({r.mutation for r in results}) >= 5


def test_jdk11_linked_thread_list_is_fuzzed(fuzzer: Fuzzer) -> None:
    # GIVEN the threads target WHEN its cases are drawn THEN JDK 11's linked list gets cycles
    drawn = [fuzzer.case("threads", n) for n in range(200)]
    mutations = {(source, case.mutation) for source, case in drawn}
    assert ("jdk11", "next-cycle") in mutations
    # AND the SMR ThreadsList of 17+ its length, array and elements
    assert {m for source, m in mutations if source != "jdk11" and m.startswith("smr-")} == {
        "smr-length", "smr-array", "smr-element"}


def test_cases_are_reproducible(fuzzer: Fuzzer) -> None:
    # GIVEN the same seed, target and case id WHEN built and run twice THEN the same mutation and outcome
    for target in TARGETS:
        for case in (3, 17):
            first, second = fuzzer.run(target, case), fuzzer.run(target, case)
            assert (first.source, first.mutation, first.outcome, first.detail) == (
                second.source, second.mutation, second.outcome, second.detail)


class _Planted(Fuzzer):
    """A fuzzer whose cases are replaced: what the classification must call a failure."""

    def __init__(self, run, **kw) -> None:
        super().__init__([], [], 0, **kw)
        self._run = run

    def case(self, target: str, case: int) -> tuple[str, Case]:
        return "planted", Case("planted", self._run)


@pytest.mark.parametrize("planted, kw, reason", [
    (lambda: {}["missing"], {}, "KeyError"),
    (lambda: time.sleep(0.3), {"time_limit": 0.1}, "took"),   # (slow on its re-run too)
    (lambda: len(bytearray(80 << 20)) and None, {}, "allocated"),
])
def test_crashes_slow_cases_and_big_allocations_are_failures(planted, kw, reason) -> None:
    # GIVEN a case that crashes, one over its time bound, one allocating 80 MiB
    # WHEN run by the fuzzer THEN each is a failure that says why
    [result] = run_cases(_Planted(planted, **kw), "planted", range(1))
    assert result.outcome == "failure" and reason in result.detail, result


def test_a_hang_is_interrupted(monkeypatch) -> None:
    # GIVEN a case that never ends
    import tests.unit.fuzzing as fuzzing
    monkeypatch.setattr(fuzzing, "HANG_LIMIT", 0.2)

    def forever() -> None:
        while True:
            pass
    # WHEN run THEN it is stopped at the hang limit and reported as a failure
    [result] = run_cases(_Planted(forever), "planted", range(1))
    assert result.outcome == "failure" and result.detail.startswith("hang")


def test_a_field_offset_beyond_any_header_is_refused_not_a_crash(worlds: list[World]) -> None:
    # GIVEN VMStructs whose CodeBlob::_size offset is 2^64 - 8 (fuzz case vmstructs/64 of seed 20261130 on
    # JDK 11: Layout.unpacker built a struct format padded to it, and struct.error escaped CodeCache())
    for world in worlds:
        vm = copy.copy(world.cap.jvm.vm)
        vm.fields = dict(vm.fields)
        key = ("CodeBlob", "_size")
        vm.fields[key] = dataclasses.replace(vm.fields[key], offset=(1 << 64) - 8)
        layout = Layout(vm, world.layout.version, world.symbols, world.base)
        jvm = dataclasses.replace(world.jvm(world.memory()), vm=vm, layout=layout)
        # WHEN the code cache is walked
        snap = CodeCache(jvm).walk()
        # THEN every blob is refused and counted (its header cannot be read), nothing raised
        assert not snap.blobs and snap.stats.invalid_total > 0, world.version


def test_one_stall_of_a_shared_machine_is_not_a_failure() -> None:
    # GIVEN a case that is slow once (a scheduling stall), then fast
    calls = []

    def stalls_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.3)
    # WHEN run with a 0.1 s bound THEN it is re-run once and passes
    [result] = run_cases(_Planted(stalls_once, time_limit=0.1), "planted", range(1))
    assert result.outcome == "ok" and len(calls) == 2
