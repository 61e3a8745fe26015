"""Where the agent jar is, and how a `java` command line gets it (`pyprof record --agent`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from pyprof.errors import SourceUnavailable, UnsupportedJvm, UsageError
from pyprof.jvmtools.release import jdk_major

JAR_NAME = "pyprof-agent.jar"
ENV_JAR = "PYPROF_AGENT_JAR"
# The agent is Java 17 bytecode and streams JFR events (jdk.jfr.consumer.RecordingStream, JDK 14+).
AGENT_MIN_JDK = 17


def find_agent_jar() -> Path:
    """$PYPROF_AGENT_JAR, else the jar shipped in the package (pyprof/java/pyprof-agent.jar)."""
    override = os.environ.get(ENV_JAR)
    if override:
        path = Path(override)
        if not path.is_file():
            raise SourceUnavailable(f"{ENV_JAR}={override}: no such file")
        return path.resolve()
    packaged = Path(__file__).resolve().parent.parent / "java" / JAR_NAME
    if packaged.is_file():
        return packaged
    raise SourceUnavailable(f"the agent jar is not built ({packaged}): run scripts/build-agent.sh "
                            f"(make setup does) or set {ENV_JAR}")


def agent_command(command: Sequence[str], jar: Optional[Path] = None, options: str = "") -> tuple[str, ...]:
    """`java ARGS` -> `java -javaagent:JAR[=OPTIONS] ARGS` (`pyprof record --agent -- java ...`)."""
    cmd = list(command)
    if not cmd or os.path.basename(cmd[0]) != "java":
        raise UsageError("--agent needs the command to be `java ...` (for a launcher script, add "
                         f"-javaagent:{jar or find_agent_jar()} to its JVM options yourself)")
    major = java_major(cmd[0])
    if 0 < major < AGENT_MIN_JDK:
        # -javaagent with a class file it cannot read aborts the JVM at start: refuse before starting it
        raise UnsupportedJvm(f"the pyprof agent needs JDK {AGENT_MIN_JDK} or later; {cmd[0]} is JDK {major}: "
                             "record without --agent (the attach-free reader works there)")
    flag = f"-javaagent:{jar or find_agent_jar()}" + (f"={options}" if options else "")
    return (cmd[0], flag, *cmd[1:])


def java_major(java: str) -> int:
    """The JDK major of a `java` launcher (found on $PATH, symlinks resolved); 0 when it cannot be told."""
    path = shutil.which(java)
    return jdk_major(Path(os.path.realpath(path))) if path is not None else 0
