"""Load the agent into a running JVM, unload it, say whether it runs.

Loading goes through `jcmd PID JVMTI.agent_load JAR` (the target JDK's own jcmd; this starts the JVM's
Attach Listener thread, which the agent does not need afterwards). JDK 21+ prints a warning about
dynamically loaded agents on the JVM's stderr; a JVM started with -XX:-EnableDynamicAgentLoading refuses
(JDK 21+ says so; JDK 17's jcmd would load anyway, so pyprof reads VM.flags first and respects the flag on
every JDK). -XX:+DisableAttachMechanism refuses jcmd altogether. Either way: one line, SourceUnavailable.

"Unload" cannot remove classes from a JVM; it stops the agent: the gateway and its connections, the JFR
stream, every thread the agent started (all are named pyprof-agent-*), and deletes the connection file.
A later load starts a fresh agent (fresh class loader, new port, new token).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pyprof.agent.client import AgentClient
from pyprof.agent.connection import find_connection, jvm_uid
from pyprof.agent.jar import AGENT_MIN_JDK, find_agent_jar
from pyprof.errors import (
    NoSuchProcess,
    NotAJvm,
    PermissionDenied,
    PyprofError,
    SourceUnavailable,
    UnsupportedJvm,
)
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.jvmtools.jcmd import find_jcmd, run_jcmd
from pyprof.procfs.process import comm, require_running

LOAD_TIMEOUT = 60.0
UNLOAD_TIMEOUT = 30.0
THREAD_PREFIX = "pyprof-agent"
REFUSED_FLAG = "-XX:-EnableDynamicAgentLoading"
ALLOWED_FLAG = "-XX:+EnableDynamicAgentLoading"
NO_ATTACH_FLAG = "-XX:+DisableAttachMechanism"


@dataclass
class LoadResult:
    status: dict[str, Any]
    already_running: bool
    jar: str
    notes: list[str] = field(default_factory=list)


def _require_jvm(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/maps") as f:
            if any(line.rstrip().endswith("/libjvm.so") for line in f):
                return
    except FileNotFoundError as e:
        raise NoSuchProcess(f"no such process: {pid}") from e
    except PermissionError as e:
        raise PermissionDenied(f"cannot read /proc/{pid}/maps: run as root") from e
    raise NotAJvm(f"process {pid} is not a HotSpot JVM (no libjvm.so mapped)")


def refusal(pid: int, jar: Path) -> SourceUnavailable:
    return SourceUnavailable(f"JVM {pid} refuses dynamic agents ({REFUSED_FLAG}): start it with "
                             f"-javaagent:{jar} (pyprof record --agent -- java ...)")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except FileNotFoundError as e:
        raise NoSuchProcess(f"no such process: {pid}") from e


def check_dynamic_loading(pid: int, jar: Path, jcmd: Optional[str] = None) -> bool:
    """SourceUnavailable (one line) when the JVM refuses dynamic agents or attach; else whether it was
    started with -XX:+EnableDynamicAgentLoading (then JDK 21+ loads agents without a warning)."""
    args = _cmdline(pid)
    if NO_ATTACH_FLAG in args:
        raise SourceUnavailable(f"JVM {pid} refuses attach ({NO_ATTACH_FLAG}): start it with "
                                f"-javaagent:{jar} (pyprof record --agent -- java ...)")
    if REFUSED_FLAG in args:
        raise refusal(pid, jar)
    try:
        flags = run_jcmd(pid, "VM.flags", jcmd=jcmd, timeout=30)
    except SourceUnavailable as e:
        raise _attach_error(pid, jar, str(e)) from e
    if REFUSED_FLAG in flags.split():
        raise refusal(pid, jar)
    return ALLOWED_FLAG in flags.split()


def _attach_error(pid: int, jar: Path, message: str) -> SourceUnavailable:
    if "not support the attach mechanism" in message or "AttachNotSupported" in message:
        return SourceUnavailable(f"JVM {pid} refuses attach ({NO_ATTACH_FLAG}?): start it with "
                                 f"-javaagent:{jar} (pyprof record --agent -- java ...)")
    return SourceUnavailable(f"cannot load the agent into {pid}: {message}")


def jar_for_jvm(pid: int, jar: Path) -> str:
    """The agent jar's path as the JVM sees it. Same mount namespace and readable by the JVM's user:
    the jar itself; otherwise a copy in the JVM's /tmp (created exclusively, never through a symlink)."""
    uid = jvm_uid(pid)
    same_root = os.stat(f"/proc/{pid}/root").st_ino == os.stat("/").st_ino and \
        os.stat(f"/proc/{pid}/root").st_dev == os.stat("/").st_dev
    if same_root and (uid == 0 or _world_readable(jar)):
        return str(jar)
    data = jar.read_bytes()
    name = f"pyprof-agent-{hashlib.sha256(data).hexdigest()[:16]}.jar"
    target = f"/proc/{pid}/root/tmp/{name}"
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        st = os.lstat(target)
        if os.path.islink(target) or st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022 or \
                Path(target).read_bytes() != data:
            raise SourceUnavailable(f"{target} exists and is not pyprof's jar: remove it") from None
        return f"/tmp/{name}"
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    return f"/tmp/{name}"


