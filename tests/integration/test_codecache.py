"""`pyprof codecache ls|lookup|stats|watch` on real JVMs (17, 21, 25), checked against jcmd's own view.

Target: tests/java/src/pyproftest/CodeCacheChurn.java, one JVM per JDK shared by every test of this module.
It warms up (~20 generated classes, all compiled) and then only acts on stdin commands: "compile NAME"
generates and compiles class pyproftest.churn.NAME, "unload" drops those classes and runs System.gc().
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest

from pyprof.hotspot.codecache import CodeBlobInfo
from pyprof.sources.jcmd import parse_codelist
from tests.conftest import CLASSES, NATIVE_LIBS, ROOT, JavaProcess, java_bin, pyprof, require

pytestmark = [pytest.mark.jvm]

CHURN_PACKAGE = "pyproftest.churn."
MIN_AGREEMENT = 0.99
WATCH_LATENCY = 1.0          # seconds from a compile to its line on watch's stdout
SEGMENTED_HEAPS = {"non-profiled nmethods", "profiled nmethods", "non-nmethods"}


# ---- the target JVM -----------------------------------------------------------------------------------
class Churn:
    """A CodeCacheChurn JVM driven through its stdin (conftest.start_java gives workloads no stdin)."""

    def __init__(self, version: int) -> None:
        cmd = [java_bin(version), "-cp", str(CLASSES), f"-Djava.library.path={NATIVE_LIBS}",
               "pyproftest.CodeCacheChurn"]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        self.jp = JavaProcess(proc, version)
        self.version = version
        try:
            self.jp.wait_for("ready")
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.jp.pid

    def send(self, line: str) -> None:
        assert self.jp.proc.stdin is not None
        self.jp.proc.stdin.write(line + "\n")
        self.jp.proc.stdin.flush()

    def wait_for(self, prefix: str, timeout: float = 60) -> str:
        return self.jp.wait_for(prefix, timeout)

    def codelist(self) -> list[CodeBlobInfo]:
        jcmd = java_bin(self.version, "jcmd")
        done = subprocess.run([jcmd, str(self.pid), "Compiler.codelist"], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout + done.stderr
        return parse_codelist(done.stdout)

    def stop(self) -> None:
        if self.jp.proc.stdin is not None:
            self.jp.proc.stdin.close()
        self.jp.stop()


@pytest.fixture(scope="module")
def churns():
    """churns(version) -> the module's CodeCacheChurn JVM of that JDK (started on first use)."""
    started: dict[int, Churn] = {}

    def get(version: int) -> Churn:
        if version not in started:
            started[version] = Churn(version)
        return started[version]

    yield get
    for churn in started.values():
        churn.stop()


def ls_nmethods(pid: int, *extra: str) -> dict[int, dict]:
    done = pyprof("codecache", "ls", str(pid), "--json", *extra, check=True)
    rows = json.loads(done.stdout)
    assert isinstance(rows, list)
    return {r["compile_id"]: r for r in rows if r["kind"] == "nmethod"}


def same_nmethod(row: Optional[dict], blob: CodeBlobInfo) -> bool:
    return (row is not None and row["level"] == blob.level and row["method"] == blob.method_name
            and row["start"] == blob.code_begin and row["end"] == blob.code_end)


def assert_one_line_error(done: subprocess.CompletedProcess, exit_code: int) -> None:
    assert done.returncode == exit_code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyprof: error: "), done.stderr
    assert done.stdout == ""


# ---- ls -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["auto", "jcmd"])
def test_ls_json_agrees_with_jcmd_codelist(jdk: int, churns, source: str) -> None:
    # GIVEN a warmed-up JVM whose attach listener already runs (its first jcmd compiles a few methods)
    churn = churns(jdk)
    churn.codelist()
    # WHEN codelist and `ls --json` are taken one right after the other
    listed = {b.compile_id: b for b in churn.codelist()}
    mine = ls_nmethods(churn.pid, "--source", source)
    # THEN every nmethod object has the contract's types
    for row in mine.values():
        assert all(type(row[k]) is int for k in ("compile_id", "level", "start", "end")), row
        assert isinstance(row["method"], str), row
    # AND of the nmethods codelist lists, >= 99 % are in ls with the same level, method and code range
    assert len(listed) >= 500, "the workload should have compiled its resident classes"
    agree = [cid for cid, blob in listed.items() if same_nmethod(mine.get(cid), blob)]
    assert len(agree) >= MIN_AGREEMENT * len(listed), _disagreement(listed, mine)
    # AND the other way round: >= 99 % of what ls lists is in codelist, equal
    agree_back = [cid for cid, row in mine.items() if cid in listed and same_nmethod(row, listed[cid])]
    assert len(agree_back) >= MIN_AGREEMENT * len(mine), _disagreement(listed, mine)


