"""The optional Java agent (java-helper/): an in-JVM helper pyprof talks to over py4j.

Everything in pyprof works without it. Loaded, it supplies what the outside cannot see cheaply:
the code-cache list in-process (the DiagnosticCommand MBean, no Attach Listener when loaded at start),
JIT events from JFR (compile id -> method and inlining, deoptimizations), thread names with Java and OS
thread ids, and GC / safepoint pauses.

- jar: where the agent jar is (pyprof/java/pyprof-agent.jar, built by scripts/build-agent.sh)
- connection: the connection file the agent writes (port + token), read safely through /proc/PID/root
- client: the py4j client (127.0.0.1, token, time-outs)
- control: load (jcmd JVMTI.agent_load), unload, status
"""

from __future__ import annotations

from pyprof.agent.client import AgentClient
from pyprof.agent.control import load_agent, unload_agent
from pyprof.agent.jar import find_agent_jar

__all__ = ["AgentClient", "find_agent_jar", "load_agent", "unload_agent"]