def _world_readable(path: Path) -> bool:
    p = path.resolve()
    if not os.stat(p).st_mode & 0o004:
        return False
    return all(os.stat(d).st_mode & 0o001 for d in p.parents)


def running_status(pid: int) -> Optional[dict[str, Any]]:
    """The running agent's status, or None when no agent answers in `pid` (no connection file, a stale
    or untrustworthy one: a load replaces it)."""
    try:
        info = find_connection(pid)
        if info is None:
            return None
        with AgentClient.connect(pid, info=info) as client:
            return client.status()
    except SourceUnavailable:
        return None


@dataclass
class AgentConnection:
    """A connected agent client, and what connecting took (whether it was loaded now, notes)."""
    client: AgentClient
    loaded_now: bool
    notes: list[str]


def connect_agent(pid: int, load: bool = True) -> AgentConnection:
    """Connect to the agent in `pid`; load it first (jcmd) when none runs and `load` is set."""
    require_running(pid)
    loaded_now = False
    notes: list[str] = []
    if load:
        result = load_agent(pid)      # a no-op when one runs already
        loaded_now = not result.already_running
        if loaded_now:
            notes.append(f"loaded the pyprof agent into {pid} (`pyprof agent unload {pid}` stops it)")
        notes += result.notes
    return AgentConnection(AgentClient.connect(pid), loaded_now, notes)


def load_agent(pid: int, options: str = "", timeout: float = LOAD_TIMEOUT) -> LoadResult:
    """Load the agent into running JVM `pid` (a no-op when it already runs)."""
    _require_jvm(pid)
    jar = find_agent_jar()
    status = running_status(pid)
    if status is not None:
        return LoadResult(status, True, str(jar))
    _require_agent_jdk(pid)
    jcmd = find_jcmd(pid)
    explicitly_allowed = check_dynamic_loading(pid, jar, jcmd)
    path = jar_for_jvm(pid, jar)
    command = ["JVMTI.agent_load", path] + ([options] if options else [])
    try:
        out = run_jcmd(pid, *command, jcmd=jcmd, timeout=timeout)
    except SourceUnavailable as e:
        if "Dynamic agent loading is not enabled" in str(e):
            raise refusal(pid, jar) from e
        raise _attach_error(pid, jar, str(e)) from e
    if "Dynamic agent loading is not enabled" in out:
        raise refusal(pid, jar)
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    if not any(ln == "return code: 0" for ln in lines):
        raise SourceUnavailable(f"JVM {pid} did not load the agent: {lines[-1] if lines else 'no answer'}"
                                " (see the JVM's stderr)")
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = running_status(pid)
        if status is not None:
            break
        require_running(pid, f"process {pid} exited while the agent was loaded")
        time.sleep(0.1)
    if status is None:
        raise SourceUnavailable(f"the agent did not start in {pid} within {timeout:.0f} s "
                                "(see the JVM's stderr)")
    notes = []
    major = _major(status.get("java_version", ""))
    if major >= 21 and not explicitly_allowed:
        notes.append(f"JDK {major} printed a warning about a dynamically loaded agent on the JVM's stderr; "
                     "-XX:+EnableDynamicAgentLoading or -javaagent at start avoids it")
    return LoadResult(status, False, str(jar), notes)


def _require_agent_jdk(pid: int) -> None:
    """UnsupportedJvm (exit 5) for a JDK the agent cannot run on, before anything is loaded into it (the
    JVM would print an UnsupportedClassVersionError on its stderr). Read attach-free; a JVM whose version
    cannot be read this way is tried."""
    try:
        with HotSpotJvm.open(pid) as jvm:
            major = jvm.major
    except PyprofError:
        return
    if 0 < major < AGENT_MIN_JDK:
        raise UnsupportedJvm(f"the pyprof agent needs JDK {AGENT_MIN_JDK} or later (Java {AGENT_MIN_JDK} "
                             f"bytecode, JFR event streaming); JVM {pid} runs JDK {major}: the attach-free "
                             "reader (the default source) works there")


def _major(version: str) -> int:
    head = version.split(".")[0].split("-")[0]
    return int(head) if head.isdigit() else 0


def agent_threads(pid: int) -> list[tuple[int, str]]:
    """(tid, comm) of the JVM's threads named pyprof-agent-* (comm: the first 15 bytes of the name)."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError as e:
        raise NoSuchProcess(f"no such process: {pid}") from e
    for t in tids:
        name = comm(pid, int(t))
        if name is not None and name.startswith(THREAD_PREFIX):
            out.append((int(t), name))
    return out


def unload_agent(pid: int, timeout: float = UNLOAD_TIMEOUT) -> bool:
    """Stop the agent; returns False when none was running. Waits until its threads are gone."""
    require_running(pid)
    info = find_connection(pid)
    if info is None:
        return False
    with AgentClient.connect(pid, info=info) as client:
        client.unload()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = agent_threads(pid)
        gone = not os.path.exists(info.path)
        if gone and not left:
            return True
        time.sleep(0.05)
    raise SourceUnavailable(f"the agent in {pid} did not stop within {timeout:.0f} s "
                            f"(threads left: {', '.join(c for _, c in agent_threads(pid)) or 'none'})")
