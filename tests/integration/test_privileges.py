"""Least privilege (docs/deploy/README.md): pyprof profiles a JVM of another user with the documented
capability set instead of full root, notes what an optional capability's absence costs, and without a
required capability stops before any BPF with one line naming it and exit code 6.

The JVM runs as `nobody`. pyprof runs twice: as uid 0 with its bounding set cut to the required
capabilities (`setpriv --bounding-set`: root keeps uid 0's file access but no other capability), and as
a uid of its own with the documented set as ambient capabilities (what the systemd unit does).
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

from pyprof.output.pprof import read_pprof
from pyprof.procfs import capabilities
from tests.conftest import CLASSES, NATIVE_LIBS, ROOT, JavaProcess, java_bin, pyprof, require
from tests.integration.test_attach import PHASES, phase_shares
from tests.integration.test_daemon import DaemonLog, pid_of

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]

REQUIRED = capabilities.REQUIRED
DOCUMENTED = capabilities.DEPLOYED     # what the systemd unit and the DaemonSet grant
PROFILER_UID = 64123        # a uid of pyprof's own, neither root nor the JVM's user
JVM_USER = ("nobody", "nogroup")
INTERVAL_S = 4
MEMLOCK_BYTES = 64 * 1024
MIN_SAMPLES = 150           # per JVM in the daemon's windows (a loaded 2-core machine gives ~5 a second)


def setpriv_caps(caps: tuple[str, ...]) -> str:
    return ",".join(f"+{name[4:].lower()}" for name in caps)


def with_caps(cmd: list[str], caps: tuple[str, ...], uid: Optional[int] = None) -> list[str]:
    """`cmd` with exactly `caps`: as uid 0 with a reduced bounding set (root's exec rule makes the
    bounding set its permitted and effective set), or as `uid` with them ambient and no_new_privs set
    (as the systemd unit: AmbientCapabilities=, NoNewPrivileges=yes)."""
    setpriv = shutil.which("setpriv")
    require(setpriv is not None, "setpriv (util-linux) is needed to drop capabilities")
    wanted = setpriv_caps(caps)
    if uid is None:
        return [setpriv, "--bounding-set", f"-all,{wanted}", "--inh-caps", "-all", "--", *cmd]
    return [setpriv, "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--no-new-privs",
            "--inh-caps", wanted,
            "--ambient-caps", wanted, "--bounding-set", f"-all,{wanted}", "--", *cmd]


def mask(caps: tuple[str, ...]) -> int:
    return sum(1 << capabilities.NUMBERS[name] for name in caps)


def effective_caps(prefix: list[str]) -> int:
    done = subprocess.run([*prefix, "grep", "^CapEff:", "/proc/self/status"], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[1], 16)


def pyprof_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyprof.cli.main", *args]


def run_capped(args: list[str], caps: tuple[str, ...], uid: Optional[int] = None, home: Optional[Path] = None,
               timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(home)) if home else None
    return subprocess.run(with_caps(pyprof_cmd(*args), caps, uid), capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env)


@dataclass
class NobodyJvm:
    process: JavaProcess
    marker: str         # on its command line only: the daemon's --match picks this JVM and no other

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture(scope="module")
def nobody_jvm() -> Iterator[NobodyJvm]:
    """Phases (60/30/10) on JDK 17, running as nobody: its /proc files belong to another user."""
    user, group = JVM_USER
    base = ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups"]
    readable = subprocess.run([*base, "test", "-r", str(CLASSES / "pyproftest" / "Phases.class")],
                              stdin=subprocess.DEVNULL)
    require(readable.returncode == 0, f"{user} cannot read {CLASSES} (every directory above it needs o+rx)")
    marker = f"-Dpyproftest.privileges={secrets.token_hex(4)}"
    cmd = [*base, java_bin(17), marker, "-cp", str(CLASSES), f"-Djava.library.path={NATIVE_LIBS}",
           "pyproftest.Phases", "60,30,10"]
    jvm = JavaProcess(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       stdin=subprocess.DEVNULL, cwd="/"), 17)
    try:
        jvm.wait_for("ready")
        assert os.stat(f"/proc/{jvm.pid}/mem").st_uid != 0   # setpriv exec'd java: the pid is the JVM's
        yield NobodyJvm(jvm, marker)
    finally:
        jvm.stop()


@pytest.fixture
def profiler_home() -> Iterator[Path]:
    """A directory of PROFILER_UID's (pytest's tmp_path is root's, 0700) for HOME and the store."""
    home = Path(tempfile.mkdtemp(prefix="pyprof-privileges-"))
    os.chown(home, PROFILER_UID, PROFILER_UID)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def assert_phases(profile_path: str, minimum: int) -> None:
    """The busy thread's samples are named: each in one of its three phases (two compiled Java methods,
    one JNI function under its Java native method), in the order of their shares. The shares themselves
    are test_attach's business: on a loaded 2-core machine a capped run may get only ~100 samples, too
    few for +-3 points, never too few for the order 60 > 30 > 10."""
    profile = read_pprof(profile_path)
    samples = sum(n for key, n in profile.counts.items() if key.thread_name == "phases-main")
    assert samples >= minimum, samples
    shares = phase_shares(profile)
    assert sum(shares.values()) >= 97.0, shares
    assert shares["A"] > shares["B"] > shares["C"] > 0, shares


