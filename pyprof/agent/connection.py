"""The agent's connection file, read safely, and the process facts needed to trust it.

The agent (java-helper, ConnectionFile.java) writes `agent-NSPID.json` (port, token) with mode 0600 to
- /run/pyprof/ (mode 0700) when the JVM runs as root: only root can write there;
- JAVA_TMPDIR/pyprof-UID/ (mode 0700, owned by the JVM's user) otherwise.
NSPID is the JVM's pid in its own pid namespace; both paths are in the JVM's mount namespace, so pyprof
reads them through /proc/PID/root (containers included).

What pyprof checks before it uses a file (a planted file must not make it send the token elsewhere or
trust other data): the directory is a real directory (not a symlink), owned by the JVM's user, not
accessible to group or others; the file is opened with O_NOFOLLOW, is a regular file owned by the JVM's
user with no group/other permission bits, and its pid is the JVM's; and before connecting, the port is
a listening socket on 127.0.0.1 that the JVM itself holds (/proc/PID/net/tcp + /proc/PID/fd).
"""

from __future__ import annotations

import glob
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Optional

from pyprof.errors import NoSuchProcess, SourceUnavailable
from pyprof.procfs.process import require_running

ROOT_DIR = "run/pyprof"
MAX_FILE_BYTES = 64 * 1024
TOKEN = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ConnectionInfo:
    pid: int              # the host pid
    ns_pid: int           # the pid the JVM sees
    port: int
    token: str
    path: str             # the file, as pyprof reached it
    started_ms: int = 0
    dynamic: bool = False
    version: str = ""


def ns_pid(pid: int) -> int:
    """The JVM's pid in its own (innermost) pid namespace: NSpid's last field."""
    status = _read_text(f"/proc/{pid}/status", pid)
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return pid


def jvm_uid(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError as e:
        raise NoSuchProcess(f"no such process: {pid}") from e


def java_tmpdir(pid: int) -> str:
    """java.io.tmpdir of the JVM: -Djava.io.tmpdir=... on its command line, else /tmp."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return "/tmp"
    for a in args:
        if a.startswith(b"-Djava.io.tmpdir="):
            return a.split(b"=", 1)[1].decode("utf-8", "replace") or "/tmp"
    return "/tmp"


def candidate_paths(pid: int) -> list[str]:
    """Where the agent of JVM `pid` may have written its file, most likely first."""
    nspid = ns_pid(pid)
    root = f"/proc/{pid}/root"
    name = f"agent-{nspid}.json"
    out = [f"{root}/{ROOT_DIR}/{name}"]
    tmp = java_tmpdir(pid).rstrip("/") or "/tmp"
    out += sorted(glob.glob(f"{root}/{tmp.lstrip('/')}/pyprof-*/{name}"))
    return out


def _read_text(path: str, pid: int) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise NoSuchProcess(f"no such process: {pid}") from e
    except PermissionError as e:
        raise SourceUnavailable(f"cannot read {path}: run as root") from e


def check_dir(path: str, uid: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(path) from e
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SourceUnavailable(f"{path} is not a directory (a symlink?): ignored")
    if st.st_uid != uid:
        raise SourceUnavailable(f"{path} belongs to uid {st.st_uid}, not the JVM's {uid}: ignored")
    if st.st_mode & 0o077:
        raise SourceUnavailable(f"{path} is accessible to others (mode {st.st_mode & 0o777:o}): ignored")


def read_connection_file(path: str, pid: int, uid: Optional[int] = None,
                         expected_ns_pid: Optional[int] = None) -> ConnectionInfo:
    """Parse one connection file after the checks above; FileNotFoundError when there is none."""
    uid = jvm_uid(pid) if uid is None else uid
    check_dir(os.path.dirname(path), uid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SourceUnavailable(f"cannot open {path} safely ({e.strerror}): ignored") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceUnavailable(f"{path} is not a regular file: ignored")
        if st.st_uid != uid:
            raise SourceUnavailable(f"{path} belongs to uid {st.st_uid}, not the JVM's {uid}: ignored")
        if st.st_mode & 0o077:
            raise SourceUnavailable(f"{path} is readable by others (mode {st.st_mode & 0o777:o}): ignored")
        raw = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise SourceUnavailable(f"{path} is too large: ignored")
    try:
        data = json.loads(raw)
        info = ConnectionInfo(pid=pid, ns_pid=int(data["pid"]), port=int(data["port"]),
                              token=str(data["token"]), path=path, started_ms=int(data.get("started_ms", 0)),
                              dynamic=bool(data.get("dynamic", False)), version=str(data.get("version", "")))
    except (ValueError, KeyError, TypeError) as e:
        raise SourceUnavailable(f"{path} is not a pyprof agent connection file: ignored") from e
    if data.get("address", "127.0.0.1") != "127.0.0.1" or not 0 < info.port < 65536:
        raise SourceUnavailable(f"{path}: unexpected address or port: ignored")
    if not TOKEN.match(info.token):
        raise SourceUnavailable(f"{path}: malformed token: ignored")
    wanted = ns_pid(pid) if expected_ns_pid is None else expected_ns_pid
    if info.ns_pid != wanted:
        raise SourceUnavailable(f"{path} is for pid {info.ns_pid}, not {wanted}: ignored")
    return info


def find_connection(pid: int) -> Optional[ConnectionInfo]:
    """The running agent's connection file, or None when there is none (no agent)."""
    require_running(pid)
    uid = jvm_uid(pid)
    problems = []
    for path in candidate_paths(pid):
        try:
            return read_connection_file(path, pid, uid)
        except FileNotFoundError:
            continue
        except SourceUnavailable as e:
            problems.append(str(e))
    if problems:
        raise SourceUnavailable(problems[0])
    return None


# ---- sockets and threads of the target --------------------------------------------------------------
def _socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError as e:
        raise NoSuchProcess(f"no such process: {pid}") from e
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def listeners(pid: int, port: int) -> list[tuple[str, int]]:
    """(address, inode) of every TCP socket listening on `port` in the JVM's network namespace."""
    out = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":     # 0A: TCP_LISTEN
                continue
            address, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) != port:
                continue
            out.append((_address(address, v6), int(fields[9])))
    return out


def _address(hex_address: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp prints each 32-bit word in host (little-endian) order
    words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
    packed = b"".join(words)
    if not v6:
        return ".".join(str(b) for b in packed)
    import ipaddress

    addr = ipaddress.IPv6Address(packed)
    # Java listens on a dual-stack socket: 127.0.0.1 shows up as ::ffff:127.0.0.1 in tcp6
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def check_listener(pid: int, port: int) -> None:
    """The port is the JVM's own socket, listening on 127.0.0.1 only."""
    found = listeners(pid, port)
    if not found:
        raise SourceUnavailable(f"nothing listens on 127.0.0.1:{port} in {pid} (agent gone? stale file)")
    mine = _socket_inodes(pid)
    for address, inode in found:
        if inode not in mine:
            raise SourceUnavailable(f"port {port} is not held by {pid}: the connection file is stale")
        if address != "127.0.0.1":
            raise SourceUnavailable(f"the agent of {pid} listens on {address}, not 127.0.0.1 only: refused")


