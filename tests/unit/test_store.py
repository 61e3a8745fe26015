"""The local store (pyprof.store): atomic private files, the SQLite index, retention, crash repair,
merging, and the `pyprof store ls` / `pyprof report DIR` commands over it."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pyprof.errors import PermissionDenied, UsageError
from pyprof.output.pprof import read_pprof
from pyprof.output.proto import profile_pb2
from pyprof.store import Retention, Store, WindowLabels, merge_windows
from pyprof.store.timespec import NS, parse_range, parse_time
from tests.conftest import ROOT, pyprof
from tests.unit.windows import COPY, HOT, PERIOD_NS, T0, WINDOW_NS, window

ORDERS_1 = WindowLabels("orders", 4242, "ab" * 32, "21.0.8+9-LTS", "host-a")
ORDERS_2 = WindowLabels("orders", 4343, "", "17.0.13+11", "host-a")
BILLING = WindowLabels("billing", 5151, "", "25.0.2+10", "host-a")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_windows_are_private_files_indexed_with_their_labels(tmp_path: Path) -> None:
    # GIVEN a store in a directory that does not exist yet, and a permissive umask
    root = tmp_path / "store"
    old = os.umask(0)
    try:
        with Store.open(root) as store:
            # WHEN two windows are written
            first = store.write_window(window(T0), ORDERS_1)
            store.write_window(window(T0 + WINDOW_NS, hot=5, copy=0), BILLING)
            # THEN the directories are 0700, every file 0600 and ours (SQLite's -wal and -shm too)
            assert mode(root) == 0o700 and mode(root / "windows") == 0o700
            files = [p for p in root.rglob("*") if p.is_file()]
            assert {p.name for p in files} >= {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm",
                                               first.path.rsplit("/", 1)[-1]}
            for f in files:
                assert mode(f) == 0o600, f
                assert os.lstat(f).st_uid == os.geteuid()
            for d in (p for p in root.rglob("*") if p.is_dir()):
                assert mode(d) == 0o700, d
    finally:
        os.umask(old)
    # AND the index answers queries without the files (rows carry labels, times and sample counts)
    with Store.open_readonly(root) as store:
        rows = store.query(service="orders")
        assert [(r.labels, r.start_ns, r.end_ns, r.samples) for r in rows] == [
            (ORDERS_1, T0, T0 + WINDOW_NS, 40)]
        assert [r.labels.service_name for r in store.query(since_ns=T0 + WINDOW_NS)] == ["billing"]
        assert store.query(pid=9999) == []
        # AND a window reads back as the profile that was written
        assert store.read(rows[0]).counts == {HOT: 30, COPY: 10}


def test_second_writer_and_foreign_directories_are_refused(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s"):
        with pytest.raises(UsageError, match="in use by another writer"):
            Store.open(tmp_path / "s")
    (tmp_path / "link").symlink_to(tmp_path / "s")
    with pytest.raises(UsageError, match="symlink is refused"):
        Store.open(tmp_path / "link")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)
    with pytest.raises(PermissionDenied, match="belongs to uid 65534"):
        Store.open(foreign)


def test_retention_deletes_the_oldest_by_size_and_by_age(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as store:
        written = [store.write_window(window(T0 + i * WINDOW_NS), ORDERS_1) for i in range(6)]
        size = written[0].bytes
        # WHEN the size bound allows three windows
        store.retention = Retention(max_bytes=3 * size + size // 2)
        assert store.apply_retention() == 3
        # THEN the three newest are kept, files and rows
        assert [w.id for w in store.query()] == [w.id for w in written[3:]]
        assert not (tmp_path / "s" / written[0].path).exists()
        # WHEN the age bound is 20 s at the end of the last window: windows ending before are dropped
        store.retention = Retention(max_age_s=20)
        assert store.apply_retention(now_ns=written[-1].end_ns) == 1
        assert [w.id for w in store.query()] == [w.id for w in written[4:]]
        assert store.counters.windows_expired == 4


def test_open_repairs_what_a_crash_can_leave_and_counts_it(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store.open(root) as store:
        kept, lost_file, unindexed = (store.write_window(window(T0 + i * WINDOW_NS), ORDERS_1)
                                      for i in range(3))
    day = (root / kept.path).parent
    # GIVEN a row whose file is gone, a file whose row is gone, a temp file, and a file that is no pprof
    os.unlink(root / lost_file.path)
    with sqlite3.connect(root / "index.sqlite") as db:
        db.execute("DELETE FROM windows WHERE id = ?", (unindexed.id,))
    (day / ".x.pb.gz.1234.tmp").write_bytes(b"half a window")
    (day / "1-1-abc.pb.gz").write_bytes(b"not a profile")
    # WHEN the writer opens the store again
    with Store.open(root) as store:
        repair = store.counters.repair
        # THEN each is repaired and counted
        assert (repair.temp_files_removed, repair.rows_without_file, repair.files_indexed,
                repair.broken_files_removed) == (1, 1, 1, 1)
        rows = store.query()
        assert [r.path for r in rows] == [kept.path, unindexed.path]
        # AND the re-indexed row was rebuilt from the labels inside the file
        assert rows[1].labels == ORDERS_1 and rows[1].samples == 40 and rows[1].start_ns == unindexed.start_ns
    assert sorted(p.name for p in day.iterdir()) == sorted(Path(r.path).name for r in rows)


WRITER = textwrap.dedent("""
    import sys
    from pyprof.store import Store, WindowLabels
    from tests.unit.windows import window, T0, WINDOW_NS
    store = Store.open(sys.argv[1])
    print("ready", flush=True)
    i = 0
    while True:
        store.write_window(window(T0 + i * WINDOW_NS, hot=1000 + i, copy=500), WindowLabels("svc", 7))
        i += 1