def small_memlock() -> None:
    """64 KiB of RLIMIT_MEMLOCK, and no way to raise it: BPF maps are charged to the memory cgroup
    (Linux >= 5.11), so the documented set needs no CAP_IPC_LOCK or CAP_SYS_RESOURCE."""
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (MEMLOCK_BYTES, MEMLOCK_BYTES))


def wait_for_samples(log: DaemonLog, pids: tuple[int, ...], minimum: int, timeout_s: float) -> None:
    """Until the daemon's window lines add up to `minimum` samples for each of `pids`."""
    deadline = time.monotonic() + timeout_s
    while True:
        totals = {pid: 0 for pid in pids}
        for line in list(log.lines):
            m = re.search(r" window pid=(\d+) .*samples=(\d+)", line)
            if m and int(m.group(1)) in totals:
                totals[int(m.group(1))] += int(m.group(2))
        if min(totals.values()) >= minimum:
            return
        assert time.monotonic() < deadline, (totals, log.lines[-20:])
        time.sleep(1)


def test_setpriv_gives_exactly_the_capabilities_asked_for() -> None:
    # the premise of every other test here: the commands really run with these capabilities and no other
    assert effective_caps(with_caps([], REQUIRED)) == mask(REQUIRED)
    assert effective_caps(with_caps([], DOCUMENTED, uid=PROFILER_UID)) == mask(DOCUMENTED)


@pytest.mark.parametrize("caps,uid", [(REQUIRED, None), (DOCUMENTED, PROFILER_UID)],
                         ids=["uid0-required", "own-uid-documented"])
def test_attach_with_only_the_documented_capabilities(caps: tuple[str, ...], uid: Optional[int],
                                                      nobody_jvm: NobodyJvm, profiler_home: Path,
                                                      tmp_path: Path) -> None:
    # GIVEN a JVM of nobody's, and pyprof either as uid 0 with only the required capabilities (no
    # CAP_SYSLOG, no CAP_CHECKPOINT_RESTORE, no CAP_SYS_ADMIN, no DAC override) or as a uid of its own with
    # the documented set ambient
    # (root without CAP_DAC_OVERRIDE cannot write into the other user's directory, nor it into root's)
    out = (profiler_home if uid is not None else tmp_path) / "attach.pb.gz"
    # WHEN it attaches
    done = run_capped(["attach", str(nobody_jvm.pid), "-d", "8", "-r", "199", "-o", str(out), "--json"],
                      caps, uid=uid, home=profiler_home)
    # THEN it profiles: samples, named Java frames in the right order of shares, complete stacks
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["lost"] == 0 and summary["unknown_frames_percent"] < 0.5, summary
    assert summary["unwind"]["java_stacks_complete_percent"] >= 95.0, summary["unwind"]
    assert summary["top_self"][0]["function"].startswith(PHASES["A"]), summary["top_self"]
    assert_phases(str(out), minimum=50)
    # AND it says, in one note each, what the missing optional capabilities cost, and nothing more
    notes = [line for line in done.stderr.splitlines() if line.startswith("pyprof: note:")]
    assert any("CAP_SYS_ADMIN" in line and "segment map" in line for line in notes), done.stderr
    kallsyms_note = any("CAP_SYSLOG" in line and "kernel frames" in line for line in notes)
    assert kallsyms_note == ("CAP_SYSLOG" not in caps), done.stderr
    # AND nothing else reached stderr (no bcc complaint about a tracefs fallback, no traceback)
    others = [line for line in done.stderr.splitlines() if not line.startswith("pyprof: ")]
    assert not others, done.stderr