def _disagreement(listed: dict[int, CodeBlobInfo], mine: dict[int, dict]) -> str:
    only_jcmd = [(cid, b.method_name) for cid, b in listed.items() if cid not in mine][:5]
    only_ls = [(cid, r["method"], r["state"]) for cid, r in mine.items() if cid not in listed][:5]
    differ = [(cid, b.level, b.method_name, b.code_begin, b.code_end, mine[cid]) for cid, b in listed.items()
              if cid in mine and not same_nmethod(mine[cid], b)][:5]
    return f"codelist {len(listed)}, ls {len(mine)}; only in codelist {only_jcmd}; only in ls {only_ls}; " \
           f"different {differ}"


# ---- lookup -------------------------------------------------------------------------------------------
def test_lookup_names_the_method_around_each_address(jdk: int, churns) -> None:
    # GIVEN 50 random addresses inside code ranges codelist reports, and addresses outside every blob
    churn = churns(jdk)
    before = churn.codelist()
    rng = random.Random(jdk)
    picks = rng.sample(before, 50)
    inside = [rng.randrange(b.code_begin, b.code_end) for b in picks]
    heaps = json.loads(pyprof("codecache", "stats", str(churn.pid), "--json", check=True).stdout)["heaps"]
    outside = [0x1000, min(h["start"] for h in heaps) - 1]
    outside += [h["start"] + h["reserved"] - 1 for h in heaps if h["committed"] < h["reserved"]]
    addresses = inside + outside
    # WHEN they are looked up, as arguments and through stdin
    rows = json.loads(pyprof("codecache", "lookup", str(churn.pid), *map(hex, addresses), "--json",
                             check=True).stdout)
    from_stdin = json.loads(pyprof("codecache", "lookup", str(churn.pid), "-", "--json", check=True,
                                   input="\n".join(map(hex, addresses)) + "\n").stdout)
    after = {(b.compile_id, b.code_begin, b.code_end) for b in churn.codelist()}
    # THEN there is one row per address, in order, with the address as an int
    assert [r["address"] for r in rows] == addresses
    # AND each address inside a method codelist still lists afterwards names that method
    checked = 0
    for address, blob, row in zip(inside, picks, rows):
        if (blob.compile_id, blob.code_begin, blob.code_end) not in after:
            continue   # flushed between the two codelists: nothing to compare with
        assert (row["method"], row.get("compile_id")) == (blob.method_name, blob.compile_id), hex(address)
        checked += 1
    assert checked >= 45
    # AND addresses outside every blob have no method
    assert [r["method"] for r in rows[len(inside):]] == [None] * len(outside)
    # AND stdin gives the same answers
    assert [(r["address"], r["method"]) for r in from_stdin] == [(r["address"], r["method"]) for r in rows]


# ---- stats --------------------------------------------------------------------------------------------
def test_stats_heaps_and_tiers_are_consistent(jdk: int, churns) -> None:
    # GIVEN a warmed-up JVM (default flags: the segmented code cache)
    churn = churns(jdk)
    for _ in range(3):
        # WHEN stats and ls are taken (again if a compile slipped in between)
        stats = json.loads(pyprof("codecache", "stats", str(churn.pid), "--json", check=True).stdout)
        listed = ls_nmethods(churn.pid)
        tiers = sum(t["count"] for t in stats["tiers"].values())
        if tiers == len(listed):
            break
    # THEN the per-tier counts sum to the number of nmethods ls lists
    assert tiers == len(listed)
    # AND the nmethod count per kind is the tiers plus JDK 17's dead ones still in the heap
    assert stats["kinds"]["nmethod"]["count"] == tiers + stats["dead_nmethods"]
    # AND every heap's used and free bytes fit in what it committed, which fits in what it reserved
    assert {h["name"] for h in stats["heaps"]} == SEGMENTED_HEAPS
    for h in stats["heaps"]:
        assert 0 < h["used"] and 0 <= h["free"]
        assert h["used"] + h["free"] <= h["committed"] <= h["reserved"], h
        assert h["largest_free"] <= h["free"] and 0.0 <= h["fragmentation"] <= 1.0
    # AND the heaps hold exactly the blobs the kinds count
    assert sum(h["blobs"] for h in stats["heaps"]) == sum(k["count"] for k in stats["kinds"].values())
    assert stats["invalid_blobs"] == 0


