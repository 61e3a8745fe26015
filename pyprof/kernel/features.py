"""What this machine can do for pyprof: one check per requirement, each with the exact fix.

`pyprof doctor` prints them all; the sampler calls `require_sampling()` so that a missing feature is
one clear line (MissingKernelFeature / PermissionDenied) before any BPF is compiled.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from typing import Callable

from pyprof.errors import MissingKernelFeature, PermissionDenied
from pyprof.kernel import kheaders, requirements, safety

CAP_PERFMON, CAP_BPF, CAP_SYS_PTRACE, CAP_SYS_ADMIN = 38, 39, 19, 21


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def minimum_kernel_problem() -> str:
    """One line naming what this kernel lacks of pyprof's minimum, or "" when it has it all."""
    version, source = requirements.upstream_version()
    missing = [f for f in requirements.missing_features(version) if f.required]
    if not missing:
        return ""
    first = missing[0]
    return (f"Linux {requirements.format_version(version)} ({platform.release()}, from {source}) is older "
            f"than {requirements.format_version(requirements.MIN_KERNEL)}, the oldest pyprof supports: "
            f"it lacks {first.name} (Linux {requirements.format_version(first.since)}+, for {first.used_for})"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))


def require_minimum_kernel() -> None:
    problem = minimum_kernel_problem()
    if problem:
        raise MissingKernelFeature(problem)


def check_kernel() -> Check:
    problem = minimum_kernel_problem()
    minimum = requirements.format_version(requirements.MIN_KERNEL)
    return Check("kernel", not problem, problem or f"{platform.release()} ({platform.machine()}), "
                 f"minimum {minimum}", "" if not problem else f"pyprof needs Linux >= {minimum} on x86_64")


def check_stack_copy_safe() -> Check:
    decision = safety.running_kernel_decision()
    return Check("kernel safety (BPF reads)", decision.safe, decision.detail,
                 "" if decision.safe else safety.ALLOW_HINT)


def check_arch() -> Check:
    ok = platform.machine() == "x86_64"
    return Check("architecture", ok, platform.machine(), "" if ok else "pyprof unwinds x86_64 frames only")


def check_btf() -> Check:
    ok = os.path.exists("/sys/kernel/btf/vmlinux")
    return Check("kernel BTF", ok, "/sys/kernel/btf/vmlinux" if ok else "no /sys/kernel/btf/vmlinux",
                 "" if ok else "use a kernel built with CONFIG_DEBUG_INFO_BTF=y")


def check_uprobes() -> Check:
    ok = os.path.exists("/sys/bus/event_source/devices/uprobe/type")
    return Check("uprobes", ok, "perf uprobe PMU present" if ok else "no uprobe PMU",
                 "" if ok else "a kernel with CONFIG_UPROBE_EVENTS=y (live code-cache updates need it)",
                 required=False)


def _capabilities() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> Check:
    """What sampling needs (the capabilities of each other use: capability_checks)."""
    from pyprof.procfs import capabilities

    needed = ("CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE")
    lacking = capabilities.missing(*needed)
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    have = f"missing {', '.join(lacking)}" if lacking else ", ".join(needed) + " effective"
    return Check("privileges", not lacking, f"{who}, {have}",
                 "" if not lacking else f"run as root, or grant {', '.join(capabilities.REQUIRED)} "
                 f"(see {capabilities.DOCS})")


class _PerfEventAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_freq", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("rest", ctypes.c_uint8 * 80)]


