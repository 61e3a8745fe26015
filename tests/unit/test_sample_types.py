"""Every event in every output (`-e cpu,alloc`): the flame graph's type selector data, speedscope's profile
per type, folded stacks' file per event, pprof read back per type, `--type` picking one (no JVM).

The profile: CPU samples of "main" in work <- main (6) and fib <- main (2); allocations of "main" as
byte[] under work (3 objects, 3 MiB) and long[] under fib (1 object, 1 MiB).
"""

from __future__ import annotations

import json

import pytest

from pyprof.errors import UsageError
from pyprof.model import FrameKind, LogicalFrame, PhysicalFrame, ProfileData, SampleType, StackKey
from pyprof.output.pprof import encode_events, read_pprof_types
from pyprof.reporters import flamegraph, speedscope, typed_path, write_reports
from pyprof.reporters.sampletypes import folded_types, pick_type, shown_types, split_events
from tests.unit.test_reporters import rebuild

K = FrameKind
MIB = 1 << 20


def frame(address: int, name: str, kind: FrameKind) -> PhysicalFrame:
    return PhysicalFrame(address, (LogicalFrame(name, kind),))


MAIN, WORK, FIB = frame(0x100, "main", K.INTERPRETED), frame(0x200, "work", K.C2), frame(0x300, "fib", K.C2)
BYTES, LONGS = frame(0, "byte[]", K.NATIVE), frame(0, "long[]", K.NATIVE)


def events() -> list[ProfileData]:
    cpu = ProfileData(event="cpu", period_ns=10_000_000)
    cpu.add(StackKey((WORK, MAIN), "main", 1), 6)
    cpu.add(StackKey((FIB, MAIN), "main", 1), 2)
    alloc = ProfileData(event="alloc", period_ns=10_000_000)
    alloc.add(StackKey((BYTES, WORK, MAIN), "main", 1), 3, 3 * MIB)
    alloc.add(StackKey((LONGS, FIB, MAIN), "main", 1), 1, MIB)
    return [cpu, alloc]


def test_split_events_gives_both_types_of_each_event_and_views_drop_cpu_ns() -> None:
    typed = split_events(events())
    assert [t.name for t in typed] == ["samples", "cpu", "alloc_objects", "alloc_space"]
    space = typed[3].profile
    assert space.counted == "alloc_space/bytes" and space.total_samples == 4 * MIB
    assert typed[1].profile.total_samples == 8 * 10_000_000   # cpu ns = samples x period
    assert [t.name for t in shown_types(typed)] == ["samples", "alloc_objects", "alloc_space"]
    assert [t.name for t in folded_types(typed)] == ["samples", "alloc_space"]
    assert pick_type(typed, None).name == "samples" and pick_type(typed, "alloc_space") is typed[3]
    with pytest.raises(UsageError, match=r"no sample type 'wall' .*types: samples, cpu, alloc_objects"):
        pick_type(typed, "wall")


def test_flamegraph_page_holds_every_type_over_the_union_of_paths() -> None:
    typed = shown_types(split_events(events()))
    data = flamegraph.build_types(typed, title="t")
    assert [t["name"] for t in data["types"]] == ["samples", "alloc_objects", "alloc_space"]
    assert [t["unit"] for t in data["types"]] == ["count", "count", "bytes"]
    # CPU samples are worth the period (the page's CPU seconds); the other types are not samples
    assert [t["periodNs"] for t in data["types"]] == [10_000_000, 0, 0]
    nodes = rebuild(data)
    space = data["types"][2]["values"]
    by_path = {}
    path: list[str] = []
    for (depth, name, value), bytes_ in zip(nodes, space):
        path[depth:] = [name]
        by_path["/".join(path)] = (value, bytes_)
    # the default type (CPU samples) is nodes.value; byte[] is only in the allocation type
    assert by_path["all"] == (8, 4 * MIB)
    assert by_path["all/main/main [interp]/work [C2]"] == (6, 3 * MIB)
    assert by_path["all/main/main [interp]/work [C2]/byte[]"] == (0, 3 * MIB)
    assert by_path["all/main/main [interp]/fib [C2]/long[]"] == (0, MIB)
    assert "alloc_space" in data["types"][2]["subtitle"] and "MiB" in data["types"][2]["subtitle"]
    # AND a page of one type has no selector's worth of types
    assert len(flamegraph.build(events()[0])["types"]) == 1


