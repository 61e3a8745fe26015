"""`pyprof daemon -e cpu,alloc,lock,wall` end to end: real JVMs (AllocSites on JDK 17, LockSites on JDK 21,
OffCpu on JDK 17, Phases on JDK 21 in its own mount and pid namespaces) found by one daemon that pushes
every window to a local Pyroscope and a local OTLP receiver. The store's windows hold every event's
sample types; `report DIR --type` picks one; the pushed bytes, decoded with the protobuf definitions,
carry the profile types each backend expects, with the same values as the store (ground truth:
AllocSites allocates 75 % of its bytes as byte[] in allocLarge; LockSites' waiters block on a monitor
and on a ReentrantLock; OffCpu's thread is alive all the time, so its wall time is the windows' length)."""

from __future__ import annotations

import gzip
import json
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2

from pyprof.cli.store import load_merged
from pyprof.export.proto import push_pb2
from pyprof.output.pprof import read_events, read_pprof, read_sample_types
from pyprof.output.proto import profile_pb2
from tests.conftest import ROOT, pyprof
from tests.integration.events_driver import frame_names
from tests.integration.test_daemon import DaemonLog, pid_of
from tests.unit.receiver import Receiver
from tests.unit.test_metrics import scrape

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]
INTERVAL_S = 3
EVENTS = "cpu,alloc,lock,wall"
STORE_TYPES = ["samples", "cpu", "alloc_objects", "alloc_space", "contentions", "delay", "wall_samples",
               "wall"]
OTLP_TYPES = [("samples", "count"), ("alloc_objects", "count"), ("alloc_space", "bytes"),
              ("contentions", "count"), ("delay", "nanoseconds"), ("wall_samples", "count"),
              ("wall", "nanoseconds")]


