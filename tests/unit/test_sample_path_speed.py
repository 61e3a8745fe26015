"""The sample path's shortcuts (issue 12) change its cost, never its answers.

- Planned steps (Unwinder._planned_step): every recorded sample of real JVMs (tests/unit/data, JDK 17/21/25)
  unwinds to the same frames and the same counters with them as without them (every step through
  _step), cold and warm (a frame seen before goes through the plan).
- ProcessMemory.read_many: batched reads of a real process give what one read each gives, and a read
  that fails in the middle of a batch is None without losing the ones after it.
- decode_sample: a ring-buffer record laid out as bpf/sampler.c writes it decodes to the RawSample the
  frozen dataclass's own constructor builds.
"""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

from pyprof.model import StackKey
from pyprof.procfs.memory import ProcessMemory, Reader
from pyprof.sampling import sampler
from pyprof.sampling.sampler import RawSample, decode_sample
from pyprof.sampling.unwind import Unwinder
from tests.unit.data.unwind_fixture import fixture_path, load, replay_unwinder, stats_of, variants

RECORDINGS = [("Phases", 17), ("Phases", 21), ("Phases", 25), ("JitZoo", 21)]


def _unplanned(unwinder: Unwinder) -> Unwinder:
    unwinder._planned_step = lambda *args: None   # type: ignore[method-assign]
    return unwinder


@pytest.mark.parametrize("workload,jdk", RECORDINGS)
def test_planned_steps_give_the_frames_and_counters_of_full_steps(workload, jdk):
    # GIVEN the samples recorded from a real JVM (and their variants without anchor or kernel frames)
    rec = load(fixture_path(workload, jdk))
    raws = [v for s in rec.samples for v in (s.raw, *variants(s.raw))]
    planned, full = replay_unwinder(rec), _unplanned(replay_unwinder(rec))
    # WHEN each is unwound twice (cold, then every frame seen before) with and without planned steps
    cold = [planned.unwind(r) for r in raws]
    warm = [planned.unwind(r) for r in raws]
    expected = [full.unwind(r) for r in raws]
    expected += [full.unwind(r) for r in raws]
    # THEN every stack and every counter is the same
    assert cold + warm == expected
    assert stats_of(planned.stats) == stats_of(full.stats)
    assert planned.stats.as_dict() == full.stats.as_dict()
    # ... and the plans were used (the shortcut is not dead code)
    assert planned._java_plans and planned._native_plans


def test_stack_key_of_is_the_dataclass():
    rec = load(fixture_path("Phases", 21))
    frames = replay_unwinder(rec).unwind(rec.samples[0].raw)
    fast, slow = StackKey.of(frames, "main", 7, (("a", "b"),)), StackKey(frames, "main", 7, (("a", "b"),))
    assert fast == slow and hash(fast) == hash(slow) and {slow: 1}[fast] == 1
    assert StackKey.of(frames, "main", 8) != slow


def test_read_many_matches_single_reads_and_survives_a_hole():
    # GIVEN our own memory: a buffer of known words, and an address nothing is mapped at
    words = (ctypes.c_uint64 * 3000)(*range(1000, 4000))
    base = ctypes.addressof(words)
    unmapped = 0x1000          # the zero page is never mapped
    addresses = [base + 8 * i for i in range(3000)]
    addresses[1500] = unmapped
    with ProcessMemory(os.getpid()) as mem:
        # WHEN they are read in batches (more than one process_vm_readv: IOV_MAX is 1024)
        values = Reader(mem).many(addresses, 8)
        # THEN each is what a single read gives; the hole is None and the reads after it are kept
        assert values[1500] is None
        assert values[:1500] == list(range(1000, 2500))
        assert values[1501:] == list(range(2501, 4000))
        assert Reader(mem).many([], 8) == []
        assert Reader(mem).many([base + 8], 4, signed=True) == [1001]


def _record(kernel: list[int], stack: bytes, size: int) -> ctypes.Array:
    buf = ctypes.create_string_buffer(size)
    header = sampler._HEADER.pack(123456789, 42, 1, 0x7F00, 0x7FF0, 0x7FF8, 0x55, len(stack), 8 * len(kernel),
                                  0, 4242, 0x8000, 0x7E00, 0x8008, 0, 0, 0, 0, 0, 0,
                                  b"worker-1")
    ctypes.memmove(buf, header, len(header))
    ctypes.memmove(ctypes.addressof(buf) + sampler._KSTACK_OFFSET, struct.pack(f"<{len(kernel)}Q", *kernel),
                   8 * len(kernel))
    ctypes.memmove(ctypes.addressof(buf) + sampler._STACK_OFFSET, stack, len(stack))
    return buf


def test_decode_sample_builds_the_dataclass():
    # GIVEN a record as the BPF program lays it out: header, kernel stack (a 0 in it), the stack copy
    stack = bytes(range(256)) * 4
    buf = _record([0xFFFF1, 0, 0xFFFF2], stack, sampler._STACK_OFFSET + 4096)
    # WHEN it is decoded
    sample = decode_sample(ctypes.addressof(buf), len(buf))
    # THEN it is the RawSample the constructor gives (equal, same hash), without the kernel stack's zeros,
    # with only the stack bytes the program filled
    expected = RawSample(123456789, 42, 1, 0x7F00, 0x7FF0, 0x7FF8, 0x55, 0, (0xFFFF1, 0xFFFF2), stack,
                         0x8000, 0x7E00, 0x8008, 4242, comm=b"worker-1".ljust(16, b"\0"))
    assert sample == expected and hash(sample) == hash(expected)
    # AND a record shorter than its fixed part is read no further than its end
    short = decode_sample(ctypes.addressof(buf), 64)
    assert short.stack == b"" and short.kernel_ips == () and short.time_ns == 123456789
