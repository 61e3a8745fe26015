"""Small facts about a process from /proc: whether it still runs, its name, its pid in its own namespace."""

from __future__ import annotations

import os
from typing import Optional

from pyprof.errors import NoSuchProcess


def is_running(pid: int) -> bool:
    """/proc/PID exists and is not a zombie: an exited JVM whose parent has not reaped it yet keeps its
    /proc entry, but its memory and threads are gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[:1]   # the command name may contain spaces and parentheses
    return bool(state) and state[0] not in ("Z", "X")


def namespace_pid(pid: int) -> int:
    """The JVM's pid as the JVM sees it (its own PID namespace: the last NSpid of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return pid


def require_running(pid: int, what: str = "") -> None:
    """NoSuchProcess unless `pid` runs (zombies included: their memory is gone)."""
    if pid <= 0 or not is_running(pid):
        raise NoSuchProcess(what or f"no such process: {pid}")


def comm(pid: int, tid: int = 0) -> Optional[str]:
    """The kernel's (15-byte) name of a process or of one of its threads; None when it is gone."""
    path = f"/proc/{pid}/task/{tid}/comm" if tid else f"/proc/{pid}/comm"
    try:
        with open(path, "rb") as f:
            return f.read(64).decode("utf-8", "replace").strip()
    except OSError:
        return None


def host_tids(pid: int) -> dict[int, int]:
    """Thread ids as the process sees them (its own pid namespace) -> host thread ids (the last and the
    first field of NSpid in /proc/PID/task/*/status); identity outside a namespace."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError) as e:   # ESRCH: a process on its way out
        raise NoSuchProcess(f"no such process: {pid}") from e
    for name in tids:
        tid = int(name)
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        out[int(line.split()[-1])] = tid
                        break
                else:
                    out[tid] = tid
        except OSError:
            continue
    return out
