"""`pyprof daemon` end to end: real JVMs on three JDKs — one running before the daemon, one started after
it, one in its own mount and pid namespaces with a JDK path the host lacks, one that exits mid-window —
one sampler for all of them, windows in the store with their labels, the ground truth of a merged
report, and SIGTERM writing the open windows."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from pyprof.output.pprof import read_pprof
from tests.conftest import ROOT, pyprof
from tests.integration.test_attach import PHASES, phase_shares

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]
INTERVAL_S = 4


def start_daemon(store: Path, match: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pyprof.cli.main", "daemon", "--out", str(store), "--interval",
           str(INTERVAL_S), "--rate", "499", "--match", match]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


class DaemonLog:
    """The daemon's stderr, read line by line in a thread (so that a test can wait for one line)."""

    def __init__(self, daemon: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(daemon,), daemon=True)
        self._thread.start()

    def _read(self, daemon: subprocess.Popen) -> None:
        for line in daemon.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def terminate(self, daemon: subprocess.Popen) -> int:
        """SIGTERM, as systemd stops it: its exit code, once it has logged its exit line."""
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=60)
        self.wait_for(r" exit reason=SIGTERM", 5)
        return rc

    def wait_for(self, pattern: str, timeout_s: float) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (not self._thread.is_alive() and seen == len(self.lines)):
                    raise AssertionError(f"no log line matching {pattern!r} in {timeout_s} s:\n"
                                         + "\n".join(self.lines[-30:]))
                self._cond.wait(min(left, 0.5))


def pid_of(line: str) -> int:
    return int(re.search(r"pid=(\d+)", line).group(1))


def test_daemon_profiles_every_jvm_into_the_store(java_workload, container_jvm, tmp_path: Path) -> None:
    marker = secrets.token_hex(4)
    store = tmp_path / "store"
    # GIVEN a JVM on JDK 17 running before the daemon, and a JVM in its own namespaces (JDK 21)
    before = java_workload(17, "Phases", "60,30,10", jvm_flags=(f"-Dpyproftest.daemon={marker}",))
    _unshare, container_jdk, container_marker = container_jvm
    # WHEN the daemon runs (restricted to this test's JVMs)
    daemon = start_daemon(store, rf"pyproftest\.daemon={marker}|{re.escape(container_marker)}")
    log = DaemonLog(daemon)
    try:
        log.wait_for(rf"jvm-found pid={before.pid}\b", 120)
        container_line = log.wait_for(r"jvm-found .*jdk=21\.", 60)
        # AND a JVM on JDK 25 starts after it, and another exits in the middle of a window
        later = java_workload(25, "Phases", "20,70,10", jvm_flags=(f"-Dpyproftest.daemon={marker}",),
                              wait_ready=False)
        found = log.wait_for(rf"jvm-found pid={later.pid}\b", 60)
        later.wait_for("ready")
        later_ready = time.time()   # its 20/70/10 split holds from "ready" on (before it: start-up, JIT)
        short = java_workload(17, "Phases", "60,30,10", "100", "5",
                              jvm_flags=(f"-Dpyproftest.daemon={marker}",))
        log.wait_for(rf"jvm-gone pid={short.pid}\b", 60)
        log.wait_for(rf"window pid={later.pid}\b", 60)
        time.sleep(4 * INTERVAL_S)
        stopped_at = time.time()
        lines_before_stop = len(log.lines)
        rc = log.terminate(daemon)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    # THEN it exited 0 and logged one line per event
    assert rc == 0, "\n".join(log.lines[-30:])
    assert "jdk=25." in found
    container_pid = pid_of(container_line)
    # AND the store has windows of every JVM, with their labels, private to the daemon's user
    listing = pyprof("store", "ls", str(store), "--json", check=True)
    windows = json.loads(listing.stdout)["windows"]
    by_pid = Counter(w["pid"] for w in windows)
    for pid in (before.pid, later.pid, short.pid, container_pid):
        assert by_pid[pid] >= 1, (pid, by_pid)
    jdks = {w["pid"]: w["jdk"] for w in windows}
    assert jdks[before.pid].startswith("17.") and jdks[later.pid].startswith("25.")
    assert jdks[container_pid].startswith("21.")
    assert {w["service"] for w in windows} == {"pyproftest.Phases"}
    assert all(w["host"] for w in windows)
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(w["path"]).st_mode) == 0o600 for w in windows)
    # AND SIGTERM wrote the open windows: a window line for each JVM still running after the signal, and
    # the last window of the first JVM ends at the signal, not at the rotation before it
    after_stop = log.lines[lines_before_stop:]
    for pid in (before.pid, later.pid, container_pid):
        assert any(re.search(rf" window pid={pid}\b", line) for line in after_stop), (pid, after_stop)
    last_until = max(w["until_ns"] for w in windows if w["pid"] == before.pid) / 1e9
    assert stopped_at - 0.5 <= last_until <= stopped_at + 10, (last_until, stopped_at)
    # AND every window names its samples' threads
    sample = read_pprof(windows[0]["path"])
    assert all(key.thread_name for key in sample.counts)
    # AND the merged windows of each long-running JVM keep its ground truth within 3 points
    # (the later JVM's windows from one interval after its "ready": a window overlapping start-up is not
    # its steady state)
    for pid, expected, since in ((before.pid, (60, 30, 10), None), (container_pid, (60, 30, 10), None),
                                 (later.pid, (20, 70, 10), later_ready + INTERVAL_S)):
        merged = tmp_path / f"merged-{pid}.pb.gz"
        selection = ["--since", f"@{since:.0f}"] if since else []
        pyprof("report", str(store), "--pid", str(pid), *selection, "-o", str(merged), "--format", "pprof",
               check=True)
        profile = read_pprof(str(merged))
        assert sum(n for k, n in profile.counts.items() if k.thread_name == "phases-main") >= 800, pid
        shares = phase_shares(profile)
        for phase, want in zip(PHASES, expected):
            assert abs(shares[phase] - want) <= 3.0, (pid, shares)
