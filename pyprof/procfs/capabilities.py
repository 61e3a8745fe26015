"""Linux capabilities: which ones pyprof uses, which this process has, and which one a refusal means.

pyprof runs as root or with a small capability set (docs/deploy/README.md). Measured on Linux 6.18,
for a JVM of another user:

- CAP_BPF + CAP_PERFMON: load the BPF programs, open cpu-clock events on every CPU, attach them; also
  /proc/PID/maps of any process (CAP_PERFMON passes the kernel's ptrace-read check for maps).
- CAP_SYS_PTRACE: /proc/PID/root (the JVM's files, a container's JDK) and the ptrace check of
  /proc/PID/mem.
- CAP_DAC_READ_SEARCH: /proc/PID/mem is mode 0600, owned by the JVM's user: opening it as another user
  needs a DAC bypass before the ptrace check is even made (CAP_DAC_OVERRIDE works too, and grants more).
- optional CAP_SYSLOG: /proc/kallsyms shows real addresses (kernel frames get names) when
  perf_event_paranoid > 1.
- optional CAP_CHECKPOINT_RESTORE: /proc/PID/map_files (the file really mapped, even deleted or
  replaced); without it files are opened through /proc/PID/root.
- optional CAP_SYS_ADMIN: the perf uprobe PMU (live code-cache updates by uprobes on libjvm) accepts
  only CAP_SYS_ADMIN on this kernel; without it new JIT code is found through the segment map.

Each capability is also satisfied by a broader one (CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON,
CAP_DAC_OVERRIDE covers CAP_DAC_READ_SEARCH), as the kernel's own checks accept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from pyprof.errors import PermissionDenied

NUMBERS = {
    "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21,
    "CAP_SYSLOG": 34, "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}
# what else the kernel accepts in place of a capability
BROADER = {
    "CAP_BPF": ("CAP_SYS_ADMIN",), "CAP_PERFMON": ("CAP_SYS_ADMIN",),
    "CAP_DAC_READ_SEARCH": ("CAP_DAC_OVERRIDE",), "CAP_CHECKPOINT_RESTORE": ("CAP_SYS_ADMIN",),
}
DOCS = "docs/deploy/README.md"


@dataclass(frozen=True)
class Use:
    capability: str
    required: bool
    purpose: str
    without: str      # what pyprof does without it


USES: tuple[Use, ...] = (
    Use("CAP_BPF", True, "load the BPF sampler and its maps", "no profiling"),
    Use("CAP_PERFMON", True, "cpu-clock perf events on every CPU, BPF tracing programs, /proc/PID/maps",
        "no profiling"),
    Use("CAP_SYS_PTRACE", True, "read JVMs of other users: /proc/PID/root, /proc/PID/mem",
        "only JVMs of this user (with no more capabilities than pyprof)"),
    Use("CAP_DAC_READ_SEARCH", True, "open /proc/PID/mem (mode 0600) of JVMs of other users",
        "only JVMs of this user"),
    Use("CAP_SYSLOG", False, "kernel frame names (/proc/kallsyms addresses)",
        "kernel frames shown as [kernel 0x...]"),
    Use("CAP_CHECKPOINT_RESTORE", False, "/proc/PID/map_files: the file really mapped, even deleted",
        "files opened through /proc/PID/root (a libjvm replaced on disk is not found)"),
    Use("CAP_SYS_ADMIN", False, "uprobes on libjvm: live code-cache updates",
        "new JIT code found through the JVM's segment map"),
)
REQUIRED = tuple(use.capability for use in USES if use.required)
# what docs/deploy's systemd unit and DaemonSet grant: the required ones and the two cheap optional
# ones; not CAP_SYS_ADMIN (near-root, for uprobes only: see docs/deploy/README.md)
DEPLOYED = (*REQUIRED, "CAP_SYSLOG", "CAP_CHECKPOINT_RESTORE")


def effective_mask(status_path: str = "/proc/self/status") -> int:
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def has(capability: str, mask: Optional[int] = None) -> bool:
    """True when `capability` (or a broader one the kernel accepts instead) is effective."""
    mask = effective_mask() if mask is None else mask
    return any(mask >> NUMBERS[name] & 1 for name in (capability, *BROADER.get(capability, ())))


def missing(*capabilities: str, mask: Optional[int] = None) -> list[str]:
    mask = effective_mask() if mask is None else mask
    return [name for name in capabilities if not has(name, mask)]


def denied(what: str, *capabilities: str) -> PermissionDenied:
    """The error for a refused operation that `capabilities` allow: names the ones this process lacks,
    or, when it has them all, says that something else refused (an LSM, seccomp, a non-dumpable target)."""
    lacking = missing(*capabilities)
    if lacking:
        return PermissionDenied(f"{what}: permission denied: missing {' and '.join(lacking)} "
                                f"(run as root, or grant {', '.join(REQUIRED)}: see {DOCS})")
    return PermissionDenied(f"{what}: permission denied although {' and '.join(capabilities)} "
                            "are effective (an LSM such as AppArmor or SELinux, seccomp, or a target that "
                            "is not dumpable?)")


def other_owner(pid: int) -> bool:
    """True when /proc/PID/mem belongs to another user than ours (opening it then needs a DAC bypass)."""
    try:
        return os.stat(f"/proc/{pid}/mem").st_uid != os.geteuid()
    except OSError:   # gone: the caller's own open says so (NoSuchProcess), not a capability
        return False


def memory_denied(pid: int) -> PermissionDenied:
    needed = ("CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH") if other_owner(pid) else ("CAP_SYS_PTRACE",)
    return denied(f"cannot read memory of process {pid}", *needed)


def require(*capabilities: str, why: str) -> None:
    """PermissionDenied naming every one of `capabilities` this process lacks (before anything starts)."""
    lacking = missing(*capabilities)
    if lacking:
        raise PermissionDenied(f"{why} needs {', '.join(capabilities)}: missing {', '.join(lacking)} "
                               f"(run as root or grant them; see {DOCS})")


def require_target_access(pid: int) -> None:
    """Before profiling `pid`: the capabilities reading its memory needs, when it is another user's."""
    if other_owner(pid):
        require("CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH",
                why=f"reading process {pid} (owned by another user)")