# ---- watch --------------------------------------------------------------------------------------------
@dataclass
class Watch:
    """`pyprof codecache watch PID --json` running in the background; lines stamped when they arrive."""

    pid: int
    events: list[tuple[float, dict]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyprof.cli.main", "codecache", "watch", str(self.pid), "--json",
             "-d", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, cwd=ROOT)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not any(line.startswith("# watching") for line in self.stderr):
            assert self.proc.poll() is None, f"watch exited {self.proc.returncode}: {self.stderr}"
            assert time.monotonic() < deadline, f"watch not ready in {timeout} s: {self.stderr}"
            time.sleep(0.05)

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append((time.time(), json.loads(line)))

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def wait_until(self, done: Callable[[list[dict]], bool], timeout: float) -> list[tuple[float, dict]]:
        deadline = time.monotonic() + timeout
        while not done([e for _, e in self.events]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.events)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        assert not any("Traceback" in line for line in self.stderr), self.stderr


@pytest.fixture
def watch():
    started: list[Watch] = []

    def start(pid: int) -> Watch:
        w = Watch(pid)
        started.append(w)
        w.start()
        return w

    yield start
    for w in started:
        w.stop()


def churn_methods(cls: str, methods: int = 8) -> set[str]:
    return {f"{CHURN_PACKAGE}{cls}.m{i}(J)J" for i in range(methods)} | {f"{CHURN_PACKAGE}{cls}.drive()J"}


def test_watch_reports_a_fresh_compile_within_a_second(jdk: int, churns, watch, root_and_bpf) -> None:
    # GIVEN watch running on a warmed-up JVM
    churn = churns(jdk)
    w = watch(churn.pid)
    cls = f"Fresh{jdk}"
    # WHEN the JVM generates a new class and calls its methods until they are compiled
    churn.send(f"compile {cls}")
    phase_started = int(churn.wait_for(f"phase {cls} ").split()[2]) / 1000
    churn.wait_for(f"compiled {cls} ")
    expected = churn_methods(cls)
    events = w.wait_until(lambda es: expected <= {e.get("method") for e in es if e["event"] == "compile"}, 10)
    # THEN every one of its methods is reported as compiled
    compiles = [(arrived, e) for arrived, e in events if e["event"] == "compile"
                and (e.get("method") or "").startswith(CHURN_PACKAGE + cls + ".")]
    assert {e["method"] for _, e in compiles} == expected
    for arrived, e in compiles:
        # AND each compile happened after the phase started (clocks agree to well under 0.5 s)
        assert e["time"] >= phase_started - 0.5
        # AND its line arrived within a second of the compile
        assert arrived - e["time"] < WATCH_LATENCY, (arrived - e["time"], e)
        assert e["kind"] == "nmethod" and e["level"] in (1, 2, 3, 4) and e["end"] > e["start"]


def test_watch_reports_unloads_and_ls_forgets_them(jdk: int, churns, watch, root_and_bpf) -> None:
    # GIVEN a class compiled in a class loader of its own, and watch started after that
    churn = churns(jdk)
    cls = f"Doomed{jdk}"
    churn.send(f"compile {cls}")
    churn.wait_for(f"compiled {cls} ")
    doomed = {cid: r for cid, r in ls_nmethods(churn.pid).items()
              if (r["method"] or "").startswith(CHURN_PACKAGE + cls + ".")}
    assert {r["method"] for r in doomed.values()} == churn_methods(cls)
    w = watch(churn.pid)
    # WHEN the JVM drops the loader and runs a full GC
    churn.send("unload")
    _, names, collected = churn.wait_for("unloaded ").split()
    assert cls in names.split(",") and collected == "collected=true"
    events = w.wait_until(
        lambda es: set(doomed) <= {e.get("compile_id") for e in es if e["event"] == "unload"}, 15)
    # THEN watch reports the unload of every nmethod of the class that ls listed
    unloaded = {e["compile_id"]: e for _, e in events if e["event"] == "unload"}
    assert set(doomed) <= set(unloaded)
    assert all(unloaded[cid]["method"] == doomed[cid]["method"] for cid in doomed)
    # AND neither ls nor jcmd lists any method of the class any more
    assert not [r for r in ls_nmethods(churn.pid).values()
                if (r["method"] or "").startswith(CHURN_PACKAGE + cls + ".")]
    assert not [b for b in churn.codelist() if b.method_name.startswith(CHURN_PACKAGE + cls + ".")]


