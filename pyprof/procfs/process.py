"""Whether the target still runs."""

from __future__ import annotations


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
