"""Discovery with real JVMs: one started after the scanner, one exiting, and one in its own mount and
pid namespace whose JDK sits at a path the host does not have (`unshare` + `pivot_root`)."""

from __future__ import annotations

import os
import secrets
import time
from typing import Callable, Optional

import pytest

from pyprof.discovery import JvmScanner, JvmTarget, ScanResult, Selection, ServiceRule
from pyprof.discovery.files import open_mapped
from pyprof.procfs.maps import library_entries, read_maps
from tests.conftest import start_java

pytestmark = [pytest.mark.jvm]
FOUND_WITHIN_S = 2.0
SCAN_EVERY_S = 0.25


def scan_until(scanner: JvmScanner, predicate: Callable[[ScanResult], Optional[JvmTarget]],
               timeout_s: float) -> tuple[Optional[JvmTarget], float]:
    """Scan every SCAN_EVERY_S until predicate picks a target; (target, seconds it took)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        picked = predicate(scanner.scan())
        if picked is not None:
            return picked, time.monotonic() - start
        time.sleep(SCAN_EVERY_S)
    return None, time.monotonic() - start


def with_marker(marker: str) -> Callable[[ScanResult], Optional[JvmTarget]]:
    return lambda result: next((t for t in result.found if any(marker in a for a in t.argv)), None)


def test_jvms_running_and_started_later_are_found_with_labels(java_workload) -> None:
    # GIVEN a JVM already running, and a scanner with a rule naming it
    marker = f"-Dpyproftest.marker={secrets.token_hex(4)}"
    before = java_workload(17, "Phases", jvm_flags=(marker + "a",))
    scanner = JvmScanner(rules=(ServiceRule.parse(rf"{marker}a=orders"),), host="test-host")
    first = scanner.scan()
    [running] = [t for t in first.found if t.pid == before.pid]
    assert running.labels.service_name == "orders" and running.labels.host == "test-host"
    assert running.labels.jdk.startswith("17.") and running.labels.container_id == ""
    assert running.libjvm_via == "map_files" and running.namespace_pid == before.pid
    # WHEN a JVM starts after the scanner (not waiting for its "ready": discovery must not need it)
    later = start_java(21, "Phases", jvm_flags=(marker + "b",), wait_ready=False)
    try:
        found, took = scan_until(scanner, with_marker(marker + "b"), timeout_s=30)
        # THEN it is found within 2 s of its start, named by its main class, with its own JDK
        assert found is not None and found.pid == later.pid
        assert took < FOUND_WITHIN_S + SCAN_EVERY_S, f"found after {took:.2f} s"
        assert found.labels.service_name == "pyproftest.Phases" and found.labels.jdk.startswith("21.")
        # AND the first one, found already, is not reported again
        assert running.pid in scanner.tracked
        # WHEN it exits, THEN the next scan reports it gone
        later.stop()
        gone = scanner.scan().gone
        assert [t.pid for t in gone] == [later.pid] and later.pid not in scanner.tracked
    finally:
        later.stop()


def test_match_and_exclude_filter_jvms(java_workload) -> None:
    marker = f"-Dpyproftest.marker={secrets.token_hex(4)}"
    kept = java_workload(17, "Phases", jvm_flags=(marker, "-Dkeep=1"))
    dropped = java_workload(17, "Phases", jvm_flags=(marker, "-Dkeep=0"))
    scanner = JvmScanner(Selection.parse(match=marker, exclude="-Dkeep=0"))
    found = {t.pid for t in scanner.scan().found}
    assert kept.pid in found and dropped.pid not in found
    assert scanner.counters.not_selected >= 1
    # --pid: only that process's maps are read at all
    by_pid = JvmScanner(Selection.parse(pids=(dropped.pid,)))
    assert [t.pid for t in by_pid.scan().found] == [dropped.pid]
    assert by_pid.counters.maps_read == 1


def test_jvm_in_its_own_namespaces_with_a_jdk_the_host_lacks(container_jvm) -> None:
    _jvm, jdk_path, marker = container_jvm
    # WHEN the host scans
    scanner = JvmScanner()
    found, _took = scan_until(scanner, with_marker(marker), timeout_s=30)
    # THEN the JVM is found under its host pid, with its own namespace pid (1: java is the init there)
    assert found is not None, "the namespaced JVM was not found"
    assert found.namespace_pid == 1 and found.pid != 1
    # AND its libjvm is the container's path, which the host does not have, yet it was opened
    assert found.libjvm_path == f"{jdk_path}/lib/server/libjvm.so"
    assert not os.path.exists(found.libjvm_path)
    assert found.libjvm_via == "map_files"
    # AND its JDK release was read from the JVM itself
    assert found.labels.jdk.startswith("21.0.8"), found.labels
    assert found.labels.service_name == "pyproftest.Phases"
    # AND the other way in, through the container's root (no map_files), reaches the same file
    entries = library_entries(read_maps(found.pid), "libjvm.so")
    via_root = open_mapped(found.pid, entries, use_map_files=False)
    try:
        assert via_root.via == "root"
        assert os.fstat(via_root.fd).st_ino == entries[0].inode
        assert os.pread(via_root.fd, 4, 0) == b"\x7fELF"
    finally:
        os.close(via_root.fd)