def test_daemon_as_its_own_user_with_the_documented_capabilities(nobody_jvm: NobodyJvm, container_jvm,
                                                                 profiler_home: Path) -> None:
    # GIVEN a JVM of nobody's and a JVM of root's in its own mount and pid namespaces (its JDK at a path
    # only it has), and the daemon as uid 64123 with the documented set ambient, as the systemd unit runs it
    _unshare, _jdk_path, container_marker = container_jvm
    store = profiler_home / "store"
    cmd = pyprof_cmd("daemon", "--out", str(store), "--interval", str(INTERVAL_S), "--rate", "199",
                     "--match", f"{re.escape(nobody_jvm.marker)}|{re.escape(container_marker)}")
    daemon = subprocess.Popen(with_caps(cmd, DOCUMENTED, uid=PROFILER_UID), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, HOME=str(profiler_home)), preexec_fn=small_memlock)
    log = DaemonLog(daemon)
    try:
        # WHEN it has found both and written a few windows
        log.wait_for(rf"jvm-found pid={nobody_jvm.pid}\b", 120)
        container_pid = pid_of(log.wait_for(r"jvm-found .*jdk=21\.", 60))
        wait_for_samples(log, (nobody_jvm.pid, container_pid), MIN_SAMPLES, timeout_s=180)
        rc = log.terminate(daemon)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    # THEN it ran and stopped cleanly, saying which optional capability it lacks and what that costs
    assert rc == 0, "\n".join(log.lines[-30:])
    missing = [line for line in log.lines if " capability-missing " in line]
    assert len(missing) == 1 and "capability=CAP_SYS_ADMIN" in missing[0], missing
    assert not any("Traceback" in line or "create_probe_event" in line for line in log.lines), log.lines
    # AND the store, its user's, holds windows of both JVMs with their ground truth
    assert os.stat(store).st_uid == PROFILER_UID
    listing = json.loads(pyprof("store", "ls", str(store), "--json", check=True).stdout)["windows"]
    assert {w["pid"] for w in listing} >= {nobody_jvm.pid, container_pid}, listing
    for pid in (nobody_jvm.pid, container_pid):
        merged = profiler_home / f"merged-{pid}.pb.gz"
        pyprof("report", str(store), "--pid", str(pid), "-o", str(merged), "--format", "pprof", check=True)
        assert_phases(str(merged), minimum=MIN_SAMPLES)


@pytest.mark.parametrize("dropped", REQUIRED)
@pytest.mark.parametrize("command", ["attach", "daemon"])
def test_without_a_required_capability_it_stops_with_one_line_and_exit_6(command: str, dropped: str,
                                                                         nobody_jvm: NobodyJvm,
                                                                         tmp_path: Path) -> None:
    # GIVEN the required set less one capability
    caps = tuple(name for name in REQUIRED if name != dropped)
    args = {"attach": ["attach", str(nobody_jvm.pid), "-d", "2", "-o", str(tmp_path / "p.pb.gz")],
            "daemon": ["daemon", "--out", str(tmp_path / "store")]}[command]
    # WHEN the command runs
    done = run_capped(args, caps, timeout=120)
    # THEN it exits 6 with one line that names exactly the missing capability, before doing anything
    assert done.returncode == 6, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyprof: error: "), done.stderr
    assert f"missing {dropped} " in lines[0], lines[0]
    assert not (tmp_path / "store").exists() and not (tmp_path / "p.pb.gz").exists()
