"""The eBPF CPU sampler (bpf/sampler.c): a cpu-clock perf event on every CPU, filtered to the target
processes (one for attach and record, every JVM of the host for a daemon).

Each sample arrives through the BPF ring buffer as a fixed-size record (see the header of
bpf/sampler.c); it is decoded into a RawSample holding only the bytes of stack actually copied. Lost and
truncated samples are counted in a per-CPU array, never silently dropped.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from dataclasses import dataclass
from typing import Sequence

from pyprof.errors import MissingKernelFeature, PyprofError
from pyprof.kernel import features
from pyprof.kernel.bpf_loader import close_bpf, load_bpf
from pyprof.procfs.process import require_running
from pyprof.sampling.events import EVENT_CPU, EVENT_NAMES, EventProgram

KSTACK_DEPTH = 64
MIN_STACK_BYTES, MAX_STACK_BYTES = 1024, 65536
# struct sample up to the kernel stack: time_ns, tid, cpu, ip, sp, bp, r13, stack_len, kstack_len, flags,
# pid, anchor_sp, anchor_pc, anchor_fp, vthread, vthread_tid, event, state, weight, detail, comm
_HEADER = struct.Struct("<QIIQQQQIIIIQQQQQIIQQ16s")
_KSTACK_OFFSET = _HEADER.size
_STACK_OFFSET = _KSTACK_OFFSET + 8 * KSTACK_DEPTH
FLAG_KERNEL_MODE, FLAG_TRUNCATED = 1, 2
C_LOST, C_TRUNCATED, C_NO_USER, C_SEEN = range(4)
C_LOST_BY_EVENT = 16            # 16..19: C_LOST of each event (C_LOST_BY_EVENT + EVENT_*)
N_COUNTERS = 20                 # 4..15: the other events' programs (pyprof.sampling.events)
RINGBUF_SECONDS = 0.5           # the ring buffer holds this much sampling (we poll every 0.1 s)
STARTUP_RINGBUF_SECONDS = 4.0   # record: samples wait while the booting JVM's code-cache map is built
MIN_RINGBUF_PAGES, MAX_RINGBUF_PAGES = 256, 16384
PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK = 1, 0   # bcc's PerfType.SOFTWARE, PerfSWConfig.CPU_CLOCK


@dataclass(frozen=True)
class RawSample:
    """One on-CPU sample as the unwinder needs it (pyprof.sampling.unwind.StackSample)."""

    time_ns: int
    tid: int
    cpu: int
    ip: int
    sp: int
    bp: int
    r13: int
    flags: int
    kernel_ips: tuple[int, ...]
    stack: bytes
    anchor_sp: int = 0     # the JavaThread's last Java frame at sample time (0: none, or not Java)
    anchor_pc: int = 0
    anchor_fp: int = 0
    pid: int = 0           # the target process the sample belongs to
    vthread: int = 0       # the virtual thread mounted at sample time: its oop (0: none) and Thread.tid
    vthread_tid: int = 0
    event: int = EVENT_CPU  # which program took the record (pyprof.sampling.events.EVENT_*)
    state: int = 0          # the event's thread state (wall), else 0
    weight: int = 0         # the event's value: ns (wall, lock), bytes (alloc); 0 for cpu (one period)
    detail: int = 0         # the event's object: the Klass* (alloc), the monitor's object (lock)
    comm: bytes = b""       # the thread's comm at the time of the record (NUL-padded, 16 bytes)


@dataclass(frozen=True)
class SamplerCounters:
    seen: int
    lost: int
    truncated: int
    no_user_regs: int


def stack_window(requested: int) -> int:
    """The copy size: a power of two in [1 KiB, 64 KiB] (the BPF program halves it on faults)."""
    size = max(MIN_STACK_BYTES, min(MAX_STACK_BYTES, requested))
    return 1 << (size - 1).bit_length()


def ringbuf_pages(rate_hz: int, record_bytes: int, cpus: int, seconds: float = RINGBUF_SECONDS,
                  other_records_per_second: int = 0) -> int:
    """A power of two of pages holding `seconds` of samples from every CPU, plus the other events'
    records (within the bounds)."""
    want = (rate_hz * cpus + other_records_per_second) * record_bytes * seconds / 4096
    pages = 1 << max(0, int(want) - 1).bit_length()
    return max(MIN_RINGBUF_PAGES, min(MAX_RINGBUF_PAGES, pages))


_KSTACK_STRUCTS = [struct.Struct(f"<{n}Q") for n in range(KSTACK_DEPTH + 1)]
_FIXED = ctypes.c_char * _STACK_OFFSET


def _copy(address: int, size: int) -> bytes:
    """`size` bytes at `address` (a ctypes array's .raw: a third of ctypes.string_at's cost; the array
    types are cached by ctypes)."""
    return (ctypes.c_char * size).from_address(address).raw


def decode_sample(data: int, size: int) -> RawSample:
    """A ring-buffer record (at address `data`) -> RawSample, copying only what the program filled.

    On the hot path (every sample): the header and kernel stack come in one copy, and the frozen
    RawSample is filled through its __dict__ (its generated __init__ sets 20 fields one object.__setattr__
    at a time, which cost as much as the rest of the decode)."""
    if size >= _STACK_OFFSET:
        fixed = _FIXED.from_address(data).raw
    else:   # never from bpf/sampler.c (fixed-size records); read no further than the record
        fixed = _copy(data, max(size, 0)) + bytes(_STACK_OFFSET - max(size, 0))
    (time_ns, tid, cpu, ip, sp, bp, r13, stack_len, kstack_len, flags, pid, anchor_sp, anchor_pc,
     anchor_fp, vthread, vthread_tid, event, state, weight, detail, comm) = _HEADER.unpack_from(fixed)
    kstack_len = min(kstack_len, 8 * KSTACK_DEPTH) & ~7
    stack_len = min(stack_len, max(0, size - _STACK_OFFSET))
    kernel_ips: tuple[int, ...] = ()
    if kstack_len:
        kernel_ips = tuple(pc for pc in _KSTACK_STRUCTS[kstack_len // 8].unpack_from(fixed, _KSTACK_OFFSET)
                           if pc)
    sample = object.__new__(RawSample)
    object.__setattr__(sample, "__dict__", {
        "time_ns": time_ns, "tid": tid, "cpu": cpu, "ip": ip, "sp": sp, "bp": bp, "r13": r13,
        "flags": flags, "kernel_ips": kernel_ips,
        "stack": _copy(data + _STACK_OFFSET, stack_len) if stack_len else b"",
        "anchor_sp": anchor_sp, "anchor_pc": anchor_pc, "anchor_fp": anchor_fp, "pid": pid,
        "vthread": vthread, "vthread_tid": vthread_tid, "event": event, "state": state, "weight": weight,
        "detail": detail, "comm": comm})
    return sample


class Sampler:
    def __init__(self, pid: int, rate_hz: int = 99, stack_bytes: int = 32768, force: bool = False,
                 allow_unsafe_kernel: bool = False, buffer_seconds: float = RINGBUF_SECONDS,
                 cpu: bool = True, programs: Sequence[EventProgram] = ()) -> None:
        self.pid = pid
        self.cpu = cpu                    # attach the cpu-clock event (`-e alloc` alone does not)
        self.programs = tuple(programs)   # the other events' programs, compiled into the same module
        self.buffer_seconds = buffer_seconds
        self.rate_hz = rate_hz
        self.stack_bytes = stack_window(stack_bytes)
        # `force` is the old name of allow_unsafe_kernel (kept: `--force` is its alias on the CLI)
        self.allow_unsafe_kernel = allow_unsafe_kernel or force
        self.kernel_safety = None
        self._bpf = None
        self._pending: list[RawSample] = []
        self._callback = None
        self.targets: set[int] = set()
        self._java_threads: dict[int, tuple[int, ...]] = {}   # what the BPF map holds

    def _ringbuf_pages(self, record: int, cpus: int) -> int:
        others = sum(getattr(program, "records_per_second", 0) for program in self.programs)
        return ringbuf_pages(self.rate_hz if self.cpu else 0, record, cpus, self.buffer_seconds, others)

    def start(self) -> None:
        """Compile, load and attach; samples flow once a target pid is set (the constructor's, or
        set_target() later: `record` attaches before it starts the JVM)."""
        self.kernel_safety = features.require_sampling(allow_unsafe_kernel=self.allow_unsafe_kernel)
        if self.pid:
            require_running(self.pid)
        record = _STACK_OFFSET + self.stack_bytes
        cpus = os.cpu_count() or 1
        cflags = [f"-DSTACK_BYTES={self.stack_bytes}",
                  f"-DKSTACK_DEPTH={KSTACK_DEPTH}",
                  f"-DRINGBUF_PAGES={self._ringbuf_pages(record, cpus)}"]
        for program in self.programs:
            cflags += program.cflags()
        bpf = load_bpf("sampler.c", cflags)
        try:
            # keep a reference: bcc holds the ctypes callback only weakly through the C library
            self._callback = bpf["samples"].open_ring_buffer(self._on_sample) or self._on_sample
            if self.cpu:
                bpf.attach_perf_event(ev_type=PERF_TYPE_SOFTWARE, ev_config=PERF_COUNT_SW_CPU_CLOCK,
                                      fn_name="on_sample", sample_freq=self.rate_hz, cpu=-1)
        except Exception as e:  # bcc raises plain Exception
            close_bpf(bpf)
            raise MissingKernelFeature(f"cannot attach the cpu-clock perf event: {e}") from e
        try:
            for program in self.programs:
                program.attach(bpf)
        except BaseException:
            close_bpf(bpf)
            raise
        self._bpf = bpf
        for pid in [self.pid, *self.targets]:
            self.add_target(pid)

    def set_target(self, pid: int) -> None:
        """Sample `pid` and nothing else."""
        for other in list(self.targets):
            if other != pid:
                self.remove_target(other)
        self.pid = pid
        self.add_target(pid)

    def add_target(self, pid: int, tolerate: bool = False) -> dict[str, PyprofError]:
        """Sample `pid` too (a daemon: every JVM of the host through one program and one ring buffer).

        A program that cannot serve this JVM (its libjvm lacks a probed function, uprobes refused)
        raises; with `tolerate` (the daemon) its error is returned instead, by program name, and the
        other programs still serve the JVM."""
        failures: dict[str, PyprofError] = {}
        if pid <= 0:
            return failures
        self.targets.add(pid)
        if self._bpf is not None:
            self._bpf["targets"][ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
            for program in self.programs:
                try:
                    program.add_target(self._bpf, pid)
                except PyprofError as e:
                    if not tolerate:
                        raise
                    failures[program.name] = e
        return failures

    def remove_target(self, pid: int) -> None:
        self.targets.discard(pid)
        if self._bpf is not None:
            for program in self.programs:
                program.remove_target(self._bpf, pid)
            try:
                del self._bpf["targets"][ctypes.c_uint32(pid)]
            except KeyError:
                pass

    def _on_sample(self, _ctx, data, size) -> int:
        self._pending.append(decode_sample(data, size))
        return 0

    def poll(self, timeout_ms: int = 100) -> list[RawSample]:
        """Wait `timeout_ms`, then take every sample that arrived.

        Samples are submitted without wakeups (see bpf/sampler.c), so this sleeps instead of blocking in
        epoll: one batch per interval instead of one wakeup per sample.
        """
        if timeout_ms > 0:
            time.sleep(timeout_ms / 1000)
        if self._bpf is not None:
            self._bpf.ring_buffer_consume()
        out, self._pending = self._pending, []
        return out

    def set_java_threads(self, anchors: dict[int, tuple[int, ...]]) -> None:
        """tid -> addresses of its JavaThread's last_Java_sp/pc/fp, its stack base and its virtual-thread
        slots (JavaThreads.anchor_addresses(); a shorter tuple is padded with 0); threads no longer
        listed are removed. Only the difference to the last call is written (a server's thousands of
        threads change a few at a time)."""
        if self._bpf is None:
            return
        table = self._bpf["java_threads"]
        key_type, leaf_type = table.Key, table.Leaf
        for tid in [tid for tid in self._java_threads if tid not in anchors]:
            try:
                del table[key_type(tid)]
            except KeyError:
                pass
            del self._java_threads[tid]
        for tid, addresses in anchors.items():
            if self._java_threads.get(tid) != addresses:
                table[key_type(tid)] = leaf_type(*addresses)   # missing trailing fields are 0
                self._java_threads[tid] = addresses

    def raw_counters(self) -> list[int]:
        """Every counter of the module, summed over CPUs (indices: C_* here, the programs' own above)."""
        if self._bpf is None:
            return [0] * N_COUNTERS
        table = self._bpf["counters"]
        return [sum(table[ctypes.c_int(i)]) for i in range(N_COUNTERS)]

    def lost_by_event(self) -> dict[int, int]:
        """Records the full ring buffer refused, per EVENT_* (their sum is SamplerCounters.lost)."""
        raw = self.raw_counters()
        return {event: raw[C_LOST_BY_EVENT + event] for event in EVENT_NAMES}

    def counters(self) -> SamplerCounters:
        if self._bpf is None:
            return SamplerCounters(0, 0, 0, 0)
        table = self._bpf["counters"]
        totals = [sum(table[ctypes.c_int(i)]) for i in range(4)]
        return SamplerCounters(seen=totals[C_SEEN], lost=totals[C_LOST], truncated=totals[C_TRUNCATED],
                               no_user_regs=totals[C_NO_USER])

    def close(self) -> None:
        if self._bpf is not None:
            bpf, self._bpf = self._bpf, None
            close_bpf(bpf)
