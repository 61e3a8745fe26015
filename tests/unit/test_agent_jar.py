"""Finding the agent jar, putting it on a java command line, and small pieces of the agent's control."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from pyprof.agent.control import _major
from pyprof.agent.jar import agent_command, find_agent_jar
from pyprof.errors import SourceUnavailable, UsageError

JAR = Path("/opt/x/pyprof-agent.jar")


def test_java_gets_the_agent_right_after_the_launcher():
    cmd = agent_command(("/usr/bin/java", "-Xmx1g", "-jar", "app.jar"), jar=JAR)
    assert cmd == ("/usr/bin/java", f"-javaagent:{JAR}", "-Xmx1g", "-jar", "app.jar")


def test_agent_options_are_appended():
    assert agent_command(("java", "Main"), jar=JAR, options="jfr=false")[1] == f"-javaagent:{JAR}=jfr=false"


@pytest.mark.parametrize("command", [("./run.sh",), ("mvn", "exec:java"), ()])
def test_a_command_that_is_not_java_is_a_usage_error(command):
    with pytest.raises(UsageError, match="--agent needs the command to be `java"):
        agent_command(command, jar=JAR)


def test_the_environment_override_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("PYPROF_AGENT_JAR", str(tmp_path / "missing.jar"))
    with pytest.raises(SourceUnavailable, match="no such file"):
        find_agent_jar()
    real = tmp_path / "a.jar"
    real.write_bytes(b"PK")
    monkeypatch.setenv("PYPROF_AGENT_JAR", str(real))
    assert find_agent_jar() == real.resolve()


def test_the_packaged_jar_is_a_self_contained_agent(monkeypatch):
    # GIVEN the jar `make setup` (scripts/build-agent.sh) put into the package
    monkeypatch.delenv("PYPROF_AGENT_JAR", raising=False)
    jar = find_agent_jar()
    assert jar.name == "pyprof-agent.jar" and jar.parent.name == "java"
    with zipfile.ZipFile(jar) as z:
        names = set(z.namelist())
        manifest = z.read("META-INF/MANIFEST.MF").decode()
    # THEN the JVM finds the agent class, and py4j and the agent proper sit apart from the class path
    assert "Premain-Class: pyprof.agent.boot.AgentMain" in manifest
    assert "Agent-Class: pyprof.agent.boot.AgentMain" in manifest
    assert "pyprof/agent/boot/AgentMain.class" in names
    assert "inner/py4j/GatewayServer.class" in names and "inner/pyprof/agent/impl/Agent.class" in names
    assert not any(n.startswith("py4j/") for n in names)
    # AND it is Java 17 bytecode (class file major 61), so JDK 17, 21 and 25 all load it
    with zipfile.ZipFile(jar) as z:
        header = z.read("pyprof/agent/boot/AgentMain.class")[:8]
    assert header[:4] == b"\xca\xfe\xba\xbe" and int.from_bytes(header[6:8], "big") == 61


@pytest.mark.parametrize("version, major", [("17.0.15", 17), ("21.0.8", 21), ("25", 25), ("25-ea", 25),
                                            ("", 0), ("weird", 0)])
def test_jdk_major_from_java_version(version, major):
    assert _major(version) == major

