"""Running the target JVM's own jcmd (the JDK's Attach API client).

Not attach-free: the first jcmd makes the JVM start its Attach Listener thread. The code-cache source of
last resort (pyprof.sources.jcmd) and loading the Java agent (pyprof.agent.control) both go through here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

from pyprof.errors import NoSuchProcess, SourceUnavailable

JCMD_TIMEOUT = 30.0


def find_jcmd(pid: int) -> str:
    """The jcmd of the target's own JDK (a jcmd of another version may refuse to attach)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except FileNotFoundError as e:
        raise NoSuchProcess(f"no such process: {pid}") from e
    except PermissionError as e:
        raise SourceUnavailable(f"cannot read /proc/{pid}/exe: run as root") from e
    exe = exe.removesuffix(" (deleted)")
    # The target's own file system first: in a container, the host path may be another JDK or nothing.
    for java in (Path(f"/proc/{pid}/root") / exe.lstrip("/"), Path(exe)):
        jcmd = java.parent / "jcmd"
        if jcmd.is_file() and os.access(jcmd, os.X_OK):
            return str(jcmd)
    raise SourceUnavailable(f"no jcmd next to {exe} (a JRE without jcmd?)")


def run_jcmd(pid: int, *command: str, jcmd: Optional[str] = None, timeout: float = JCMD_TIMEOUT) -> str:
    jcmd = jcmd or find_jcmd(pid)
    try:
        done = subprocess.run([jcmd, str(pid), *command], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise SourceUnavailable(f"jcmd {' '.join(command)} timed out after {timeout:.0f} s") from e
    except OSError as e:
        raise SourceUnavailable(f"cannot run {jcmd}: {e.strerror}") from e
    if done.returncode != 0:
        first = (done.stdout + done.stderr).strip().splitlines()
        raise SourceUnavailable(f"jcmd {' '.join(command)} failed: {first[-1] if first else done.returncode}")
    return done.stdout