def test_speedscope_file_has_a_profile_per_type_and_thread_in_its_unit() -> None:
    doc = speedscope.build_types(shown_types(split_events(events())))
    by_name = {p["name"]: p for p in doc["profiles"]}
    assert list(by_name) == ["samples: main", "alloc_objects: main", "alloc_space: main"]
    assert by_name["samples: main"]["unit"] == "nanoseconds"
    assert by_name["samples: main"]["endValue"] == 8 * 10_000_000
    objects = by_name["alloc_objects: main"]
    assert objects["unit"] == "none" and objects["endValue"] == 4
    space = by_name["alloc_space: main"]
    assert space["unit"] == "bytes" and space["endValue"] == 4 * MIB
    frames = [f["name"] for f in doc["shared"]["frames"]]
    stacks = {tuple(frames[i] for i in s): w for s, w in zip(space["samples"], space["weights"])}
    assert stacks[("main [interp]", "work [C2]", "byte[]")] == 3 * MIB
    # the fields speedscope's file-format schema requires of a file and of a sampled profile
    assert doc["$schema"] == speedscope.SCHEMA and isinstance(doc["activeProfileIndex"], int)
    for profile in doc["profiles"]:
        assert {"type", "name", "unit", "startValue", "endValue", "samples", "weights"} <= set(profile)
        assert len(profile["samples"]) == len(profile["weights"])
        assert all(0 <= i < len(frames) for s in profile["samples"] for i in s)


def test_folded_stacks_of_several_events_are_one_file_per_event(tmp_path) -> None:
    out = tmp_path / "x.folded"
    written = write_reports(events(), str(out), "collapsed")
    assert written == [str(out), str(tmp_path / "x.alloc_space.folded")]
    assert out.read_text() == "main;main [interp];fib [C2] 2\nmain;main [interp];work [C2] 6\n"
    assert (tmp_path / "x.alloc_space.folded").read_text() == (
        f"main;main [interp];fib [C2];long[] {MIB}\nmain;main [interp];work [C2];byte[] {3 * MIB}\n")


def test_typed_path_puts_the_type_before_the_format_suffix() -> None:
    assert typed_path("/d/x.folded", "delay") == "/d/x.delay.folded"
    assert typed_path("x.txt", "wall") == "x.wall.txt"
    assert typed_path("x.pb.gz", "wall") == "x.wall.pb.gz"
    assert typed_path("profile", "wall") == "profile.wall"


def test_pages_of_several_events_written_from_a_session_hold_every_type(tmp_path) -> None:
    html, ss = tmp_path / "x.html", tmp_path / "x.speedscope.json"
    assert write_reports(events(), str(html), "flamegraph") == [str(html)]
    write_reports(events(), str(ss), "speedscope")
    page = flamegraph.decode_data(html.read_text())
    assert [t["name"] for t in page["types"]] == ["samples", "alloc_objects", "alloc_space"]
    assert page["title"] == "Flame graph"
    assert len(json.loads(ss.read_text())["profiles"]) == 3


def test_pprof_of_several_events_reads_back_per_type() -> None:
    back = read_pprof_types(encode_events(events()))
    assert [t for t, _ in back] == [SampleType("samples", "count"), SampleType("cpu", "nanoseconds"),
                                    SampleType("alloc_objects", "count"), SampleType("alloc_space", "bytes")]
    samples, space = back[0][1], back[3][1]
    assert samples.counted == "" and samples.event == "cpu" and samples.total_samples == 8
    assert space.event == "alloc" and space.total_samples == 4 * MIB
    # the stacks are decoded once: both types share the key objects
    assert {id(k) for k in samples.counts} & {id(k) for k in space.counts} or len(space.counts) == 2
