"""The Java workloads of tests/java/src/pyproftest: they start, and their ground truth holds.

Each workload's header comment states its ground truth (methods, thread names, lines, shares); these
tests check the parts that can be checked without a profiler, on JDK 17, 21 and 25: every workload
prints "ready"; Phases loads libphases.so and keeps its one thread busy; C2 inlines Inlining.inner
into outer (and not outer into drive); Threads' names match /proc/PID/task/*/comm; JitZoo's deopt
thread keeps deoptimising and recompiling; Exiter exits with status 3.

Line numbers are never hard-coded: the workloads mark lines with a trailing `// LINE:<name>` comment and
`marker_line(java_file, name)` below returns the line. Other test modules import it from here:

    from tests.integration.test_workloads import marker_line
    line = marker_line("Inlining", "inner-hot")      # or a Path to any .java file
"""

from __future__ import annotations

import html
import re
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import Union

import pytest

from tests.conftest import CLASSES, ROOT, JavaProcess, java_bin

pytestmark = pytest.mark.jvm

JAVA_SRC = ROOT / "tests" / "java" / "src" / "pyproftest"
WORKLOADS = ("Phases", "Inlining", "Threads", "JitZoo", "Exiter")
_MARKER_DEF = re.compile(r"//\s*LINE:([A-Za-z0-9_-]+)\s*$")
_MARKER_REF = re.compile(r"LINE:([A-Za-z0-9_-]*[A-Za-z0-9])")


def java_source(java_file: Union[str, Path]) -> Path:
    """A workload name ("Phases") or a path -> the .java file."""
    if isinstance(java_file, str) and "/" not in java_file and not java_file.endswith(".java"):
        return JAVA_SRC / f"{java_file}.java"
    return Path(java_file)


def markers(java_file: Union[str, Path]) -> dict[str, int]:
    """Every `// LINE:<name>` marker of a Java file -> its 1-based line; a duplicate name is an error."""
    found: dict[str, int] = {}
    path = java_source(java_file)
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        m = _MARKER_DEF.search(text)
        if m:
            if m.group(1) in found:
                raise ValueError(f"{path}: marker {m.group(1)} on lines {found[m.group(1)]} and {number}")
            found[m.group(1)] = number
    return found


def marker_line(java_file: Union[str, Path], marker: str) -> int:
    """The 1-based line carrying `// LINE:<marker>` in java_file (a workload name or a path)."""
    found = markers(java_file)
    if marker not in found:
        raise KeyError(f"no // LINE:{marker} in {java_source(java_file)}")
    return found[marker]


# ---- helpers ---------------------------------------------------------------------------------------

