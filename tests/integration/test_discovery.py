"""Discovery with real JVMs: one started after the scanner, one exiting, and one in its own mount and
pid namespace whose JDK sits at a path the host does not have (`unshare` + `pivot_root`)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from pyprof.discovery import JvmScanner, JvmTarget, ScanResult, Selection, ServiceRule
from pyprof.discovery.files import open_mapped
from pyprof.procfs.maps import library_entries, read_maps
from tests.conftest import CLASSES, JDK_HOMES, NATIVE_LIBS, JavaProcess, require, start_java

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


def _container_script(root: Path, jdk_home: Path, jdk_path: str, marker: str) -> str:
    """A shell script for `unshare --mount --pid --fork`: a root with the host's /usr, the JDK bound at
    a path only the container has, its own /proc (its pid namespace) and /tmp, made the namespace's
    root with pivot_root as container runtimes do (with chroot alone the host would still see the
    JDK's path under the temp directory); java runs as the namespace's pid 1."""
    binds = [("/usr", "usr"), ("/dev", "dev"), (str(jdk_home), jdk_path.lstrip("/")),
             (str(CLASSES), "work/classes"), (str(NATIVE_LIBS), "work/native")]
    lines = ["set -e", f"mount --bind '{root}' '{root}'"]
    lines += [f"mount --rbind '{src}' '{root}/{dst}'" for src, dst in binds]
    lines += [f"mount -t proc proc '{root}/proc'", f"mount -t tmpfs tmpfs '{root}/tmp'",
              f"cd '{root}'", "pivot_root . .old", "umount -l /.old",
              f"exec {jdk_path}/bin/java {marker} -cp /work/classes "
              "-Djava.library.path=/work/native pyproftest.Phases"]
    return "\n".join(lines)


def _make_root(tmp_path: Path, jdk_path: str) -> Path:
    root = tmp_path / "container-root"
    for sub in ("usr", "dev", "proc", "tmp", "etc", ".old", jdk_path.lstrip("/"), "work/classes",
                "work/native"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):     # Debian's merged /usr, as the host has it
        (root / link).symlink_to(f"usr/{link}")
    return root


@pytest.fixture
def container_jvm(tmp_path: Path):
    """Phases on JDK 21 in its own mount and pid namespace, its JDK at /opt/container-jdk-XXXX."""
    require(os.geteuid() == 0, "unshare and chroot need root")
    require(shutil.which("unshare") is not None and shutil.which("pivot_root") is not None,
            "unshare and pivot_root (util-linux) are missing")
    jdk_path = f"/opt/container-jdk-{secrets.token_hex(4)}"
    assert not os.path.exists(jdk_path)
    marker = f"-Dpyproftest.container={secrets.token_hex(4)}"
    root = _make_root(tmp_path, jdk_path)
    script = _container_script(root, JDK_HOMES[21], jdk_path, marker)
    proc = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c",
                             script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    jvm = JavaProcess(proc, 21)
    try:
        jvm.wait_for("ready")
        yield jvm, jdk_path, marker
    finally:
        jvm.stop()             # SIGKILL to unshare, which does not take its child with it:
        _kill_marked(marker)   # kill the namespace's pid 1 (java), and the namespace goes with it


def _kill_marked(marker: str) -> None:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    os.kill(int(name), 9)
        except OSError:
            continue


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