# ---- bad input ----------------------------------------------------------------------------------------
def _gone_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    assert not os.path.exists(f"/proc/{child.pid}")
    return child.pid


@pytest.mark.parametrize("command", [["ls"], ["stats"], ["lookup", "0x1000"], ["watch", "-d", "1"]],
                         ids=["ls", "stats", "lookup", "watch"])
def test_no_such_process_is_exit_3(command: list[str]) -> None:
    # GIVEN a pid that exited already
    pid = _gone_pid()
    # WHEN a codecache command is pointed at it
    done = pyprof("codecache", command[0], str(pid), *command[1:])
    # THEN it says so in one line and exits 3
    assert_one_line_error(done, 3)
    assert str(pid) in done.stderr


@pytest.mark.parametrize("command", [["ls", "--json"], ["stats"], ["lookup", "0x1000"]],
                         ids=["ls", "stats", "lookup"])
def test_not_a_jvm_is_exit_4(command: list[str]) -> None:
    # GIVEN the test's own python (no libjvm.so mapped)
    # WHEN a codecache command is pointed at it
    done = pyprof("codecache", command[0], str(os.getpid()), *command[1:])
    # THEN it exits 4 with one line naming the process
    assert_one_line_error(done, 4)
    assert "not a HotSpot JVM" in done.stderr


@pytest.mark.parametrize("address", ["0xZZZ", "12g4", "0x"])
def test_invalid_address_is_a_usage_error(churns, address: str) -> None:
    # GIVEN a real JVM
    churn = churns(17)
    # WHEN lookup gets something that is not a hex address (as an argument, or on stdin)
    done = pyprof("codecache", "lookup", str(churn.pid), "0x1000", address)
    piped = pyprof("codecache", "lookup", str(churn.pid), "-", input=f"0x1000\n{address}\n")
    # THEN it is a usage error (exit 2) in one line that quotes the bad address
    for result in (done, piped):
        assert_one_line_error(result, 2)
        assert repr(address) in result.stderr


@pytest.mark.parametrize("command", [["ls"], ["lookup", "0x1000"]], ids=["ls", "lookup"])
def test_without_privileges_is_exit_6(churns, command: list[str]) -> None:
    # GIVEN a JVM of root's, and pyprof run as nobody (no CAP_SYS_PTRACE, cannot read its /proc files)
    churn = churns(17)
    setpriv = shutil.which("setpriv")
    require(setpriv is not None, "setpriv (util-linux) is needed to drop privileges")
    # WHEN a codecache command is pointed at it
    done = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                           "pyprof.cli.main", "codecache", command[0], str(churn.pid), *command[1:]],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL)
    # THEN it exits 6 with one line telling to run as root
    assert_one_line_error(done, 6)
    assert "root" in done.stderr


def test_watch_names_classes_that_reuse_unloaded_metaspace(jdk: int, churns, watch, root_and_bpf) -> None:
    # GIVEN watch running while classes of one shape are compiled and unloaded in turn: each new class gets
    # the Method / ConstMethod / ConstantPool addresses of the one unloaded before it
    churn = churns(jdk)
    w = watch(churn.pid)
    classes = [f"Reused{jdk}x{i}" for i in range(4)]
    for i, cls in enumerate(classes):
        # WHEN each is compiled, then unloaded before the next one comes
        churn.send(f"compile {cls}")
        churn.wait_for(f"compiled {cls} ")
        if i < len(classes) - 1:
            churn.send("unload")
            churn.wait_for("unloaded ")
    expected = set().union(*(churn_methods(cls) for cls in classes))
    events = w.wait_until(lambda es: expected <= {e.get("method") for e in es if e["event"] == "compile"}, 10)
    # THEN every compile is reported under its own class's name, none under a predecessor's
    compiled = {e["method"] for _, e in events
                if e["event"] == "compile" and "churn.Reused" in (e["method"] or "")}
    assert compiled == expected
    # AND ls lists the methods of the last class only
    listed = {r["method"] for r in ls_nmethods(churn.pid).values() if "churn.Reused" in (r["method"] or "")}
    assert listed == churn_methods(classes[-1])
