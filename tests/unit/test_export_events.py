"""Windows of several events (`pyprof daemon -e cpu,alloc,lock`): one pprof in the store with every
event's sample types, `report DIR --type` over it, one Pyroscope series per profile type, one OTLP
Profile per sample type; decoded with the protobuf definitions, values compared with what was written."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2

from pyprof.export.otlp import encode_request
from pyprof.export.proto import push_pb2
from pyprof.export.pyroscope import encode_push
from pyprof.model import FrameKind, LogicalFrame, PhysicalFrame, ProfileData, StackKey
from pyprof.output.pprof import read_events, read_pprof, read_sample_types
from pyprof.store import Store
from tests.conftest import pyprof
from tests.unit.windows import COPY, HOT, MAIN_F, PERIOD_NS, T0, WINDOW_NS, WORK_F, window

LABELS_PID = 4242
BYTE_ARRAY = PhysicalFrame(0, (LogicalFrame("byte[]", FrameKind.UNKNOWN),))
ALLOC = StackKey((BYTE_ARRAY, WORK_F, MAIN_F), "worker-1", 101)
MONITOR = StackKey((PhysicalFrame(0, (LogicalFrame("demo.Cache", FrameKind.UNKNOWN),)), WORK_F, MAIN_F),
                   "worker-2", 102, (("lock", "monitor"),))
PARK = StackKey((WORK_F, MAIN_F), "worker-3", 103, (("lock", "park"),))


def events_window(start_ns: int = T0, scale: int = 1) -> list[ProfileData]:
    cpu = window(start_ns)
    alloc = ProfileData(event="alloc", period_ns=PERIOD_NS, start_time_ns=start_ns, duration_ns=WINDOW_NS)
    alloc.add(ALLOC, 3 * scale, 6_291_456 * scale)
    lock = ProfileData(event="lock", period_ns=PERIOD_NS, start_time_ns=start_ns, duration_ns=WINDOW_NS)
    lock.add(MONITOR, 5 * scale, 90_000_000 * scale)
    lock.add(PARK, 7 * scale, 40_000_000 * scale)
    return [cpu, alloc, lock]


def named(counts: dict) -> dict:
    """Counts by (thread, frame names): a read-back frame's kind is guessed from its name (a class
    frame reads as native), which is not what these tests are about."""
    return {(key.thread_name, tuple(f.name for frame in key.frames for f in frame.frames)): value
            for key, value in counts.items()}


def labels():
    from pyprof.store.labels import WindowLabels

    return WindowLabels("orders", LABELS_PID, "", "21.0.8+9-LTS", "host-a")


def test_store_keeps_every_event_and_report_picks_a_type(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as store:
        first = store.write_window(events_window(T0), labels())
        store.write_window(events_window(T0 + WINDOW_NS, scale=2), labels())
        store.write_window(window(T0 + 2 * WINDOW_NS), labels())   # a cpu-only window (an older -e)
        data = store.read_bytes(first)
    assert read_sample_types(data) == ["samples", "cpu", "alloc_objects", "alloc_space", "contentions",
                                       "delay"]
    assert first.samples == 40   # the first event's (cpu) samples
    listing = pyprof("store", "ls", str(tmp_path / "s"), "--json", check=True).stdout
    assert [w["events"] for w in json.loads(listing)["windows"]] == [["cpu", "alloc", "lock"]] * 2 + [["cpu"]]
    assert "cpu,alloc,lock" in pyprof("store", "ls", str(tmp_path / "s"), check=True).stdout
    assert [p.event for p in read_events(data)] == ["cpu", "alloc", "lock"]
    # the merged windows that have alloc_space: 1 + 2 rounds of 6 MiB; the cpu-only one is said, not summed
    done = pyprof("report", str(tmp_path / "s"), "--type", "alloc_space", "--format", "pprof", "-o",
                  str(tmp_path / "a.pb.gz"), check=True)
    assert "1 of 3 windows have no sample type 'alloc_space'" in done.stderr
    merged = read_pprof(str(tmp_path / "a.pb.gz"), "alloc_space")
    assert merged.event == "alloc" and named(merged.counts) == named({ALLOC: 3 * 6_291_456})
    assert sum(merged.weights.values()) == 3 * 6_291_456
    top = pyprof("report", str(tmp_path / "s"), "--type", "delay", "--json", check=True)
    assert '"byte[]"' not in top.stdout and "demo.Cache" in top.stdout
    missing = pyprof("report", str(tmp_path / "s"), "--type", "wall")
    assert missing.returncode != 0 and "has sample type 'wall'" in missing.stderr


def test_pyroscope_gets_one_series_per_profile_type(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as store:
        data = store.read_bytes(store.write_window(events_window(), labels()))
    request = push_pb2.PushRequest.FromString(encode_push(data, labels()))
    by_name = {}
    for series in request.series:
        names = {label.name: label.value for label in series.labels}
        [sample] = series.samples
        by_name[names["__name__"]] = (names, sample.raw_profile)
    assert sorted(by_name) == ["block", "memory", "mutex", "process_cpu"]
    assert "__delta__" not in by_name["process_cpu"][0]
    assert all(by_name[name][0]["__delta__"] == "false" for name in ("memory", "mutex", "block"))
    assert all(names["service_name"] == "orders" and names["pid"] == str(LABELS_PID)
               for names, _raw in by_name.values())
    assert read_sample_types(by_name["process_cpu"][1]) == ["samples", "cpu"]
    assert named(read_pprof(by_name["process_cpu"][1]).counts) == named({HOT: 30, COPY: 10})
    assert read_sample_types(by_name["memory"][1]) == ["alloc_objects", "alloc_space"]
    assert named(read_pprof(by_name["memory"][1], "alloc_space").counts) == named({ALLOC: 6_291_456})
    assert named(read_pprof(by_name["mutex"][1], "delay").counts) == named({MONITOR: 90_000_000})
    assert named(read_pprof(by_name["block"][1], "contentions").counts) == named({PARK: 7})


def test_a_cpu_window_is_pushed_as_stored(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as store:
        data = store.read_bytes(store.write_window(window(), labels()))
    [series] = push_pb2.PushRequest.FromString(encode_push(data, labels())).series
    assert series.samples[0].raw_profile == data


def test_otlp_gets_one_profile_per_sample_type(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as store:
        data = store.read_bytes(store.write_window(events_window(), labels()))
    body = profiles_service_pb2.ExportProfilesServiceRequest.FromString(
        encode_request(read_events(data), labels()))
    strings = body.dictionary.string_table
    [rp] = body.resource_profiles
    got = []
    for profile in rp.scope_profiles[0].profiles:
        values = sorted(sample.values[0] for sample in profile.samples)
        got.append((strings[profile.sample_type.type_strindex], strings[profile.sample_type.unit_strindex],
                    strings[profile.period_type.type_strindex], profile.period, values))
    assert got == [
        ("samples", "count", "cpu", PERIOD_NS, [10, 30]),
        ("alloc_objects", "count", "", 0, [3]),
        ("alloc_space", "bytes", "", 0, [6_291_456]),
        ("contentions", "count", "", 0, [5, 7]),
        ("delay", "nanoseconds", "", 0, [40_000_000, 90_000_000]),
    ]


def test_an_index_from_before_events_is_read_and_upgraded(tmp_path: Path) -> None:
    # GIVEN a store whose index has no events column (written before windows had events)
    with Store.open(tmp_path / "s") as store:
        store.write_window(window(T0), labels())
    db = sqlite3.connect(tmp_path / "s" / "index.sqlite")
    db.execute("ALTER TABLE windows DROP COLUMN events")
    db.commit()
    db.close()
    # THEN a reader lists its windows as cpu windows, and a writer adds the column
    with Store.open_readonly(tmp_path / "s") as reader:
        assert [w.events for w in reader.query()] == [("cpu",)]
    with Store.open(tmp_path / "s") as writer:
        writer.write_window(events_window(T0 + WINDOW_NS), labels())
        assert [w.events for w in writer.query()] == [("cpu",), ("cpu", "alloc", "lock")]
