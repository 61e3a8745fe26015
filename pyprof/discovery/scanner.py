"""Finding the JVMs of a host: the ones running now and the ones started later, in containers too.

A JVM is a process with libjvm.so mapped. One scan lists /proc and reads one small file per process
(its stat); a process's maps are read only when it is new (a pid with a new start time), when its name
changed (it exec'd), or while it is young (a java launcher maps libjvm a few ms after exec). A scan
costs a few ms on a host with hundreds of processes, so the daemon can run one every second or two.

A JVM found gets its labels (WindowLabels): service_name, pid, container_id, jdk (the release string
read from the JVM's memory, read-only: discovery.jdk), host. One whose libjvm cannot be opened safely,
that is not HotSpot or that pyprof does not support is reported once as skipped and never rechecked
(unless the pid is reused).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from pyprof.discovery.cgroup import read_container_id
from pyprof.discovery.cmdline import Selection, ServiceRule, read_cmdline, service_name
from pyprof.discovery.files import UnsafePath, open_mapped, read_beneath
from pyprof.discovery.jdk import read_release
from pyprof.errors import MemoryReadError, NoSuchProcess, PermissionDenied, PyprofError
from pyprof.procfs.maps import MapEntry, library_entries, read_maps
from pyprof.procfs.process import comm, namespace_pid
from pyprof.store.labels import WindowLabels

YOUNG_S = 10.0                 # a JVM may need this long before its VMStructs can be read
MAX_STAT_BYTES = 4096
MAX_DOCKER_CONFIG = 1 << 20
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class JvmTarget:
    pid: int
    start_ticks: int          # /proc/PID/stat starttime: a pid reused by a new JVM is a new target
    labels: WindowLabels
    argv: tuple[str, ...]
    namespace_pid: int        # its pid inside its own pid namespace
    libjvm_path: str          # as the JVM sees it (its mount namespace)
    libjvm_via: str           # how we opened it: "map_files" or "root"

    def describe(self) -> str:
        container = f", container {self.labels.container_id[:12]}" if self.labels.container_id else ""
        return (f"pid {self.pid}, JDK {self.labels.jdk or '?'}, service {self.labels.service_name}"
                f"{container}")


@dataclass(frozen=True)
class Skipped:
    pid: int
    reason: str


@dataclass
class ScanResult:
    found: list[JvmTarget] = field(default_factory=list)
    gone: list[JvmTarget] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class ScanCounters:
    scans: int = 0
    maps_read: int = 0
    not_selected: int = 0      # JVMs left out by --pid/--match/--exclude
    unreadable: int = 0        # processes whose maps we may not read (not root / no CAP_SYS_PTRACE)
    skipped: int = 0


def docker_container_name(container_id: str, docker_root: str = "/var/lib/docker") -> str:
    """Docker's name for a container (its config.v2.json), "" when unknown."""
    if not container_id:
        return ""
    data = read_beneath("/", f"{docker_root}/containers/{container_id}/config.v2.json", MAX_DOCKER_CONFIG)
    if not data:
        return ""
    try:
        name = json.loads(data).get("Name", "")
    except (ValueError, AttributeError):
        return ""
    return name.lstrip("/") if isinstance(name, str) else ""


