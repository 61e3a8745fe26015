"""`-e wall` / `-e offcpu`: time the target's threads spend off CPU, from the scheduler (bpf/wall.h).

A thread that blocks (a voluntary context switch) is remembered with the time and its user ip/sp; when
its syscall returns the program takes its stack (unchanged since it blocked: it ran no user code) and
sends the interval. A thread that is preempted (runnable, waiting for a CPU) has its stack sent at once
(a PENDING record, where it will resume) and the length of its wait when it is back on a CPU (a
COMPLETION record); pair() joins the two. Intervals of at least one period are sent as they are;
shorter ones are sampled with probability d/period and weigh one period, so the weights add up to all
off-CPU time without bias while a thread that switches 100k times a second costs about one record per
period. What the program leaves out is counted (WallProgram.counters): skipped short intervals
(represented by the sampled ones), blocks that did not end in a syscall return at the same place (a
page fault that slept: not measured).

`wall` is this plus the on-CPU samples (each worth one cpu-clock period), per thread; `offcpu` is this
alone (pyprof.sampling.programs says which record feeds which profile).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

from pyprof.sampling.events import EVENT_WALL

if TYPE_CHECKING:
    from pyprof.hotspot.jvm import HotSpotJvm
    from pyprof.model import LogicalFrame
    from pyprof.sampling.sampler import RawSample

C_WALL_SENT, C_WALL_SKIPPED, C_WALL_UNMATCHED, C_WALL_PREEMPTED = 4, 5, 6, 7
FLAG_WALL_PENDING, FLAG_WALL_COMPLETION = 4, 8   # bpf/wall.h: a preempted thread's stack, its wait's end
MAX_PENDING = 65_536       # preempted threads waiting for their completion (one per thread at most)
THREAD_STATE = "thread_state"
RUNNABLE_STATE = "runnable"   # the thread_state label of time spent preempted, waiting for a CPU
MIN_PERIOD_NS, MAX_PERIOD_NS = 100_000, 1_000_000_000   # bpf_get_prandom_u32() % period: below 2^32


class WallProgram:
    """The sched_switch / sys_exit program of bpf/wall.h (an EventProgram)."""

    event = EVENT_WALL
    name = "wall"

    def __init__(self, period_ns: int = 10_101_010) -> None:
        self.period_ns = max(MIN_PERIOD_NS, min(MAX_PERIOD_NS, int(period_ns)))
        self._pending: dict[int, RawSample] = {}   # tid -> its preempted stack, until its completion
        self.unpaired = 0     # pending records replaced or dropped without a completion, and the reverse

    def pair(self, sample: RawSample) -> Optional[RawSample]:
        """The record to profile, if any: a blocked interval as it is; a preempted thread's stack once
        its completion has come (with the completion's weight; None when the sampling skipped it)."""
        if sample.flags & FLAG_WALL_PENDING:
            if self._pending.pop(sample.tid, None) is not None or len(self._pending) >= MAX_PENDING:
                self.unpaired += 1
            if len(self._pending) < MAX_PENDING:
                self._pending[sample.tid] = sample
            return None
        if sample.flags & FLAG_WALL_COMPLETION:
            pending = self._pending.pop(sample.tid, None)
            if pending is None:
                self.unpaired += 1
                return None
            if not sample.weight:
                return None
            return dataclasses.replace(pending, weight=sample.weight, detail=sample.detail)
        return sample

    def cflags(self) -> list[str]:
        from pyprof.kernel.requirements import SCHED_SWITCH_PREV_STATE, upstream_version

        flags = ["-DEVENT_WALL_PROGRAM", f"-DWALL_PERIOD_NS={self.period_ns}"]
        if upstream_version()[0] >= SCHED_SWITCH_PREV_STATE:   # sched_switch's prev_state argument
            flags.append("-DWALL_PREV_STATE_ARG")
        return flags

    def attach(self, bpf) -> None:
        from pyprof.errors import MissingKernelFeature

        try:
            bpf.attach_raw_tracepoint(tp="sched_switch", fn_name="wall_on_switch")
            bpf.attach_raw_tracepoint(tp="sys_exit", fn_name="wall_on_sys_exit")
        except Exception as e:  # bcc raises plain Exception
            raise MissingKernelFeature(f"-e wall: cannot attach the sched_switch/sys_exit raw tracepoints: "
                                       f"{e}") from e

    def add_target(self, bpf, pid: int) -> None:
        """Nothing per process: the tracepoints see every thread and filter on `targets`."""

    def remove_target(self, bpf, pid: int) -> None:
        """Nothing per process."""

    def values(self, sample: RawSample) -> tuple[int, int]:
        """(samples: the interval in periods, at least one; ns off CPU: the estimate)."""
        return max(1, round(sample.weight / self.period_ns)), sample.weight

    def leaf_frames(self, sample: RawSample, jvm: HotSpotJvm) -> tuple[LogicalFrame, ...]:
        return ()

    def labels(self, sample: RawSample) -> tuple[tuple[str, str], ...]:
        """`thread_state=runnable` for a preempted thread's wait; a blocked thread's state is named by
        the session with the target's JavaThreads (they know the JVM's constants)."""
        return ((THREAD_STATE, RUNNABLE_STATE),) if sample.flags & FLAG_WALL_PENDING else ()

    def counters(self, raw: list[int]) -> dict[str, int]:
        """Its counters from Sampler.raw_counters() (what was sent and what was left out, and why), and
        its own (preempted stacks that never met their completion)."""
        return {"offcpu_sent": raw[C_WALL_SENT], "offcpu_skipped_short": raw[C_WALL_SKIPPED],
                "offcpu_unmatched": raw[C_WALL_UNMATCHED], "preempted": raw[C_WALL_PREEMPTED],
                "preempted_unpaired": self.unpaired}