def check_perf_events() -> Check:
    """Open (and close) a cpu-clock event on CPU 0, as the sampler will."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _PerfEventAttr(type=1, size=ctypes.sizeof(_PerfEventAttr), config=0, sample_freq=99,
                          flags=1 << 10 | 1)   # freq, disabled
    nr_perf_event_open = 298
    fd = libc.syscall(nr_perf_event_open, ctypes.byref(attr), -1, 0, -1, 0)
    if fd < 0:
        err = ctypes.get_errno()
        paranoid = _read("/proc/sys/kernel/perf_event_paranoid")
        return Check("perf events (cpu-clock)", False,
                     f"perf_event_open failed: {os.strerror(err)} (perf_event_paranoid={paranoid})",
                     "run as root or with CAP_PERFMON; the kernel needs CONFIG_PERF_EVENTS")
    os.close(fd)
    return Check("perf events (cpu-clock)", True, "software cpu-clock event opens (no PMU needed)")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return Check("bcc", False, "python module bcc not importable",
                     "apt-get install python3-bpfcc (and use a venv with --system-site-packages)")
    return Check("bcc", True, f"bcc from {os.path.dirname(bcc.__file__)}")


def check_headers() -> Check:
    s = kheaders.status()
    return Check("kernel headers (bcc)", s.ok, s.detail, s.fix)


def check_compile() -> Check:
    """Compile and load a trivial program: proves headers, clang (in libbcc) and the bpf() syscall."""
    from pyprof.errors import PyprofError
    from pyprof.kernel.bpf_loader import close_bpf, load_bpf_text

    try:
        bpf = load_bpf_text("int probe(void *ctx) { return 0; }")
        bpf.load_func("probe", 1)  # BPF_PROG_TYPE_SOCKET_FILTER: loading needs no attach point
        close_bpf(bpf)
    except PyprofError as e:
        return Check("BPF compile + load", False, str(e), getattr(e, "fix", "") or
                     "see the kernel headers and privileges lines above")
    return Check("BPF compile + load", True, "a test program compiles and loads")


CHECKS: tuple[Callable[[], Check], ...] = (
    check_arch, check_kernel, check_stack_copy_safe, check_btf, check_privileges, check_perf_events,
    check_uprobes, check_bcc, check_headers,
)


def run_all() -> list[Check]:
    out = [check() for check in CHECKS]
    if all(c.ok for c in out if c.name in ("bcc", "kernel headers (bcc)", "privileges")):
        out.append(check_compile())
    return out


def require_sampling(allow_unsafe_kernel: bool = False) -> safety.SafetyDecision:
    """Raise the one error that explains why sampling cannot run here (before compiling anything);
    else return the kernel-safety decision (unsafe only when the user allowed it)."""
    require_minimum_kernel()
    # bcc and the kernel headers are checked when a program must be compiled (pyprof.kernel.bpf_loader):
    # a start from the BPF cache needs neither, and importing bcc alone costs 65 MiB of RSS
    for check in (check_arch, check_privileges):
        result = check()
        if not result.ok:
            error = PermissionDenied if check is check_privileges else MissingKernelFeature
            raise error(f"{result.name}: {result.detail}; fix: {result.fix}")
    return safety.require_safe_kernel(allow_unsafe_kernel)


# ---- least privilege: one line per capability pyprof uses (docs/deploy/README.md) -------------------

def capability_checks() -> list[Check]:
    """Each capability pyprof uses: effective or not, what it is for, what pyprof does without it."""
    from pyprof.procfs import capabilities

    mask = capabilities.effective_mask()
    out = []
    for use in capabilities.USES:
        ok = capabilities.has(use.capability, mask)
        detail = use.purpose if ok else f"missing: {use.without}"
        fix = "" if ok else f"grant {use.capability}" + ("" if use.required else " (optional)")
        out.append(Check(use.capability, ok, detail, fix, use.required))
    return out


class _UprobeAttr(ctypes.Structure):
    """perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1): config1 is the uprobe's path."""
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
                ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64)]


_uprobes_permitted: bool | None = None


def uprobes_permitted() -> bool:
    """Whether the perf uprobe PMU accepts this process (CAP_SYS_ADMIN on 6.18; CAP_PERFMON on some
    older kernels). Asks the kernel with a uprobe on an empty path: the PMU checks the capability
    first (EACCES) and only then looks the path up (ENOENT), so nothing is ever created."""
    global _uprobes_permitted
    if _uprobes_permitted is None:
        try:
            pmu_type = int(_read("/sys/bus/event_source/devices/uprobe/type"))
        except ValueError:
            _uprobes_permitted = False
            return False
        path = ctypes.create_string_buffer(b"")
        attr = _UprobeAttr(type=pmu_type, size=ctypes.sizeof(_UprobeAttr), config1=ctypes.addressof(path),
                           flags=1)   # disabled
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.syscall(298, ctypes.byref(attr), os.getpid(), -1, -1, 0)   # perf_event_open
        if fd >= 0:
            os.close(fd)
        _uprobes_permitted = fd >= 0 or ctypes.get_errno() not in (1, 13)   # EPERM, EACCES
    return _uprobes_permitted


def raw_tracepoints_present(names: tuple[str, ...]) -> list[str]:
    """Which of the tracepoints `names` ("sched_switch", "sys_exit") a BPF raw tracepoint can attach to
    is missing: each has a `__bpf_trace_<name>` in /proc/kallsyms (names are listed even where
    kptr_restrict hides the addresses), else a `btf_trace_<name>` type in the kernel's BTF."""
    wanted = {f"__bpf_trace_{name}": name for name in names}
    found: set[str] = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                symbol = line.rstrip("\n").rpartition(" ")[2]
                if symbol in wanted:
                    found.add(wanted[symbol])
    except OSError:
        pass
    missing = [name for name in names if name not in found]
    if missing and os.path.exists("/sys/kernel/btf/vmlinux"):
        try:
            with open("/sys/kernel/btf/vmlinux", "rb") as f:
                btf = f.read(64 << 20)
        except OSError:
            return missing
        missing = [name for name in missing if f"btf_trace_{name}\0".encode() not in btf]
    return missing