def comms(pid: int) -> dict[int, str]:
    """TID -> /proc comm (the kernel's thread name, at most 15 bytes)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = (task / "comm").read_text().rstrip("\n")
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """utime + stime of one thread, in seconds."""
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / 100.0   # fields 14 and 15 of proc(5); USER_HZ = 100


def tid_of(pid: int, comm: str) -> int:
    matches = [tid for tid, name in comms(pid).items() if name == comm]
    assert len(matches) == 1, f"threads named {comm!r}: {comms(pid)}"
    return matches[0]


def jcmd(version: int, pid: int, *command: str) -> str:
    done = subprocess.run([java_bin(version, "jcmd"), str(pid), *command], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr or done.stdout
    return done.stdout


def vm_output_to(log: Path) -> tuple[str, ...]:
    """JVM flags sending HotSpot's own output (PrintCompilation, PrintInlining) to `log`, not stdout.

    Mixed into stdout it could split the workload's lines; the log is flushed at every newline.
    """
    return ("-XX:+UnlockDiagnosticVMOptions", "-XX:+LogVMOutput", f"-XX:LogFile={log}",
            "-XX:-DisplayVMOutput")


def vm_output(log: Path) -> str:
    """The text HotSpot printed so far (the log is XML: its <tty> text is escaped)."""
    return html.unescape(log.read_text(errors="replace"))


def read_until(jp: JavaProcess, prefix: str, timeout: float = 20.0) -> str:
    """Reads (and so drains) stdout up to the next line starting with prefix."""
    return jp.wait_for(prefix, timeout=timeout)


# ---- markers and line tables (no JVM run) ----------------------------------------------------------

def test_markers_are_unique_and_every_referenced_marker_exists() -> None:
    # GIVEN every workload's source WHEN its markers are collected (markers() rejects duplicates)
    for name in WORKLOADS:
        defined = markers(name)
        referenced = set(_MARKER_REF.findall(java_source(name).read_text()))
        # THEN every "LINE:x" the header mentions is a marker on a code line
        assert referenced <= set(defined), f"{name}: undefined markers {referenced - set(defined)}"
    assert marker_line("Inlining", "inner-hot") > marker_line("Inlining", "inner-loop")


@cache
def line_tables() -> dict[tuple[str, str], set[int]]:
    """(class, method) -> source lines of its LineNumberTable, from `javap -l` on the built classes."""
    classes = ["pyproftest." + p.stem for p in sorted((CLASSES / "pyproftest").glob("*.class"))
               if p.stem.split("$")[0] in WORKLOADS]
    done = subprocess.run([java_bin(17, "javap"), "-p", "-l", "-cp", str(CLASSES), *classes],
                          capture_output=True, text=True, timeout=60, check=True)
    tables: dict[tuple[str, str], set[int]] = {}
    cls = method = ""
    for text in done.stdout.splitlines():
        m = re.match(r"^(?:\w+ )*(?:class|interface) ([\w.$]+)", text)
        if m:
            cls = m.group(1).rsplit(".", 1)[-1]
            continue
        m = re.match(r"^  \S.*?([\w$]+)\(.*\)(?: throws .*)?;$", text)
        if m:
            method = m.group(1)
            tables.setdefault((cls, method), set())
            continue
        m = re.match(r"^\s+line (\d+): \d+$", text)
        if m:
            tables[(cls, method)].add(int(m.group(1)))
    return tables


@pytest.mark.parametrize("workload,cls,method,marker", [
    ("Phases", "Phases", "phaseA", "phaseA-hot"),
    ("Phases", "Phases", "phaseA", "phaseA-hot-end"),
    ("Phases", "Phases", "phaseA", "phaseA-loop"),
    ("Phases", "Phases", "phaseB", "phaseB-hot"),
    ("Phases", "Phases", "phaseB", "phaseB-hot-end"),
    ("Phases", "Phases", "runCycle", "call-phaseA"),
    ("Phases", "Phases", "runCycle", "call-phaseB"),
    ("Phases", "Phases", "runCycle", "call-native"),
    ("Inlining", "Inlining", "inner", "inner-hot"),
    ("Inlining", "Inlining", "inner", "inner-loop"),
    ("Inlining", "Inlining", "outer", "outer-call"),
    ("Inlining", "Inlining", "outer", "outer-hot"),
    ("Inlining", "Inlining", "drive", "drive-call"),
    ("Threads", "Threads", "spin", "spin-hot"),
    ("Threads", "Threads", "run", "run-call"),
    ("JitZoo", "JitZoo", "lambda$lambdaLoop$0", "lambda-map"),
    ("JitZoo", "JitZoo", "lambda$lambdaLoop$1", "lambda-filter"),
    ("JitZoo", "JitZoo", "lambda$lambdaLoop$2", "lambda-foreach"),
    ("JitZoo", "JitZoo", "lambdaLoop", "lambdas-stream"),
    ("JitZoo", "JitZoo", "lambdaLoop", "lambdas-foreach"),
    ("JitZoo", "JitZoo", "osrLoop", "osr-hot"),
    ("JitZoo", "JitZoo$Victim", "work", "victim-branch"),
    ("JitZoo", "JitZoo$Victim", "work", "victim-call"),
    ("JitZoo", "JitZoo$Victim", "workThenDeflate", "victim-deflate"),
    ("JitZoo", "JitZoo", "crcLoop", "crc-update"),
    ("JitZoo", "JitZoo", "deflateLoop", "deflate-call"),
])
def test_marker_is_a_line_of_its_method(workload: str, cls: str, method: str, marker: str) -> None:
    # GIVEN the compiled classes' line tables WHEN a marker is resolved
    lines = line_tables()[(cls, method)]
    # THEN the debug info (what a profiler reports) has that line in that method
    assert marker_line(workload, marker) in lines, (marker, sorted(lines))


@pytest.mark.parametrize("method", ["phaseA", "phaseB"])
def test_phase_method_lies_within_its_begin_end_markers(method: str) -> None:
    lines = line_tables()[("Phases", method)]
    assert marker_line("Phases", f"{method}-begin") < min(lines)
    assert max(lines) < marker_line("Phases", f"{method}-end")


# ---- the workloads on real JVMs ------------------------------------------------------------------

def test_phases_loads_its_native_library_and_keeps_one_thread_busy(jdk: int, java_workload) -> None:
    # GIVEN Phases 60/30/10 in 100 ms cycles, warmed up
    jp = java_workload(jdk, "Phases", "60,30,10", "100")
    # THEN the JNI library is mapped and exactly one thread is called phases-main
    maps = Path(f"/proc/{jp.pid}/maps").read_text()
    assert "/libphases.so" in maps
    tid = tid_of(jp.pid, "phases-main")
    # WHEN it runs for one reporting interval
    cpu0, t0 = thread_cpu_seconds(jp.pid, tid), time.monotonic()
    line = read_until(jp, "cycles ")
    cpu1, t1 = thread_cpu_seconds(jp.pid, tid), time.monotonic()
    # THEN about ten 100 ms cycles were done and the thread was on CPU most of the time (busy-waiting)
    assert 5 <= int(line.split()[1]) <= 15, line
    assert cpu1 - cpu0 >= 0.5 * (t1 - t0), (cpu1 - cpu0, t1 - t0)
    assert jp.proc.poll() is None


def test_inlining_inlines_inner_into_outer_but_not_outer(jdk: int, java_workload, tmp_path: Path) -> None:
    # GIVEN Inlining with C2's inlining decisions printed
    log = tmp_path / "vm.log"
    jp = java_workload(jdk, "Inlining", jvm_flags=(*vm_output_to(log), "-XX:+PrintInlining"))
    read_until(jp, "rounds ")
    text = vm_output(log)
    # THEN C2 inlined inner (its only call site is in outer) ...
    inlined = r"@ \d+\s+pyproftest\.Inlining::inner \(\d+ bytes\)\s+inline \(hot\)"
    assert re.search(inlined, text), text[-3000:]
    # ... and refused to inline outer into drive, so outer stays the physical frame holding inner
    assert re.search(r"pyproftest\.Inlining::outer \(\d+ bytes\)\s+(failed to inline: )?hot method too big",
                     text), text[-3000:]
    assert not re.search(r"pyproftest\.Inlining::outer \(\d+ bytes\)\s+inline", text)


def test_threads_java_names_and_os_names(jdk: int, java_workload) -> None:
    # GIVEN Threads after worker-3 renamed itself and main renamed worker-4
    jp = java_workload(jdk, "Threads")
    names = next(line for line in jp.lines if line.startswith("names "))
    # THEN the Java names are the documented ones
    assert names == "names worker-1,worker-2,renamed-worker,renamed-by-main-thread"
    # AND /proc comm (<= 15 bytes) shows the self-rename but not the rename from another thread:
    # HotSpot sets the native name only when a thread renames itself
    os_names = sorted(name for name in comms(jp.pid).values() if "worker" in name or "renamed" in name)
    assert os_names == ["renamed-worker", "worker-1", "worker-2", "worker-4"], comms(jp.pid)
    assert all(len(name.encode()) <= 15 for name in comms(jp.pid).values())


# Compiler.codelist's third column is nmethod::_state: not_entrant is 2 on JDK 11, 17 and 21, 1 on JDK 25
# (JDK 23 dropped not_used).
NOT_ENTRANT_STATE = {11: "2", 17: "2", 21: "2", 25: "1"}


def test_jitzoo_threads_osr_and_deoptimisation_storm(jdk: int, java_workload, tmp_path: Path) -> None:
    # GIVEN JitZoo with every compilation event printed
    log = tmp_path / "vm.log"
    jp = java_workload(jdk, "JitZoo", jvm_flags=(*vm_output_to(log), "-XX:+PrintCompilation"))
    # THEN its five threads run under their documented names
    assert {"lambdas", "osr", "deopt", "crc", "deflate"} <= set(comms(jp.pid).values())
    # WHEN two code lists are taken about a second apart (a deopt round lasts about 0.4 s)
    first = jcmd(jdk, jp.pid, "Compiler.codelist")
    read_until(jp, "deopt-rounds ")
    read_until(jp, "deopt-rounds ")
    second = jcmd(jdk, jp.pid, "Compiler.codelist")
    victim = re.compile(r"^(\d+) (\d+) (-?\d+) pyproftest\.JitZoo\$Victim\.work\(", re.M)
    ids_first = {int(m.group(1)) for m in victim.finditer(first)}
    entries_second = [(int(m.group(1)), m.group(3)) for m in victim.finditer(second)]
    # THEN Victim.work keeps being compiled again, and not-entrant versions of it exist
    assert ids_first and max(i for i, _ in entries_second) > max(ids_first), (ids_first, entries_second)
    assert any(state == NOT_ENTRANT_STATE[jdk] for _, state in entries_second), entries_second
    # AND PrintCompilation saw Victim.work made not entrant again and again, and osrLoop OSR-compiled
    text = vm_output(log)
    assert len(re.findall(r"JitZoo\$Victim::work .*made not entrant", text)) >= 4, text[-3000:]
    assert re.search(r"% +4 +pyproftest\.JitZoo::osrLoop @ \d+", text), text[-3000:]


def test_exiter_exits_with_status_3(jdk: int, java_workload) -> None:
    # GIVEN Exiter told to burn for 1 s after ready
    jp = java_workload(jdk, "Exiter", "1")
    assert tid_of(jp.pid, "exiter")
    # THEN it says so and exits with status 3 by itself
    read_until(jp, "exit 3", timeout=15)
    assert jp.proc.wait(timeout=15) == 3