class JvmScanner:
    """Call scan() periodically; it reports JVMs found, JVMs gone and JVMs skipped since the last scan."""

    def __init__(self, selection: Optional[Selection] = None, rules: tuple[ServiceRule, ...] = (),
                 host: Optional[str] = None, proc: str = "/proc",
                 jdk_release: Callable[[int, int, list[MapEntry]], str] = read_release,
                 container_name: Callable[[str], str] = docker_container_name,
                 young_s: float = YOUNG_S) -> None:
        self.selection = selection or Selection()
        self.rules = rules
        # PYPROF_HOST: in a pod the hostname is the pod's; the DaemonSet passes the node's name
        self.host = host if host is not None else (os.environ.get("PYPROF_HOST") or socket.gethostname())
        self.proc = proc
        self.jdk_release = jdk_release
        self.container_name = container_name
        self.young_s = young_s
        self.tracked: dict[int, JvmTarget] = {}
        self._settled: dict[int, tuple[int, str]] = {}   # pid -> (start ticks, comm): not a JVM / skipped
        self.counters = ScanCounters()
        self._self_pid = os.getpid()

    def scan(self) -> ScanResult:
        result = ScanResult()
        self.counters.scans += 1
        uptime = _uptime()
        alive: set[int] = set()
        for pid in self._pids():
            stat = _stat(pid)
            if stat is None:
                continue                          # exited while we looked, or a zombie
            start_ticks, name = stat
            alive.add(pid)
            target = self.tracked.get(pid)
            if target is not None:
                if target.start_ticks == start_ticks:
                    continue
                result.gone.append(self.tracked.pop(pid))   # the pid was reused
            young = uptime - start_ticks / _CLOCK_TICKS < self.young_s
            if not young and self._settled.get(pid) == (start_ticks, name):
                continue
            self._inspect(pid, start_ticks, name, young, result)
        for pid in [pid for pid in self.tracked if pid not in alive]:
            result.gone.append(self.tracked.pop(pid))
        for pid in [pid for pid in self._settled if pid not in alive]:
            del self._settled[pid]
        return result

    def _pids(self) -> list[int]:
        try:
            names = os.listdir(self.proc)
        except OSError:
            return []
        return [int(n) for n in names if n.isdigit() and int(n) != self._self_pid]

    def _inspect(self, pid: int, start_ticks: int, name: str, young: bool, result: ScanResult) -> None:
        if self.selection.pids and pid not in self.selection.pids:
            self._settled[pid] = (start_ticks, name)      # --pid: nobody else's maps need reading
            return
        self.counters.maps_read += 1
        try:
            entries = library_entries(read_maps(pid), "libjvm.so")
        except NoSuchProcess:
            entries = []
        except PermissionDenied:
            entries = []   # not ours to profile either; counted, so `doctor`/metrics can say why
            if not young:
                self.counters.unreadable += 1
        if not entries:
            if not young:
                self._settled[pid] = (start_ticks, name)
            return
        argv = read_cmdline(pid)
        command = " ".join(argv)
        if not self.selection.wants(pid, command):
            self._settled[pid] = (start_ticks, name)
            self.counters.not_selected += 1
            return
        try:
            target = self._target(pid, start_ticks, argv, entries)
        except (PyprofError, MemoryReadError, OSError) as e:
            if young and not isinstance(e, UnsafePath):
                return             # a JVM still starting: its VMStructs may not be readable yet
            self._settled[pid] = (start_ticks, name)
            self.counters.skipped += 1
            result.skipped.append(Skipped(pid, str(e) or type(e).__name__))
            return
        self.tracked[pid] = target
        result.found.append(target)

    def _target(self, pid: int, start_ticks: int, argv: list[str], entries: list[MapEntry]) -> JvmTarget:
        mapped = open_mapped(pid, entries)     # the JDK may exist only inside the container
        try:
            jdk = self.jdk_release(pid, mapped.fd, entries)
        finally:
            os.close(mapped.fd)
        container_id = read_container_id(pid)
        service = service_name(argv, self.rules, self.container_name(container_id), comm(pid) or "")
        labels = WindowLabels(service, pid, container_id, jdk, self.host)
        return JvmTarget(pid, start_ticks, labels, tuple(argv), namespace_pid(pid), entries[0].path,
                         mapped.via)


def _stat(pid: int) -> Optional[tuple[int, str]]:
    """(start time in clock ticks since boot, comm) of a live process; None for a zombie or a gone one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read(MAX_STAT_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    name = raw[raw.find("(") + 1: raw.rfind(")")]
    fields = raw[raw.rfind(")") + 2:].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19]), name      # field 22 of stat(5): starttime
    except ValueError:
        return None


def _uptime() -> float:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()
