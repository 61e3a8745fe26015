"""The optional Java agent (java-helper/) on real JVMs 17, 21 and 25, through the real CLI.

One target JVM per JDK (java-helper/test/pyprofagenttest/AgentTarget.java: idle, known threads, compiles
and collects on request) is shared by the tests of that JDK, in file order: loaded into at run time,
read, then unloaded and loaded again. JVMs that refuse dynamic agents, and JVMs started with
-javaagent / `pyprof record --agent`, are separate.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from pyprof.agent.client import AgentClient, open_gateway
from pyprof.agent.connection import find_connection, listeners
from pyprof.errors import SourceUnavailable
from pyprof.output.pprof import read_pprof
from pyprof.sources.jcmd import parse_codelist
from tests.conftest import CLASSES, JDK_VERSIONS, ROOT, JavaProcess, java_bin, pyprof, require

pytestmark = [pytest.mark.jvm]

TARGET_CLASSES = ROOT / "java-helper" / "build" / "test-classes"
TARGET = "pyprofagenttest.AgentTarget"
HOT = "pyprofagenttest.AgentTarget$Hot.work(J)J"
TARGET_THREADS = ("target-busy", "target-ticker", "a-thread-name-longer-than-comm", "renamed-self",
                  "renamed-by-main")
# comm (the OS name, 15 bytes) where it is not simply the Java name cut to 15 bytes
EXPECTED_COMM = {"main": "java", "renamed-by-main": "named-at-start"}
DYNAMIC_WARNING = "A Java agent has been loaded dynamically"
# threads that come and go by themselves: HotSpot's dynamic JIT compiler threads, an agent connection
TRANSIENT = re.compile(r"^(C[12] CompilerThread\d+|pyprof-agent-conn-\d+)$")


# ---- the target JVM -----------------------------------------------------------------------------------
@dataclass
class Target:
    jp: JavaProcess
    threads: dict[str, int] = field(default_factory=dict)     # Java name -> Java thread id
    _stderr: str = ""

    @property
    def pid(self) -> int:
        return self.jp.pid

    @property
    def version(self) -> int:
        return self.jp.version

    def send(self, line: str) -> None:
        assert self.jp.proc.stdin is not None
        self.jp.proc.stdin.write(line + "\n")
        self.jp.proc.stdin.flush()

    def alive_and_ticking(self) -> bool:
        """Still running and still printing its 200 ms heartbeat."""
        if self.jp.proc.poll() is not None:
            return False
        return self.jp.wait_for("tick", timeout=10).startswith("tick")

    def stderr(self) -> str:
        """What the JVM wrote to stderr so far (non-blocking)."""
        err = self.jp.proc.stderr
        assert err is not None
        fd = err.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._stderr += chunk.decode("utf-8", "replace")
        return self._stderr

    def stop(self) -> None:
        pid = self.pid
        if self.jp.proc.stdin is not None:
            try:
                self.jp.proc.stdin.close()
            except OSError:
                pass
            self.jp.proc.stdin = None
        self.jp.stop()
        # SIGKILL runs no shutdown hook: remove the connection file the agent would have removed
        stale = Path(f"/run/pyprof/agent-{pid}.json")
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()


def start_target(version: int, *jvm_flags: str) -> Target:
    require(TARGET_CLASSES.is_dir(), f"agent test target not built ({TARGET_CLASSES}): build-agent.sh")
    cmd = [java_bin(version), *jvm_flags, "-cp", str(TARGET_CLASSES), TARGET]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    target = Target(JavaProcess(proc, version))
    try:
        target.jp.wait_for("ready")
    except BaseException:
        target.stop()
        raise
    for line in target.jp.lines:
        if line.startswith("thread "):
            _, name, java_id = line.split(" ")
            target.threads[name] = int(java_id)
    return target


def thread_print_names(version: int, pid: int) -> list[str]:
    """Names of the JVM's Java threads (`"name" #N ...` in jcmd Thread.print: an agent's threads are Java
    threads; the VM's own GC/compiler workers, which HotSpot starts lazily, have no #N)."""
    done = subprocess.run([java_bin(version, "jcmd"), str(pid), "Thread.print"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    names = re.findall(r'^"(.*?)" #\d+ ', done.stdout, re.M)
    assert "main" in names, done.stdout[:2000]
    return names


def jcmd_codelist(version: int, pid: int) -> set[tuple[int, int]]:
    done = subprocess.run([java_bin(version, "jcmd"), str(pid), "Compiler.codelist"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return {(b.compile_id, b.address) for b in parse_codelist(done.stdout)}


def comms(pid: int) -> dict[int, str]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                out[int(tid)] = f.read().rstrip("\n")
        except OSError:
            pass
    return out


def connection_path(pid: int) -> Path:
    return Path(f"/proc/{pid}/root/run/pyprof/agent-{pid}.json")


def wait_for_agent(pid: int, timeout: float = 60) -> dict:
    """-javaagent starts the agent on its own thread (main() does not wait): wait until it answers."""
    from pyprof.agent.control import running_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = running_status(pid)
        if status is not None:
            return status
        time.sleep(0.1)
    pytest.fail(f"the agent in {pid} did not come up in {timeout:.0f} s", pytrace=False)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {done.stderr!r}"
    return lines[0]


@pytest.fixture(scope="session")
def agent_jar() -> Path:
    """scripts/build-agent.sh (idempotent: make rebuilds only what changed) -> the packaged jar."""
    require(os.geteuid() == 0, "the agent tests read /proc/PID/root and /run/pyprof: they need root")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-agent.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    require(done.returncode == 0, f"scripts/build-agent.sh failed: {done.stderr[-2000:]}")
    jar = ROOT / "pyprof" / "java" / "pyprof-agent.jar"
    require(jar.is_file(), f"no agent jar at {jar}")
    return jar


@dataclass
class Loaded:
    target: Target
    load: subprocess.CompletedProcess
    threads_before: list[str]
    load_seconds: float


# The agent is Java 17 bytecode and streams JFR events: JDK 11 gets a one-line refusal (tested below).
AGENT_JDKS = [v for v in JDK_VERSIONS if v >= 17]


@pytest.fixture(params=AGENT_JDKS, ids=[f"jdk{v}" for v in AGENT_JDKS])
def agent_jdk(request) -> int:
    return request.param


@pytest.fixture(scope="module", params=AGENT_JDKS, ids=[f"jdk{v}" for v in AGENT_JDKS])
def loaded(request, agent_jar) -> Loaded:
    """GIVEN a running JVM started without any agent, into which `pyprof agent load` loaded it."""
    target = start_target(request.param)
    try:
        before = thread_print_names(target.version, target.pid)
        t0 = time.monotonic()
        load = pyprof("agent", "load", str(target.pid), timeout=180)
        yield Loaded(target, load, before, time.monotonic() - t0)
    finally:
        target.stop()


# ---- loading into a running JVM ------------------------------------------------------------------------
def test_load_into_a_running_jvm(loaded: Loaded):
    t = loaded.target
    # GIVEN a running JVM WHEN `pyprof agent load PID` (the fixture)
    # THEN pyprof says so, in reasonable time, the JVM runs the agent, and the target never stopped
    assert loaded.load.returncode == 0, loaded.load.stderr
    assert loaded.load_seconds < 60
    assert f"loaded into {t.pid}" in loaded.load.stdout
    status = pyprof("agent", "status", str(t.pid), "--json")
    assert status.returncode == 0, status.stderr
    s = json.loads(status.stdout)["status"]
    assert s["pid"] == t.pid and s["dynamic"] is True
    assert s["java_version"].split(".")[0] == str(t.version)
    assert {th["name"] for th in s["threads"]} >= {"pyprof-agent-gateway", "pyprof-agent-jfr"}
    assert "jdk.Compilation" in s["jfr"]["enabled"] and s["jfr"]["error"] is None
    # JDK 21+ warns on the JVM's stderr about a dynamically loaded agent, and pyprof tells the user
    if t.version >= 21:
        assert DYNAMIC_WARNING in t.stderr()
        assert "warning about a dynamically loaded agent" in loaded.load.stderr
    else:
        assert DYNAMIC_WARNING not in t.stderr()
    assert t.alive_and_ticking()


def test_connection_file_is_0600_in_a_root_only_directory(loaded: Loaded):
    # GIVEN the agent loaded into a JVM running as root
    path = connection_path(loaded.target.pid)
    # THEN the file is a regular file, root's, mode 0600, in a 0700 directory only root can write
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    d = os.lstat(path.parent)
    assert stat.S_ISDIR(d.st_mode) and d.st_uid == 0 and stat.S_IMODE(d.st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["address"] == "127.0.0.1" and re.fullmatch(r"[0-9a-f]{64}", data["token"])


def test_ls_agrees_with_jcmd_codelist(loaded: Loaded):
    t = loaded.target
    # WHEN the agent lists the code cache between two jcmd Compiler.codelist runs
    first = jcmd_codelist(t.version, t.pid)
    done = pyprof("codecache", "ls", str(t.pid), "--source", "agent", "--json")
    second = jcmd_codelist(t.version, t.pid)
    assert done.returncode == 0, done.stderr
    agent = {(b["compile_id"], b["address"]) for b in json.loads(done.stdout) if b["kind"] == "nmethod"}
    # THEN what jcmd saw both times the agent saw too (>= 99 %), and the agent invented nothing
    stable = first & second
    assert len(stable) > 300
    assert len(agent & stable) / len(stable) >= 0.99, (len(agent & stable), len(stable))
    assert len(agent & (first | second)) / len(agent) >= 0.99, (len(agent - first - second), len(agent))


def _reader(stream, sink: list, started: float) -> None:
    for line in iter(stream.readline, ""):
        sink.append((time.monotonic() - started, line.rstrip("\n")))


def test_watch_shows_a_new_compile_within_a_second(loaded: Loaded):
    t = loaded.target
    # GIVEN `codecache watch --source agent` is watching
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), "-m", "pyprof.cli.main", "codecache",
                             "watch", str(t.pid), "--source", "agent", "--json", "-d", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    started = time.monotonic()
    out: list = []
    err: list = []
    readers = [threading.Thread(target=_reader, args=(proc.stdout, out, started), daemon=True),
               threading.Thread(target=_reader, args=(proc.stderr, err, started), daemon=True)]
    for r in readers:
        r.start()
    try:
        deadline = time.monotonic() + 60
        while not any("# watching" in line for _, line in err) and time.monotonic() < deadline:
            assert proc.poll() is None, f"watch exited: {err}"
            time.sleep(0.05)
        assert any("# watching" in line for _, line in err), err
        # WHEN the target compiles a fresh copy of AgentTarget$Hot.work (a new class: a new compile id)
        trigger_wall = time.time()
        trigger = time.monotonic() - started
        t.send("compile 1")
        t.jp.wait_for("compiled 1", timeout=30)
        deadline = time.monotonic() + 5
        hit = None
        while hit is None and time.monotonic() < deadline:
            for when, line in list(out):
                ev = json.loads(line)
                if ev["event"] == "compile" and ev["method"] == HOT and ev["time"] >= trigger_wall - 0.05:
                    hit = (when, ev)
                    break
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # THEN watch printed it within a second of the request (class load and JIT compile included)
    assert hit is not None, f"no compile of {HOT} after the trigger: {out[-5:]} {err}"
    when, ev = hit
    assert when - trigger <= 1.0, f"shown {when - trigger:.2f} s after the trigger"
    assert ev["compile_id"] > 0 and ev["level"] in (1, 2, 3, 4) and ev["success"] is True
    # AND the agent names that compile id (method, tier) for the live map
    done = pyprof("agent", "compiles", str(t.pid), str(ev["compile_id"]), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)[str(ev["compile_id"])]
    assert info["method"] == HOT and info["level"] == ev["level"] and isinstance(info["inlined"], list)


def test_threads_match_proc_comm_and_getName(loaded: Loaded):
    t = loaded.target
    # WHEN the agent lists the threads of the target (which printed getName()/getId() of its own)
    done = pyprof("agent", "threads", str(t.pid), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    by_name = {r["name"]: r for r in rows}
    comm = comms(t.pid)
    # THEN every thread of the target is there with its Java id (what getName()/getId() printed) ...
    for name in (*TARGET_THREADS, "main"):
        assert name in by_name, (name, sorted(by_name))
    for name, java_id in t.threads.items():
        assert by_name[name]["java_id"] == java_id
    assert set(t.threads) == set(TARGET_THREADS)
    # ... and its OS thread id is the task whose comm is the Java name cut to 15 bytes (or, for the
    # launcher thread and a thread renamed by another thread, the name the OS kept)
    checked = 0
    for r in rows:
        if r["tid"] not in comm and TRANSIENT.match(r["name"]):
            continue   # ended since: our CLI's connection thread, an idle JIT compiler thread
        assert r["tid"] in comm, r
        expected = EXPECTED_COMM.get(r["name"], r["name"].encode()[:15].decode("utf-8", "ignore"))
        assert comm[r["tid"]] == expected, (r, comm[r["tid"]])
        checked += 1
    assert checked >= 15   # the target's, the JVM's (GC, compiler, VM Thread, ...), the agent's
    assert by_name["target-busy"]["state"] in ("TIMED_WAITING", "RUNNABLE")
    assert any(r["kind"] == "vm" and r["java_id"] is None for r in rows)   # GC and VM threads too


def test_gc_pauses_are_reported(loaded: Loaded):
    t = loaded.target
    before = time.time_ns()
    # WHEN the target runs a full GC (System.gc())
    t.send("gc")
    t.jp.wait_for("gc-done", timeout=60)
    deadline = time.monotonic() + 10
    mine = []
    while not mine and time.monotonic() < deadline:
        done = pyprof("agent", "gc", str(t.pid), "--json")
        assert done.returncode == 0, done.stderr
        pauses = json.loads(done.stdout)["pauses"]
        mine = [p for p in pauses if p["kind"] == "gc" and p.get("cause") == "System.gc()"
                and p["start_ns"] >= before - 1_000_000_000]
        time.sleep(0.2)
    # THEN the agent reports its stop-the-world pause: when, how long, which collector, why
    assert mine, pauses[-5:]
    p = mine[-1]
    assert 0 < p["duration_ns"] < 30e9 and before - 1e9 <= p["start_ns"] <= time.time_ns()
    assert p["name"] and p["phase"]
    # AND safepoints are there too (a full GC is one)
    assert any(q["kind"] == "safepoint" and q["duration_ns"] > 0 for q in pauses)


def test_wrong_or_missing_token_is_refused(loaded: Loaded):
    from py4j.protocol import Py4JError

    t = loaded.target
    info = find_connection(t.pid)
    assert info is not None
    # WHEN a client presents a wrong token THEN it is refused
    with pytest.raises(SourceUnavailable, match="refused the token"):
        open_gateway(info.port, "0" * 64, timeout=20)
    # WHEN a client presents no token THEN its first call is refused
    gw = open_gateway(info.port, None, timeout=20)
    try:
        with pytest.raises(Py4JError):
            gw.entry_point.status()
    finally:
        gw.close()
    # ... also at the protocol level: a call without authenticating gets no answer but an error
    with socket.create_connection(("127.0.0.1", info.port), timeout=20) as s:
        s.sendall(b"c\nt\nstatus\ne\n")
        reply = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break   # refused and closed
            if not chunk:
                break
            reply += chunk
    assert b"pyprof-agent" not in reply and b'"port"' not in reply
    # WHEN the right token is presented THEN the agent answers, but only its own methods: no reflection
    with AgentClient.connect(t.pid) as client:
        assert client.status()["pid"] == t.pid
    gw = open_gateway(info.port, info.token, timeout=20)
    try:
        with pytest.raises(Py4JError):
            gw.jvm.java.lang.System.getProperty("user.name")
    finally:
        gw.close()
    gw = open_gateway(info.port, info.token, timeout=20)
    try:
        with pytest.raises(Py4JError):
            gw.entry_point.getClass()
    finally:
        gw.close()
    assert t.alive_and_ticking()


def _local_addresses() -> set[str]:
    out = {"127.0.0.2"}    # loopback, but not 127.0.0.1
    try:
        text = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, timeout=10).stdout
        out.update(m for m in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", text) if not m.startswith("127."))
    except OSError:
        pass
    return out


def test_gateway_is_reachable_on_127_0_0_1_only(loaded: Loaded):
    t = loaded.target
    info = find_connection(t.pid)
    assert info is not None
    # THEN the JVM listens on 127.0.0.1 only ...
    found = listeners(t.pid, info.port)
    assert found and {address for address, _ in found} == {"127.0.0.1"}, found
    # ... and a connection to any other address of this machine is refused
    addresses = _local_addresses()
    assert len(addresses) >= 1
    for address in sorted(addresses):
        with pytest.raises(OSError):
            socket.create_connection((address, info.port), timeout=5).close()
    socket.create_connection(("127.0.0.1", info.port), timeout=5).close()


def test_unload_stops_every_agent_thread_and_a_second_load_works(loaded: Loaded, tmp_path: Path):
    t = loaded.target
    path = connection_path(t.pid)
    old_port = json.loads(path.read_text())["port"]
    # WHEN the agent is unloaded
    done = pyprof("agent", "unload", str(t.pid))
    assert done.returncode == 0, done.stderr
    # THEN no thread of the agent is left (jcmd Thread.print), only the JVM's own JFR threads are new,
    # the connection file is gone, and the target kept running
    after = thread_print_names(t.version, t.pid)
    assert not [n for n in after if n.startswith("pyprof-agent") or n.startswith("JFR Event Stream")], after
    new = set(after) - set(loaded.threads_before)
    assert all(n.startswith("JFR ") or TRANSIENT.match(n) for n in new), new
    assert not os.path.lexists(path)
    assert pyprof("agent", "status", str(t.pid)).returncode == 1
    assert t.alive_and_ticking()
    # GIVEN someone planted a symlink where the next connection file goes
    victim = tmp_path / "victim"
    victim.write_text("victim\n")
    os.chmod(victim, 0o644)
    os.symlink(victim, path)
    try:
        # WHEN the agent is loaded again
        again = pyprof("agent", "load", str(t.pid), timeout=180)
        # THEN it starts afresh (a new gateway), never writing through the symlink
        assert again.returncode == 0, again.stderr
        assert victim.read_text() == "victim\n" and stat.S_IMODE(os.stat(victim).st_mode) == 0o644
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        status = json.loads(pyprof("agent", "status", str(t.pid), "--json").stdout)["status"]
        assert status["dynamic"] is True
        assert json.loads(path.read_text())["port"] == status["port"] != 0
        ls = pyprof("codecache", "ls", str(t.pid), "--source", "agent", "--json")
        assert ls.returncode == 0, ls.stderr
        assert len(json.loads(ls.stdout)) > 300
        assert old_port > 0
        assert t.alive_and_ticking()
    finally:
        if os.path.islink(path):
            os.unlink(path)


# ---- JVMs that refuse, JVMs that start with the agent ---------------------------------------------------
@pytest.fixture
def target_factory():
    started: list[Target] = []

    def start(version: int, *flags: str) -> Target:
        target = start_target(version, *flags)
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


def test_a_jvm_refusing_dynamic_agents_gives_one_line_and_pyprof_goes_on(agent_jdk, agent_jar,
                                                                          target_factory):
    # GIVEN a JVM started with -XX:-EnableDynamicAgentLoading
    t = target_factory(agent_jdk, "-XX:-EnableDynamicAgentLoading")
    # WHEN pyprof is asked to load the agent THEN it says why not, in one line, and how to do it instead
    done = pyprof("agent", "load", str(t.pid), timeout=180)
    assert done.returncode == 9
    line = one_line_error(done)
    assert "refuses dynamic agents (-XX:-EnableDynamicAgentLoading)" in line and "-javaagent:" in line
    # ... the same when a command wants the agent as its source
    ls = pyprof("codecache", "ls", str(t.pid), "--source", "agent")
    assert ls.returncode == 9 and "refuses dynamic agents" in one_line_error(ls)
    # AND pyprof continues with the other sources; the JVM has no agent and keeps running
    auto = pyprof("codecache", "ls", str(t.pid), "--json")
    assert auto.returncode == 0, auto.stderr
    assert sum(1 for b in json.loads(auto.stdout) if b["kind"] == "nmethod") > 100
    assert pyprof("agent", "status", str(t.pid)).returncode == 1
    assert not os.path.lexists(connection_path(t.pid))
    assert not [c for c in comms(t.pid).values() if c.startswith("pyprof-agent")]
    assert DYNAMIC_WARNING not in t.stderr()
    assert t.alive_and_ticking()


def test_javaagent_at_start_needs_no_attach_listener(agent_jdk, agent_jar, target_factory):
    # GIVEN a JVM started with -javaagent:pyprof-agent.jar
    t = target_factory(agent_jdk, f"-javaagent:{agent_jar}")
    wait_for_agent(t.pid)
    # WHEN pyprof reads its code cache and threads through the agent
    status = pyprof("agent", "status", str(t.pid), "--json")
    ls = pyprof("codecache", "ls", str(t.pid), "--source", "agent", "--json")
    threads = pyprof("agent", "threads", str(t.pid), "--json")
    # THEN it works without jcmd: the JVM never started its Attach Listener thread, and did not warn
    assert status.returncode == 0, status.stderr
    s = json.loads(status.stdout)["status"]
    assert s["dynamic"] is False and "jdk.Compilation" in s["jfr"]["enabled"] and s["jfr"]["error"] is None
    assert ls.returncode == 0, ls.stderr
    assert sum(1 for b in json.loads(ls.stdout) if b["kind"] == "nmethod") > 100
    assert threads.returncode == 0
    assert "Attach Listener" not in {r["name"] for r in json.loads(threads.stdout)}
    assert "Attach Listener" not in comms(t.pid).values()
    assert "loaded into" not in ls.stderr and DYNAMIC_WARNING not in t.stderr()
    assert t.alive_and_ticking()


def test_agent_load_on_jdk11_is_one_line_and_exit_5_and_loads_nothing(agent_jar, java_workload):
    # GIVEN a JDK 11 JVM (the agent needs 17: Java 17 bytecode, JFR event streaming)
    jp = java_workload(11, "Phases", "60,30,10")
    # WHEN pyprof is asked to load the agent, or to use it as a code-cache source
    load = pyprof("agent", "load", str(jp.pid), timeout=180)
    ls = pyprof("codecache", "ls", str(jp.pid), "--source", "agent", "--json")
    # THEN each says why in one line and exits 5 (unsupported JVM)
    assert load.returncode == 5, load.stderr
    assert "needs JDK 17 or later" in one_line_error(load) and "runs JDK 11" in load.stderr
    assert ls.returncode == 5 and "needs JDK 17 or later" in one_line_error(ls)
    # AND nothing was loaded or started in the JVM (no Attach Listener, no class-version error)
    assert not [c for c in comms(jp.pid).values() if c.startswith("pyprof-agent")]
    assert "Attach Listener" not in comms(jp.pid).values()
    # AND the attach-free reader works there
    auto = pyprof("codecache", "ls", str(jp.pid), "--json")
    assert auto.returncode == 0, auto.stderr
    assert sum(1 for b in json.loads(auto.stdout) if b["kind"] == "nmethod") > 20


def test_record_agent_on_jdk11_is_refused_before_the_jvm_starts(agent_jar, tmp_path: Path):
    # GIVEN a JDK 11 java launcher (-javaagent with Java 17 classes would abort that JVM at start)
    out = tmp_path / "rec.pb.gz"
    # WHEN `pyprof record --agent` is asked to start it
    done = pyprof("record", "--agent", "-o", str(out), "--", java_bin(11), "-cp", str(CLASSES),
                  "pyproftest.Exiter", "3", timeout=120)
    # THEN one line, exit 5, and nothing was started or written
    assert done.returncode == 5, done.stderr
    line = one_line_error(done)
    assert "needs JDK 17 or later" in line and "is JDK 11" in line
    assert "UnsupportedClassVersionError" not in done.stderr and done.stdout == ""
    assert not out.exists()


def test_a_jvm_in_its_own_pid_and_network_namespaces(agent_jar, tmp_path: Path):
    # GIVEN a JVM in new pid, network and mount namespaces (a container without the image): it is pid 1
    # there, and its 127.0.0.1 is not ours (JDK 21: the namespace handling is pyprof's, not the JDK's)
    script = f"ip link set lo up && exec {java_bin(21)} -cp {TARGET_CLASSES} {TARGET}"
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--net", "--mount", "--mount-proc", "sh", "-c",
                             script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    jp = JavaProcess(proc, 21)
    java = None
    try:
        jp.wait_for("ready")
        java = _java_child(proc.pid)
        assert java is not None
        nspid = [ln.split() for ln in Path(f"/proc/{java}/status").read_text().splitlines()
                 if ln.startswith("NSpid:")][0]
        assert nspid[1:] == [str(java), "1"]
        assert os.stat(f"/proc/{java}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        # WHEN pyprof loads the agent and asks for threads and the code cache
        load = pyprof("agent", "load", str(java), timeout=180)
        threads = pyprof("agent", "threads", str(java), "--json")
        ls = pyprof("codecache", "ls", str(java), "--source", "agent", "--json")
        unload = pyprof("agent", "unload", str(java))
        # THEN it reached the agent inside the namespaces (its file is agent-1.json), thread ids are
        # mapped to the host's, and unload worked
        assert load.returncode == 0, load.stderr
        assert threads.returncode == 0, threads.stderr
        rows = json.loads(threads.stdout)
        main = [r for r in rows if r["name"] == "main"][0]
        assert main["tid"] != main["os_tid"] and main["tid"] in comms(java)
        assert ls.returncode == 0 and len(json.loads(ls.stdout)) > 300, ls.stderr
        assert unload.returncode == 0, unload.stderr
        assert not os.path.lexists(f"/proc/{java}/root/run/pyprof/agent-1.json")
    finally:
        if proc.poll() is None:
            proc.kill()
        if java is not None and os.path.exists(f"/proc/{java}"):
            os.kill(java, 9)
        jp.stop()


def _java_child(pid: int, timeout: float = 60) -> Optional[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in children:
                try:
                    if Path(f"/proc/{child}/exe").resolve().name == "java":
                        return int(child)
                except OSError:
                    continue
        time.sleep(0.1)
    return None


def test_record_agent_starts_the_jvm_with_the_agent(agent_jar, root_and_bpf, tmp_path: Path):
    # GIVEN `pyprof record --agent -- java ... AgentTarget` (JDK 17: record itself is tested elsewhere)
    out = tmp_path / "rec.pb.gz"
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), "-m", "pyprof.cli.main", "record",
                             "--agent", "--no-progress", "-d", "60", "-o", str(out), "--",
                             java_bin(17), "-cp", str(TARGET_CLASSES), TARGET],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    jp = JavaProcess(proc, 17)
    try:
        jp.wait_for("ready", timeout=120)
        java = _java_child(proc.pid)
        assert java is not None
        # THEN the JVM runs the agent from its start (no dynamic load) and pyprof can use it
        cmdline = Path(f"/proc/{java}/cmdline").read_bytes().split(b"\0")
        assert f"-javaagent:{agent_jar}".encode() in cmdline
        wait_for_agent(java)
        status = pyprof("agent", "status", str(java), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"]["dynamic"] is False
        # WHEN the JVM exits THEN record ends with its exit code and writes the profile
        assert proc.stdin is not None
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
        assert out.is_file() and out.stat().st_size > 0
    finally:
        if proc.poll() is None:
            proc.kill()
        jp.stop()


# ---- pyprof attach --agent: samples labelled with the agent's data -------------------------------------
def test_attach_with_agent_labels_thread_states_and_gc_pauses(agent_jar, target_factory, tmp_path):
    # GIVEN a JVM with a known busy thread, and pyprof attached with --agent
    t = target_factory(21)
    out = tmp_path / "agent.pb.gz"
    cmd = [sys.executable, "-m", "pyprof.cli.main", "attach", str(t.pid), "-d", "7", "-r", "499", "--agent",
           "-o", str(out), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stderr is not None
        announced = ""
        while not announced.startswith("pyprof: sampling"):
            announced = proc.stderr.readline()
            assert announced, "attach ended before sampling"
        # WHEN the JVM collects garbage (full, stop-the-world) while sampled
        for _ in range(3):
            t.send("gc")
            time.sleep(1)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    profile = read_pprof(str(out))
    labels = {key: dict(key.labels) for key in profile.counts}
    # THEN the busy thread's samples carry its Java thread id and state
    busy = [lab for key, lab in labels.items() if key.thread_name == "target-busy"]
    assert busy and all(lab.get("java_thread_id") == str(t.threads["target-busy"]) for lab in busy), busy[:3]
    assert all(lab.get("thread_state") for lab in busy)
    # AND the agent saw the pauses, and samples taken inside one are labelled with it
    assert summary["agent"]["gc_pauses"] >= 3, summary["agent"]
    in_gc = sum(n for key, n in profile.counts.items() if labels[key].get("pause") == "gc")
    assert in_gc > 0, summary["agent"]
