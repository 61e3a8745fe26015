"""The kernel-safety decision: may pyprof read user memory from BPF on a perf event on this kernel?

Some kernels freeze doing it (copy_from_user_nofault took a lock from NMI context and lacked the
nmi_uaccess_okay() check; see pyprof.kernel.requirements.FREEZE_RANGES). The decision goes by version
first and then by the code itself, because distributions backport the fix under an old version:

1. an upstream version outside the affected ranges is safe;
2. inside them, the running kernel's copy_from_user_nofault is read (kallsyms + /proc/kcore, or BPF
   where there is no kcore) and searched for a `call rel32` (E8) whose target is nmi_uaccess_okay (or
   its __pfx_ padding, where call-depth tracking puts the call thunk): found means the fix is there;
3. not found, or the code cannot be read, is unsafe: sampling refuses unless the user allows it
   (`--allow-unsafe-kernel`).

`decide()` is pure (tests feed it recorded code); `running_kernel_decision()` looks at this machine.
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass
from typing import Callable, Optional

from pyprof.errors import MissingKernelFeature
from pyprof.kernel import ktext
from pyprof.kernel.requirements import (
    FREEZE_FIX_CALLEE,
    Version,
    format_version,
    in_freeze_range,
    upstream_version,
)

CHECKED_FUNCTION = "copy_from_user_nofault"
FIX_TARGETS = (FREEZE_FIX_CALLEE, f"__pfx_{FREEZE_FIX_CALLEE}")
_CALL_REL32 = 0xE8
ALLOW_HINT = ("upgrade the kernel (fixed in 6.1.36, 6.3.10, 6.4), or pass --allow-unsafe-kernel to sample "
              "anyway")


@dataclass(frozen=True)
class SafetyDecision:
    safe: bool
    basis: str        # "version", "code" or "unverifiable"
    detail: str       # one line: the version and what was found


def calls_into(function: ktext.KernelFunction, targets: tuple[str, ...] = FIX_TARGETS) -> list[int]:
    """Offsets of every `call rel32` in the function's code whose target is one of `targets`.

    A byte scan, not a disassembly: an E8 inside another instruction would have to be followed by the
    exact displacement to nmi_uaccess_okay to count, which is not a risk worth a decoder.
    """
    wanted = {function.symbols[name] for name in targets if name in function.symbols}
    code = function.code
    hits = []
    for offset in range(max(0, len(code) - 4)):
        if code[offset] != _CALL_REL32:
            continue
        displacement, = struct.unpack_from("<i", code, offset + 1)
        if (function.address + offset + 5 + displacement) & 0xFFFFFFFFFFFFFFFF in wanted:
            hits.append(offset)
    return hits


def decide(version: Version, read_function: Callable[[], ktext.KernelFunction],
           version_source: str = "uname -r", machine: str = "x86_64") -> SafetyDecision:
    """The decision for a kernel of `version` whose copy_from_user_nofault `read_function` returns."""
    shown = f"Linux {format_version(version)} (from {version_source})"
    if not in_freeze_range(version):
        return SafetyDecision(True, "version", f"{shown} is outside the affected versions")
    if machine != "x86_64":
        return SafetyDecision(False, "unverifiable",
                              f"{shown} is in the affected versions and its code is only checked on x86_64")
    try:
        function = read_function()
    except ktext.KernelTextUnavailable as e:
        return SafetyDecision(False, "unverifiable",
                              f"{shown} is in the affected versions and the fix cannot be verified: {e}")
    if FREEZE_FIX_CALLEE not in function.symbols:
        return SafetyDecision(False, "code", f"{shown} is in the affected versions and has no "
                              f"{FREEZE_FIX_CALLEE} symbol: the fix is missing")
    calls = calls_into(function)
    if calls:
        return SafetyDecision(True, "code", f"{shown} is in the affected versions but its {CHECKED_FUNCTION} "
                              f"calls {FREEZE_FIX_CALLEE} (at +{calls[0]:#x}): the fix is backported")
    return SafetyDecision(False, "code", f"{shown}: {CHECKED_FUNCTION} does not call {FREEZE_FIX_CALLEE} "
                          f"(the fix d319f344561d is missing): BPF user-memory reads can freeze it")


def read_running_function() -> ktext.KernelFunction:
    return ktext.read_function(CHECKED_FUNCTION, FIX_TARGETS)


def running_kernel_decision() -> SafetyDecision:
    version, source = upstream_version()
    return decide(version, read_running_function, source, platform.machine())


def code_evidence() -> str:
    """What the code check finds on this kernel whatever its version (for `pyprof doctor`, the matrix)."""
    try:
        function = read_running_function()
    except ktext.KernelTextUnavailable as e:
        return f"code unreadable: {e}"
    calls = calls_into(function)
    return (f"{CHECKED_FUNCTION} calls {FREEZE_FIX_CALLEE} at +{calls[0]:#x} (read through {function.source})"
            if calls else f"{CHECKED_FUNCTION} has no call to {FREEZE_FIX_CALLEE} (read through "
            f"{function.source})")


def require_safe_kernel(allow_unsafe: bool = False,
                        decision: Optional[SafetyDecision] = None) -> SafetyDecision:
    """Refuse (MissingKernelFeature, exit 7) on an unsafe kernel unless the user allowed it."""
    decision = decision or running_kernel_decision()
    if not decision.safe and not allow_unsafe:
        raise MissingKernelFeature(f"unsafe kernel for BPF user-memory reads: {decision.detail}; "
                                   f"{ALLOW_HINT}")
    return decision


def main() -> int:
    """`python -m pyprof.kernel.safety [--record FILE]`: the decision here, and the code it looked at."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--record", metavar="FILE", help="write copy_from_user_nofault's bytes as JSON")
    args = parser.parse_args()
    decision = running_kernel_decision()
    print(json.dumps({"safe": decision.safe, "basis": decision.basis, "detail": decision.detail,
                      "code": code_evidence()}))
    if args.record:
        function = read_running_function()
        with open(args.record, "w") as f:
            json.dump({"release": platform.release(), "function": function.name,
                       "address": hex(function.address), "code": function.code.hex(),
                       "symbols": {k: hex(v) for k, v in function.symbols.items()},
                       "read_through": function.source}, f, indent=1)
    return 0 if decision.safe else 7


if __name__ == "__main__":
    raise SystemExit(main())
