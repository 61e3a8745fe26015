"""What pyprof needs from the kernel, and since which Linux version: the one place for kernel differences.

Like pyprof/hotspot/layout.py for JDKs, everything that differs between kernels lives here: the BPF
features the programs in bpf/ use (with the version that brought each), the oldest kernel that has them
all, the verifier's limits the programs are written against, and the versions with the known
copy_from_user_nofault freeze (pyprof.kernel.safety decides on those). Versions are upstream ones: a
distribution kernel's own version (Debian's 6.1.192 behind the release name 6.1.0-57-amd64) is found by
`upstream_version`.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

Version = tuple[int, int, int]


@dataclass(frozen=True)
class KernelFeature:
    name: str
    since: Version                 # the first upstream release with it
    used_for: str
    present: Optional[Callable[[], bool]] = None   # a direct look where one is cheap; else the version
    required: bool = True


def _exists(path: str) -> Callable[[], bool]:
    return lambda: os.path.exists(path)


# The BPF programs of bpf/*.c and what they use. Kept in version order: the first missing one is named.
FEATURES: tuple[KernelFeature, ...] = (
    KernelFeature("uprobe PMU", (4, 17, 0), "live code-cache updates (uprobes on libjvm)",
                  _exists("/sys/bus/event_source/devices/uprobe/type"), required=False),
    KernelFeature("bpf_probe_read_user", (5, 5, 0), "copying the user stack and the JavaThread anchor"),
    KernelFeature("BTF", (5, 5, 0), "bpf_get_current_task_btf (kernel built with CONFIG_DEBUG_INFO_BTF)",
                  _exists("/sys/kernel/btf/vmlinux")),
    KernelFeature("BPF ring buffer", (5, 8, 0), "sending samples (BPF_MAP_TYPE_RINGBUF)"),
    KernelFeature("bpf_get_current_task_btf", (5, 11, 0), "the task whose user registers are read"),
    KernelFeature("bpf_task_pt_regs", (5, 15, 0),
                  "user registers of a thread sampled while in the kernel (a syscall, a page fault)"),
)

# -e wall/offcpu (bpf/wall.h) use raw tracepoints (4.17) on sched_switch and sys_exit; sched_switch has
# passed prev_state since 5.18 (commit fa2c3254d7cf): before, a thread rescheduled on its way back to user
# mode (a schedule() with preempt false while still runnable) cannot be told from one that blocks, and its
# interval ends as unmatched instead of as a preemption.
SCHED_SWITCH_PREV_STATE: Version = (5, 18, 0)

# The oldest kernel with every required feature: the minimum pyprof supports (README, `pyprof doctor`).
MIN_KERNEL: Version = max(f.since for f in FEATURES if f.required)

# Verifier limits the programs are written against (5.2 raised the program size limit from 4096
# instructions to one million verified ones; the stack copy's unrolled loop stays far below either).
VERIFIER_INSN_LIMIT = 1_000_000
BPF_STACK_BYTES = 512            # per program: why the sample record lives in the ring buffer, not on it

# Kernel headers differ too: bcc compiles against the release's own headers with __KERNEL__, where x86's
# struct pt_regs turned `cs` into a 16-bit field in 6.9 (FRED), a load the verifier refuses from a
# perf-event context (8-byte loads only). bpf/sampler.c declares the UAPI register layout itself
# (struct user_regs), which is the same on every x86_64 kernel.

# copy_from_user_nofault could freeze the machine when called from BPF in perf/NMI context: from 5.19
# (commit 0aef499f3172, with CONFIG_HARDENED_USERCOPY) until the fix d319f344561d (mainline 6.4,
# backported to 6.1.36 and 6.3.10). Half-open ranges [first, first fixed).
FREEZE_RANGES: tuple[tuple[Version, Version], ...] = (
    ((5, 19, 0), (6, 1, 36)),    # 5.19, 6.0.x, 6.1.0-6.1.35
    ((6, 2, 0), (6, 3, 10)),     # all 6.2.x, 6.3.0-6.3.9
)
FREEZE_FIX_CALLEE = "nmi_uaccess_okay"   # the call the fix added to copy_from_user_nofault


def format_version(version: Version) -> str:
    return ".".join(str(n) for n in version)


def parse_release(release: str) -> Optional[Version]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def upstream_version(release: Optional[str] = None, proc_version: Optional[str] = None,
                     version_signature: Optional[str] = None) -> tuple[Version, str]:
    """The kernel's upstream version and where it was read.

    Debian names its kernels by ABI (6.1.0-57-amd64 is 6.1.192) and writes the real version in
    /proc/version ("... Debian 6.1.192-3 ..."); Ubuntu writes it last in /proc/version_signature.
    Elsewhere the release name is the version.
    """
    release = release if release is not None else platform.release()
    proc_version = proc_version if proc_version is not None else _read("/proc/version")
    version_signature = (version_signature if version_signature is not None
                         else _read("/proc/version_signature"))
    if version_signature:
        parsed = parse_release(version_signature.split()[-1])
        if parsed:
            return parsed, "/proc/version_signature"
    # the last "Debian X.Y.Z": the compiler's own "(Debian 12.2.0-14)" comes first
    debian = re.findall(r"\bDebian (\d+\.\d+\.\d+)", proc_version)
    if debian:
        parsed = parse_release(debian[-1])
        if parsed:
            return parsed, "/proc/version (Debian)"
    return parse_release(release) or (0, 0, 0), "uname -r"


def in_freeze_range(version: Version) -> bool:
    return any(first <= version < fixed for first, fixed in FREEZE_RANGES)


def missing_features(version: Version) -> list[KernelFeature]:
    """The required features this kernel lacks: a direct look where there is one, else its version."""
    out = []
    for feature in FEATURES:
        present = feature.present() if feature.present is not None else version >= feature.since
        if not present:
            out.append(feature)
    return out


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""
