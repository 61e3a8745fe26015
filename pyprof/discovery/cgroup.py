"""The container a process runs in, from /proc/PID/cgroup (cgroup v1 and v2).

A container id is 64 hex digits in the cgroup path, as the runtimes name them:
- docker:      /docker/<id>, /system.slice/docker-<id>.scope
- containerd:  /system.slice/containerd.service/...cri-containerd-<id>.scope, /cri-containerd-<id>
- cri-o:       /crio-<id>.scope, /crio-conmon-<id>.scope (the monitor, not a container: skipped)
- kubepods:    /kubepods/<qos>/pod<uid>/<id>, /kubepods.slice/.../cri-containerd-<id>.scope
- podman:      /libpod-<id>.scope
The last id in a path wins (nested cgroups name the innermost container last); a v2 line (`0::`) is
preferred when both kinds name one.
"""

from __future__ import annotations

import re
from typing import Optional

MAX_CGROUP_BYTES = 64 * 1024
_ID = r"([0-9a-f]{64})"
_PATTERNS = (
    re.compile(rf"(?:docker|cri-containerd|crio|libpod)-{_ID}\.scope"),
    re.compile(rf"/(?:docker|cri-containerd|crio|libpod|kubepods/.+)/{_ID}(?:/|$)"),
    re.compile(rf"/{_ID}(?:/|$)"),
)


def container_id_from_cgroup(text: str) -> str:
    """The container id named by /proc/PID/cgroup's text, or "" (a host process)."""
    v2: Optional[str] = None
    v1: Optional[str] = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        _controllers, _, path = rest.partition(":")
        found = _id_in_path(path)
        if found is None:
            continue
        if hierarchy == "0":
            v2 = found
        elif v1 is None:
            v1 = found
    return v2 or v1 or ""


def _id_in_path(path: str) -> Optional[str]:
    if "crio-conmon-" in path:
        return None
    for pattern in _PATTERNS:
        matches = pattern.findall(path)
        if matches:
            return matches[-1]
    return None


def read_container_id(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            text = f.read(MAX_CGROUP_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""
    return container_id_from_cgroup(text)
