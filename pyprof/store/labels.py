"""The labels that name one profiled JVM, on every window the daemon writes, pushes or exports.

One definition for the store (its index columns), the exporters (Pyroscope labels, OTLP resource
attributes) and discovery (which fills them in), so the three cannot disagree on a name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WindowLabels:
    service_name: str
    pid: int                 # the host's pid (the one /proc and BPF see), not the container's
    container_id: str = ""   # 64 hex digits, "" on the host
    jdk: str = ""            # the JVM's own release string, e.g. "21.0.8+9-LTS"
    host: str = ""           # the machine the daemon runs on

    def items(self) -> list[tuple[str, str]]:
        """(name, value) of every label that is set, in a fixed order (pid as decimal text)."""
        pairs = [("service_name", self.service_name), ("pid", str(self.pid)),
                 ("container_id", self.container_id), ("jdk", self.jdk), ("host", self.host)]
        return [(name, value) for name, value in pairs if value]


LABEL_NAMES = ("service_name", "pid", "container_id", "jdk", "host")
