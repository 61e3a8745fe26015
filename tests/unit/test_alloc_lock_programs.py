"""The event programs' pure parts: class names, the sampling distances and the weighting."""

from __future__ import annotations

import math
import statistics

import pytest

from pyprof.errors import MemoryReadError
from pyprof.hotspot.method import java_class_name
from pyprof.kernel.bpf_loader import BPF_DIR, inline_local_includes
from pyprof.sampling.alloc import AllocProgram, exponential_quantiles, parse_interval
from pyprof.sampling.events import EVENT_ALLOC
from pyprof.sampling.lock import LOCK_MONITOR, LOCK_PARK, LockProgram
from pyprof.sampling.sampler import RawSample


@pytest.mark.parametrize("internal, java", [
    ("java/lang/String", "java.lang.String"),
    ("[B", "byte[]"),
    ("[[I", "int[][]"),
    ("[Z", "boolean[]"),
    ("[Ljava/lang/String;", "java.lang.String[]"),
    ("[[Ljava/util/Map$Entry;", "java.util.Map$Entry[][]"),
    ("pyproftest/LockSites$Monitor", "pyproftest.LockSites$Monitor"),
])
def test_java_class_names(internal: str, java: str) -> None:
    assert java_class_name(internal) == java


@pytest.mark.parametrize("garbage", ["[", "[Q", "[L;", "[Ljava/lang/String", "[" * 300 + "I"])
def test_implausible_array_names_are_read_errors(garbage: str) -> None:
    with pytest.raises(MemoryReadError):
        java_class_name(garbage)


def test_sampling_distances_are_exponential_with_the_interval_as_mean() -> None:
    distances = exponential_quantiles(512 * 1024)
    assert len(distances) == 1024 and distances == sorted(distances)
    assert abs(statistics.fmean(distances) / (512 * 1024) - 1) < 0.01
    # P(D <= interval) of an exponential is 1 - 1/e
    assert abs(sum(d <= 512 * 1024 for d in distances) / 1024 - (1 - math.exp(-1))) < 0.01
    assert exponential_quantiles(0) == [0] * 1024   # every event sampled


def _alloc(event_bytes: int, object_bytes: int) -> RawSample:
    return RawSample(0, 1, 0, 0, 0, 0, 0, 0, (), b"", event=EVENT_ALLOC, weight=event_bytes,
                     state=object_bytes)


def test_alloc_values_scale_by_the_sampling_probability() -> None:
    program = AllocProgram(1 << 20)
    # an object far larger than the interval is (almost) always sampled: itself, once
    assert program.values(_alloc(64 << 20, 64 << 20)) == (1, 64 << 20)
    # one of the interval's size stands for 1 / (1 - 1/e) of itself
    objects, space = program.values(_alloc(1 << 20, 1 << 20))
    assert space == round((1 << 20) / (1 - math.exp(-1))) and objects == 2
    # a TLAB refill of 2 MiB for a 1 KiB object: 2048 such objects, over p = 1 - exp(-2)
    objects, space = program.values(_alloc(2 << 20, 1024))
    assert objects == round(2048 / (1 - math.exp(-2)))
    assert AllocProgram(0).values(_alloc(4096, 64)) == (64, 4096)   # interval 0: every event, unscaled


def test_parse_interval() -> None:
    assert parse_interval("512k") == 512 * 1024
    assert parse_interval("1M") == 1 << 20
    assert parse_interval("100000") == 100000
    with pytest.raises(ValueError):
        parse_interval("lots")


def test_lock_values_and_labels() -> None:
    program = LockProgram()
    monitor = RawSample(0, 1, 0, 0, 0, 0, 0, 0, (), b"", weight=25_000, state=LOCK_MONITOR)
    park = RawSample(0, 1, 0, 0, 0, 0, 0, 0, (), b"", weight=7_000_000, state=LOCK_PARK)
    assert program.values(monitor) == (1, 25_000)
    assert program.labels(monitor) == (("lock", "monitor"),)
    assert program.labels(park) == (("lock", "park"),)


def test_event_headers_are_inlined_into_the_sampler_source() -> None:
    source = inline_local_includes(BPF_DIR / "sampler.c")
    assert "int on_alloc_in_new_tlab(struct pt_regs *ctx)" in source
    assert "int on_monitor_enter_return(struct pt_regs *ctx)" in source
    assert '#include "alloc.h"' not in source