""")


def test_kill_9_during_writes_leaves_no_broken_window(tmp_path: Path) -> None:
    root = tmp_path / "s"
    for _round in range(3):
        # GIVEN a writer writing windows as fast as it can, WHEN it is killed with SIGKILL
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.4)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    # THEN reopening finds every indexed window complete (its file parses, its samples match the row)
    with Store.open(root) as store:
        rows = store.query()
        assert len(rows) > 3
        for row in rows:
            assert store.read(row).total_samples == row.samples
        assert store.counters.repair.broken_files_removed == 0
    assert not [p for p in root.rglob(".*.tmp")]


def test_merge_is_exact_and_keeps_labels_and_sample_types(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store.open(root) as store:
        store.write_window(window(T0, hot=30, copy=10, lost=2, unknown=1), ORDERS_1)
        store.write_window(window(T0 + WINDOW_NS, hot=7, copy=3, lost=1), ORDERS_1)
        store.write_window(window(T0 + WINDOW_NS, hot=100, copy=0), ORDERS_2)
        store.write_window(window(T0, hot=999), BILLING)
    # WHEN the orders windows of one pid are merged through the CLI into a pprof
    out = tmp_path / "merged.pb.gz"
    done = pyprof("report", str(root), "--service", "orders", "--pid", "4242", "--since", "@0",
                  "-o", str(out))
    assert done.returncode == 0, done.stderr
    merged = read_pprof(out)
    # THEN counts are the sums, labels (thread, tid, span) survive, so do lost samples and unknown frames
    assert merged.counts == {HOT: 37, COPY: 13}
    assert (merged.lost_samples, merged.unknown_frames, merged.period_ns) == (3, 1, PERIOD_NS)
    assert (merged.start_time_ns, merged.duration_ns) == (T0, 2 * WINDOW_NS)
    pb = profile_pb2.Profile.FromString(gzip.decompress(out.read_bytes()))
    types = [(pb.string_table[t.type], pb.string_table[t.unit]) for t in pb.sample_type]
    assert types == [("samples", "count"), ("cpu", "nanoseconds")]
    assert sum(s.value[1] for s in pb.sample) == 50 * PERIOD_NS
    # AND merging two pids keeps them apart as a `pid` sample label
    with Store.open_readonly(root) as store:
        both = merge_windows((w.labels, store.read(w)) for w in store.query(service="orders"))
    by_pid: dict[str, int] = {}
    for key, count in both.counts.items():
        by_pid[dict(key.labels)["pid"]] = by_pid.get(dict(key.labels)["pid"], 0) + count
    assert by_pid == {"4242": 50, "4343": 100}


def test_merge_refuses_windows_of_different_rates() -> None:
    with pytest.raises(UsageError, match="different rates"):
        merge_windows([(ORDERS_1, window(T0)), (ORDERS_1, window(T0 + WINDOW_NS, period_ns=PERIOD_NS * 2))])


def test_store_ls_lists_windows_as_text_and_json(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store.open(root) as store:
        store.write_window(window(T0), ORDERS_1)
        store.write_window(window(T0 + WINDOW_NS, hot=5, copy=0), BILLING)
    done = pyprof("store", "ls", str(root), "--json")
    assert done.returncode == 0, done.stderr
    windows = json.loads(done.stdout)["windows"]
    assert [(w["service"], w["pid"], w["container_id"], w["jdk"], w["samples"]) for w in windows] == [
        ("orders", 4242, "ab" * 32, "21.0.8+9-LTS", 40), ("billing", 5151, "", "25.0.2+10", 5)]
    assert windows[0]["from"] == "2025-11-30T02:50:00Z" and windows[0]["until"] == "2025-11-30T02:50:15Z"
    assert all(Path(w["path"]).is_file() for w in windows)
    text = pyprof("store", "ls", str(root), "--service", "billing")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0].split()[:3] == ["SERVICE", "PID", "CONTAINER"] and len(lines) == 2
    assert lines[1].split()[:2] == ["billing", "5151"]
    bad = pyprof("store", "ls", str(tmp_path))
    assert bad.returncode == 2 and "not a pyprof store" in bad.stderr


def test_report_diff_compares_two_time_ranges(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with Store.open(root) as store:
        store.write_window(window(T0, hot=90, copy=10), ORDERS_1)                    # before: copy 10 %
        store.write_window(window(T0 + 3600 * NS, hot=50, copy=50), ORDERS_1)        # after: copy 50 %
    first = "2025-11-30T02:50..2025-11-30T03:00"
    second = "2025-11-30T03:45..2025-11-30T04:00"
    done = pyprof("report", str(root), "--service", "orders", "--diff", first, second, "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["function"]: row for row in json.loads(done.stdout)["rows"]}
    assert rows["memcpy"]["base_self_percent"] == pytest.approx(10) \
        and rows["memcpy"]["new_self_percent"] == pytest.approx(50)
    nothing = pyprof("report", str(root), "--service", "orders", "--diff", first, "2020-01-01..2020-01-02")
    assert nothing.returncode == 2 and "no window" in nothing.stderr
    bad = pyprof("report", str(root), "--diff", "yesterday", first)
    assert bad.returncode == 2 and "invalid range" in bad.stderr


def test_time_and_range_syntax() -> None:
    now = 2_000_000_000 * NS
    assert parse_time("now", now) == now
    assert parse_time("10m", now) == now - 600 * NS
    assert parse_time("1h30m", now) == now - 5400 * NS
    assert parse_time("@1764471000") == T0
    assert parse_time("2025-11-30T02:50:00Z") == T0 == parse_time("2025-11-30T02:50")
    assert parse_time("2025-11-30T03:50+01:00") == T0
    r = parse_range("2h..", now)
    assert (r.start_ns, r.end_ns) == (now - 7200 * NS, None)
    with pytest.raises(UsageError, match="ends before"):
        parse_range("1h..2h", now)
    with pytest.raises(UsageError, match="invalid time"):
        parse_time("yesterday")


def test_retention_syntax() -> None:
    assert Retention.parse("5GiB") == Retention(max_bytes=5 * 1024**3)
    assert Retention.parse("7d") == Retention(max_age_s=7 * 86400)
    assert Retention.parse("500MB, 12h") == Retention(500 * 1024**2, 12 * 3600)
    assert Retention.parse("10m") == Retention(max_age_s=600)      # minutes: a size needs its B
    for bad in ("0B", "5Q", "500M", "lots"):
        with pytest.raises(UsageError, match="invalid --retention"):
            Retention.parse(bad)


def test_store_ls_reads_while_a_writer_writes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        counts = []
        for _ in range(3):
            done = pyprof("store", "ls", str(root), "--json")
            assert done.returncode == 0, done.stderr
            counts.append(len(json.loads(done.stdout)["windows"]))
        # every listing succeeded while windows kept coming, and saw them coming
        assert counts == sorted(counts) and counts[-1] > counts[0]
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
