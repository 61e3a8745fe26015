"""Several events in one profile: the `-e` registry (pyprof.sampling.programs), the multi-type pprof
writer and its reader by sample type, and the wall program's pairing of a preempted thread's records."""

from __future__ import annotations

import gzip

import pytest

from pyprof.errors import UsageError
from pyprof.model import FrameKind, LogicalFrame, PhysicalFrame, ProfileData, StackKey
from pyprof.output.pprof import encode, encode_events, read_pprof, read_sample_types
from pyprof.output.proto import profile_pb2
from pyprof.sampling.events import EVENT_CPU, EVENT_WALL
from pyprof.sampling.programs import EventOptions, parse_events, plan
from pyprof.sampling.sampler import RawSample
from pyprof.sampling.wall import FLAG_WALL_COMPLETION, FLAG_WALL_PENDING, WallProgram

PERIOD = 10_000_000


def key(name: str, state: str = "") -> StackKey:
    frame = PhysicalFrame(0x1000 + len(name), (LogicalFrame(name, FrameKind.C2, name + "()V"),))
    return StackKey((frame,), "worker", 7, (("thread_state", state),) if state else ())


def profiles() -> tuple[ProfileData, ProfileData]:
    cpu = ProfileData(period_ns=PERIOD)
    cpu.add(key("a.Spin.spin"), 30)
    wall = ProfileData(event="wall", period_ns=PERIOD)
    wall.add(key("a.Spin.spin"), 30, 30 * PERIOD)
    wall.add(key("a.Io.read", "native"), 50, 700_000_000)
    return cpu, wall


def test_parse_events_keeps_order_and_refuses_unknown_or_repeated() -> None:
    assert parse_events("wall, cpu") == ("wall", "cpu")
    assert parse_events("cpu,wall,alloc,lock") == ("cpu", "wall", "alloc", "lock")
    for bad, words in (("cpu,bogus", "unknown event"), ("cpu,cpu", "named twice"), ("", "at least one")):
        with pytest.raises(UsageError, match=words):
            parse_events(bad)


def test_plan_shares_one_wall_program_and_routes_records() -> None:
    p = plan(("cpu", "wall", "offcpu"), EventOptions(rate_hz=100, wall_interval_ns=PERIOD))
    assert list(p.programs) == ["wall"] and p.cpu_clock
    assert p.routes[EVENT_CPU] == ("cpu", "wall") and p.routes[EVENT_WALL] == ("wall", "offcpu")
    assert not plan(("offcpu",), EventOptions()).cpu_clock   # off-CPU alone needs no cpu-clock event
    assert p.programs["wall"].period_ns == PERIOD
    assert plan(("wall",), EventOptions()).programs["wall"].period_ns == 50_000_000   # the default


def test_multi_type_pprof_has_every_type_and_reads_back_by_type() -> None:
    cpu, wall = profiles()
    data = encode_events([cpu, wall])
    pb = profile_pb2.Profile.FromString(gzip.decompress(data))
    names = [pb.string_table[t.type] for t in pb.sample_type]
    assert names == read_sample_types(data) == ["samples", "cpu", "wall_samples", "wall"]
    assert pb.string_table[pb.default_sample_type] == "cpu"
    values = sorted(tuple(s.value) for s in pb.sample)
    # the on-CPU stack has all four values; the wall-only stack (labelled) is 0 for cpu's types
    assert values == [(0, 0, 50, 700_000_000), (30, 30 * PERIOD, 30, 30 * PERIOD)]
    back = read_pprof(data, "wall")
    assert back.event == "wall" and back.counted == "wall/nanoseconds"
    assert back.counts[key("a.Io.read", "native")] == 700_000_000
    assert read_pprof(data).counts == {key("a.Spin.spin"): 30}   # default: the first count type
    with pytest.raises(UsageError, match="no sample type 'alloc_space'"):
        read_pprof(data, "alloc_space")


def test_a_single_cpu_profile_encodes_as_before() -> None:
    cpu, _ = profiles()
    assert encode(cpu) == encode_events([cpu])
    pb = profile_pb2.Profile.FromString(gzip.decompress(encode(cpu)))
    assert [pb.string_table[t.type] for t in pb.sample_type] == ["samples", "cpu"]


def raw(flags: int, weight: int = 0, tid: int = 9) -> RawSample:
    return RawSample(1, tid, 0, 0x10, 0x20, 0, 0, flags, (), b"", 0, 0, 0, 1, 0, 0, EVENT_WALL, 0, weight, 0)


def test_wall_pairs_a_preempted_stack_with_its_completion() -> None:
    program = WallProgram(PERIOD)
    blocked = raw(0, 5 * PERIOD)
    assert program.pair(blocked) is blocked                     # a blocked interval: as it is
    assert program.pair(raw(FLAG_WALL_PENDING)) is None         # the stack waits for its completion
    paired = program.pair(raw(FLAG_WALL_COMPLETION, 3 * PERIOD))
    assert paired is not None and paired.weight == 3 * PERIOD and paired.flags & FLAG_WALL_PENDING
    assert program.labels(paired) == (("thread_state", "runnable"),)
    assert program.values(paired) == (3, 3 * PERIOD)
    program.pair(raw(FLAG_WALL_PENDING))
    assert program.pair(raw(FLAG_WALL_COMPLETION, 0)) is None   # skipped by the sampling: dropped
    assert program.pair(raw(FLAG_WALL_COMPLETION, PERIOD)) is None and program.unpaired == 1