def start_daemon(store: Path, match: str, push: str, otlp: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pyprof.cli.main", "daemon", "--out", str(store), "--interval",
           str(INTERVAL_S), "--rate", "99", "--match", match, "-e", EVENTS, "--push", push, "--otlp", otlp,
           "--metrics", "127.0.0.1:0"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def pushed_series(requests) -> dict[tuple[int, str], list[tuple[dict, bytes]]]:
    """(pid, __name__) -> [(labels, raw pprof)] over every Push request."""
    out: dict[tuple[int, str], list[tuple[dict, bytes]]] = defaultdict(list)
    for request in requests:
        assert request.path == "/push.v1.PusherService/Push"
        for series in push_pb2.PushRequest.FromString(request.body).series:
            labels = {label.name: label.value for label in series.labels}
            for sample in series.samples:
                out[(int(labels["pid"]), labels["__name__"])].append((labels, sample.raw_profile))
    return out


def otlp_profiles(requests) -> dict[int, list[tuple[str, str, int, str]]]:
    """pid -> [(sample type, unit, sum of values, leaf function of the heaviest sample)] per Profile."""
    out: dict[int, list[tuple[str, str, int, str]]] = defaultdict(list)
    for request in requests:
        assert request.path == "/v1development/profiles"
        body = profiles_service_pb2.ExportProfilesServiceRequest.FromString(request.body)
        d = body.dictionary
        strings = d.string_table
        for rp in body.resource_profiles:
            resource = {kv.key: kv.value for kv in rp.resource.attributes}
            pid = resource["process.pid"].int_value
            for profile in rp.scope_profiles[0].profiles:
                heaviest = max(profile.samples, key=lambda s: s.values[0], default=None)
                leaf = ""
                if heaviest is not None:
                    location = d.location_table[d.stack_table[heaviest.stack_index].location_indices[0]]
                    leaf = strings[d.function_table[location.lines[0].function_index].name_strindex]
                out[pid].append((strings[profile.sample_type.type_strindex],
                                 strings[profile.sample_type.unit_strindex],
                                 sum(s.values[0] for s in profile.samples), leaf))
    return out


def wait_windows(log: DaemonLog, pids: tuple[int, ...], n: int, timeout_s: float) -> None:
    """Until the daemon logged `n` windows of each pid."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = Counter(pid_of(line) for line in list(log.lines) if " window pid=" in line)
        if all(counts[pid] >= n for pid in pids):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {n} windows of {pids}: {counts}\n" + "\n".join(log.lines[-20:]))
        time.sleep(0.2)


def leaf_shares(profile, thread: str) -> Counter:
    """% of the profile's weight per (leaf, caller) on `thread`."""
    weight: Counter = Counter()
    for key in profile.counts:
        if key.thread_name == thread:
            names = frame_names(key)
            weight[(names[0], names[1] if len(names) > 1 else "")] += profile.weight(key)
    total = sum(weight.values()) or 1
    return Counter({site: 100.0 * w / total for site, w in weight.items()})


def test_daemon_profiles_every_event_of_every_jvm(java_workload, container_jvm, tmp_path: Path) -> None:
    marker = secrets.token_hex(4)
    store = tmp_path / "store"
    flags = (f"-Dpyproftest.daemon={marker}",)
    # GIVEN three JVMs, each a known workload of one event
    alloc = java_workload(17, "AllocSites", jvm_flags=flags, wait_ready=False)
    lock = java_workload(21, "LockSites", jvm_flags=flags, wait_ready=False)
    offcpu = java_workload(17, "OffCpu", jvm_flags=flags, wait_ready=False)
    for jvm in (alloc, lock, offcpu):   # started together; their ground truth holds from "ready" on
        jvm.wait_for("ready")
    # AND one in its own mount and pid namespaces, its JDK at a path the host lacks (a container)
    _unshare, _container_jdk, container_marker = container_jvm
    with Receiver() as pyroscope, Receiver() as otlp:
        # WHEN one daemon profiles them for cpu, alloc, lock and wall, pushing to both backends
        daemon = start_daemon(store, rf"pyproftest\.daemon={marker}|{re.escape(container_marker)}",
                              pyroscope.url, otlp.url)
        log = DaemonLog(daemon)
        try:
            log.wait_for(r" started .*events=cpu,alloc,lock,wall", 60)
            for jvm in (alloc, lock, offcpu):
                log.wait_for(rf"jvm-found pid={jvm.pid}\b", 60)
            container_pid = pid_of(log.wait_for(r"jvm-found .*jdk=21\..*service=pyproftest\.Phases", 60))
            wait_windows(log, (alloc.pid, lock.pid, offcpu.pid, container_pid), 2, 10 * INTERVAL_S)
            metrics_url = re.search(r"url=(\S+)", log.wait_for(r" metrics url=", 5)).group(1)
            metrics = scrape(metrics_url)
            rc = log.terminate(daemon)
        finally:
            if daemon.poll() is None:
                daemon.kill()
    assert rc == 0, "\n".join(log.lines[-30:])
    # THEN every event served every JVM (their libjvms have the probed functions), the container's too
    # (its uprobes on the libjvm it mapped, through /proc/PID/map_files)
    assert not [line for line in log.lines if " event-unavailable " in line], log.lines
    assert not [line for line in log.lines if " push-unsent " in line or " window-failed " in line], log.lines
    # AND its last line counts each event's lost records and the programs' own counters
    stopped = next(line for line in log.lines if " stopped " in line)
    counters = dict(field.split("=", 1) for field in stopped.split()[2:])
    assert {"lost_cpu", "lost_alloc", "lost_lock", "lost_wall"} <= counters.keys(), stopped
    assert int(counters["alloc_samples"]) > 0 and int(counters["lock_records"]) > 0, stopped
    # AND /metrics has each event's samples and lost records, by event
    for event in ("cpu", "alloc", "lock", "wall"):
        assert metrics[("pyprof_event_samples_total", (("event", event),))] > 0, metrics
    lost_metric = {event: metrics.get(("pyprof_lost_records_total", (("event", event),)), 0)
                   for event in ("cpu", "alloc", "lock", "wall")}
    assert sum(lost_metric.values()) == metrics[("pyprof_lost_samples_total", ())], metrics
    # (records are lost while the daemon opens a JVM: seconds without draining on this loaded machine;
    # each `samples-lost` line counts them per event, and the totals include every line's)
    logged: Counter = Counter()
    for line in log.lines:
        if " samples-lost " in line:
            fields = dict(field.split("=", 1) for field in line.split()[2:] if "=" in field)
            logged[fields["event"]] += int(fields["count"])
    for event in ("cpu", "alloc", "lock", "wall"):
        assert logged[event] <= int(counters[f"lost_{event}"]), (logged, stopped)

    # AND each window in the store is one pprof with every event's sample types, cpu's the default
    windows = json.loads(pyprof("store", "ls", str(store), "--json", check=True).stdout)["windows"]
    by_pid = Counter(w["pid"] for w in windows)
    for pid in (alloc.pid, lock.pid, offcpu.pid, container_pid):
        assert by_pid[pid] >= 2, by_pid
    for window in windows:
        assert read_sample_types(window["path"]) == STORE_TYPES, window
        pb = profile_pb2.Profile.FromString(gzip.decompress(Path(window["path"]).read_bytes()))
        assert pb.string_table[pb.default_sample_type] == "cpu"

    # AND `report DIR --type alloc_space` merges the allocating JVM's bytes: 75 % byte[] from allocLarge
    merged = tmp_path / "alloc.pb.gz"
    pyprof("report", str(store), "--pid", str(alloc.pid), "--type", "alloc_space", "--format", "pprof",
           "-o", str(merged), check=True)
    space = read_pprof(str(merged), "alloc_space")
    shares = leaf_shares(space, "alloc-main")
    assert abs(shares[("byte[]", "pyproftest.AllocSites.allocLarge")] - 75.0) <= 10.0, shares
    assert abs(shares[("long[]", "pyproftest.AllocSites.allocSmall")] - 25.0) <= 10.0, shares
    store_alloc_space = sum(sum(p.weights.values()) for w in windows if w["pid"] == alloc.pid
                            for p in read_events(w["path"]) if p.event == "alloc")
    assert store_alloc_space > 0

    # AND `--type delay` the lock JVM's waits: the monitor's class under the waiting method, and parks
    # (the same merge as `report DIR --type`, in this process: each CLI run costs seconds here)
    delay = load_merged(str(store), None, lock.pid, None, None, "delay")
    by_kind: Counter = Counter()
    for key, value in delay.counts.items():
        names = frame_names(key)
        kind = dict(key.labels).get("lock")
        if key.thread_name == "monitor-waiter" and kind == "monitor":
            assert names[0] == "pyproftest.LockSites$Monitor", names
            by_kind["monitor"] += value
        elif key.thread_name == "lock-waiter" and kind == "park":
            assert "pyproftest.LockSites.waitOnLock" in names, names
            by_kind["park"] += value
    # both waiters are blocked most of the time: at least half the windows' length each
    lock_seconds = sum(w["until_ns"] - w["from_ns"] for w in windows if w["pid"] == lock.pid) / 1e9
    assert by_kind["monitor"] / 1e9 >= 0.5 * lock_seconds, (by_kind, lock_seconds)
    assert by_kind["park"] / 1e9 >= 0.5 * lock_seconds, (by_kind, lock_seconds)

    # AND `--type wall`: OffCpu's thread lives through every window, so its wall time is their length,
    # spent on CPU and off it (sleeping, waiting)
    wall = load_merged(str(store), None, offcpu.pid, None, None, "wall")
    states: Counter = Counter()
    for key, value in wall.counts.items():
        if key.thread_name == "offcpu-main":
            states[dict(key.labels).get("thread_state", "")] += value
    offcpu_seconds = sum(w["until_ns"] - w["from_ns"] for w in windows if w["pid"] == offcpu.pid) / 1e9
    assert 0.75 * offcpu_seconds <= sum(states.values()) / 1e9 <= 1.25 * offcpu_seconds, \
        (states, offcpu_seconds)
    assert states["running"] > 0 and states["sleeping"] > 0 and states["waiting"] > 0, states

    # AND Pyroscope got one series per profile type, named as Pyroscope names Java's
    series = pushed_series(pyroscope.requests)
    for name in ("process_cpu", "memory", "wall"):
        assert series[(alloc.pid, name)], sorted(series)
    assert series[(lock.pid, "mutex")] and series[(lock.pid, "block")], sorted(series)
    for labels, raw in series[(alloc.pid, "memory")]:
        assert labels["__delta__"] == "false" and labels["service_name"] == "pyproftest.AllocSites"
        assert read_sample_types(raw) == ["alloc_objects", "alloc_space"]
    pushed_space = sum(sum(read_pprof(raw, "alloc_space").counts.values())
                       for _labels, raw in series[(alloc.pid, "memory")])
    assert pushed_space == store_alloc_space   # every window pushed, values unchanged
    for labels, raw in series[(lock.pid, "mutex")]:
        assert labels["__delta__"] == "false"
        assert read_sample_types(raw) == ["contentions", "delay"]
        assert {dict(k.labels)["lock"] for k in read_pprof(raw).counts} == {"monitor"}
    assert all(read_sample_types(raw) == ["samples", "cpu"] for _l, raw in series[(alloc.pid, "process_cpu")])

    # AND OTLP got one Profile per sample type, with the units of the data model and the same values
    profiles = otlp_profiles(otlp.requests)
    types = [(t, u) for t, u, _total, _leaf in profiles[alloc.pid]]
    assert types[:len(OTLP_TYPES)] == OTLP_TYPES, types
    otlp_space = [(total, leaf) for t, _u, total, leaf in profiles[alloc.pid] if t == "alloc_space"]
    assert sum(total for total, _leaf in otlp_space) == store_alloc_space
    assert Counter(leaf for total, leaf in otlp_space if total).most_common(1)[0][0] == "byte[]", otlp_space
    lock_delay = sum(total for t, _u, total, _leaf in profiles[lock.pid] if t == "delay")
    assert lock_delay / 1e9 >= lock_seconds, (lock_delay, lock_seconds)   # two waiters, each most of it


def test_an_event_that_cannot_serve_a_jvm_is_logged_once_and_the_rest_is_profiled(java_workload,
                                                                                  tmp_path: Path) -> None:
    from tests.integration.test_privileges import DOCUMENTED, with_caps

    # GIVEN the daemon with the capabilities the systemd unit grants (no CAP_SYS_ADMIN: this kernel's
    # uprobe PMU refuses alloc's uprobes) and an allocating JVM
    marker = secrets.token_hex(4)
    jvm = java_workload(17, "AllocSites", jvm_flags=(f"-Dpyproftest.daemon={marker}",))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "pyprof.cli.main", "daemon", "--out", str(store), "--interval",
           str(INTERVAL_S), "--rate", "99", "--match", rf"pyproftest\.daemon={marker}", "-e", "cpu,alloc"]
    daemon = subprocess.Popen(with_caps(cmd, DOCUMENTED), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    log = DaemonLog(daemon)
    try:
        log.wait_for(rf"jvm-found pid={jvm.pid}\b", 60)
        wait_windows(log, (jvm.pid,), 2, 10 * INTERVAL_S)
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert rc == 0, "\n".join(log.lines[-30:])
    # THEN alloc's refusal is one line for that JVM, saying why
    unavailable = [line for line in log.lines if " event-unavailable " in line]
    assert len(unavailable) == 1, log.lines
    assert f"pid={jvm.pid} event=alloc " in unavailable[0] and "CAP_SYS_ADMIN" in unavailable[0], unavailable
    # AND the JVM is profiled for cpu: windows with samples, saying in a comment that alloc was not served
    windows = json.loads(pyprof("store", "ls", str(store), "--json", check=True).stdout)["windows"]
    assert len(windows) >= 2 and all(w["events"] == ["cpu", "alloc"] for w in windows), windows
    assert sum(w["samples"] for w in windows) >= 50, windows
    profile = read_pprof(windows[0]["path"])
    assert any(c.startswith("event alloc unavailable: ") for c in profile.comments), profile.comments
