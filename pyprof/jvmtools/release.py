"""The feature release of a JDK installation, from the `release` file at its home (JAVA_VERSION="11.0.13").

For what must be known before a JVM runs (`pyprof record --agent`), or without reading a running one
(the jcmd source); a running JVM's version comes from its VMStructs (pyprof.hotspot.layout.read_version).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_RELEASE_BYTES = 65536
_JAVA_VERSION = re.compile(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', re.M)


def jdk_major(tool: Path) -> int:
    """The JDK major of a tool in a JDK's bin/ (java, jcmd): 11, 17, ...; "1.8.0_392" is 8. 0 when the
    home has no readable release file. `tool` is not resolved: pass a real path."""
    try:
        with open(tool.parent.parent / "release", errors="replace") as f:
            text = f.read(MAX_RELEASE_BYTES)
    except OSError:
        return 0
    m = _JAVA_VERSION.search(text)
    if not m:
        return 0
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def target_jdk_major(pid: int) -> int:
    """The JDK major of the java running as `pid`, from its executable's home (through the process's own
    root first: in a container the host path may be another JDK); 0 when it cannot be told."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return 0
    for java in (Path(f"/proc/{pid}/root") / exe.lstrip("/"), Path(exe)):
        major = jdk_major(java)
        if major:
            return major
    return 0
