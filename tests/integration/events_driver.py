"""A test-side driver for one event program (alloc, lock) alone, with hooks the CLI has not.

It runs what `pyprof attach -e alloc` runs: the sampler module with the event's program compiled in (no
cpu-clock event), a JvmTarget for the unwinder, the JavaThread anchors pushed to BPF, every record
through the session's own route_record(); and lets a test or bench act at the window's start and end
(start JFR, read the ground truth) and read the sampler's raw counters and BPF statistics.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from pyprof.model import ProfileData, StackKey
from pyprof.sampling.programs import EventPlan
from pyprof.sampling.sampler import Sampler
from pyprof.session.session import JvmTarget, route_record


@dataclass
class EventRun:
    profile: ProfileData
    records: int = 0
    raw_counters: list[int] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    window_s: float = 0.0
    window_wall: tuple[float, float] = (0.0, 0.0)   # the window in wall-clock seconds (time.time())
    error: Optional[BaseException] = None   # what on_started raised


def run_event(pid: int, program, seconds: float, on_started=None, on_stopped=None, inspect=None) -> EventRun:
    """Sample `program`'s event of JVM `pid` for `seconds`; `on_started()` is called once sampling runs
    and `on_stopped()` when the window ends (the test reads its ground truth then); `inspect(sampler)`
    before the sampler closes (a test reads what the programs wrote to their maps)."""
    target = JvmTarget.open(pid)
    # rate_hz sizes the ring buffer only here (no cpu-clock event)
    sampler = Sampler(pid, rate_hz=program.records_per_second, cpu=False, programs=[program])
    profile = ProfileData(event=program.name)
    run = EventRun(profile)
    plan = EventPlan((program.name,), False, {program.name: program}, {program.event: (program.name,)})
    try:
        sampler.start()
        target.threads.refresh()
        sampler.set_java_threads(target.threads.anchor_addresses())
        sampler.poll(0)   # drop what came before the anchors were known
        if on_started is not None:   # (drained meanwhile: the ring buffer holds well under a second)
            helper = threading.Thread(target=_catching(on_started, run))
            helper.start()
            while helper.is_alive():
                sampler.poll(100)
            if run.error is not None:
                raise run.error
        sampler.poll(0)
        started = time.monotonic()
        started_wall = time.time()
        deadline = started + seconds
        while time.monotonic() < deadline:
            batch = sampler.poll(100)
            target.live.poll(0)      # once per batch, as the session does
            for sample in batch:
                _add(run, target, plan, sample)
        run.window_s = time.monotonic() - started
        run.window_wall = (started_wall, time.time())
        if on_stopped is not None:
            on_stopped()
        for sample in sampler.poll(0):
            _add(run, target, plan, sample)
        run.raw_counters = sampler.raw_counters()
        if inspect is not None:
            inspect(sampler)
        run.stats = program.counters(run.raw_counters)
    finally:
        sampler.close()
        target.close()
    return run


def _catching(function, run: EventRun):
    def call() -> None:
        try:
            function()
        except BaseException as e:  # noqa: BLE001 - re-raised in the driver's thread
            run.error = e
    return call


def _add(run: EventRun, target: JvmTarget, plan: EventPlan, sample) -> None:
    route_record(plan, target, {run.profile.event: run.profile}, sample)
    run.records += 1


def frame_names(key: StackKey) -> list[str]:
    """Leaf first: every logical frame's name (inlined ones included)."""
    return [logical.name for frame in key.frames for logical in frame.frames]
