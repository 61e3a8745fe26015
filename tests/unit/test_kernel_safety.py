"""The kernel-safety decision and the kernel minimum, on recorded kernel code and real version strings.

The fixed case is real: tests/unit/data/kernel/ holds copy_from_user_nofault as this machine's 6.18
kernel runs it (read through BPF: it has no /proc/kcore; `python -m pyprof.kernel.safety --record` makes
such a file). No unfixed kernel can be had here (Debian's archive keeps only current kernels), so the
unfixed function is built from the fixed one the way the compiler builds it without the fix: the fix
d319f344561d added `if (!nmi_uaccess_okay()) return ret;`, which compiles to the `call nmi_uaccess_okay`,
a `test al, al` and a `je` to the common return; the unfixed function is the same code without those
three instructions (9 bytes), the displacement of the later call corrected for the shift so that it
still reaches its own target.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pyprof.errors import MissingKernelFeature
from pyprof.kernel import ktext, requirements, safety

DATA = Path(__file__).parent / "data" / "kernel"
FIXED_6_18 = DATA / "copy_from_user_nofault-6.18.44-fc.json"
DEBIAN_6_1 = ("Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14"
              "+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian "
              "6.1.192-3 (2026-10-20)")


def recorded(path: Path = FIXED_6_18) -> ktext.KernelFunction:
    raw = json.loads(path.read_text())
    return ktext.KernelFunction(raw["function"], int(raw["address"], 16), bytes.fromhex(raw["code"]),
                                {k: int(v, 16) for k, v in raw["symbols"].items()}, str(path.name))


def call_target(function: ktext.KernelFunction, offset: int) -> int:
    assert function.code[offset] == 0xE8
    displacement, = struct.unpack_from("<i", function.code, offset + 1)
    return function.address + offset + 5 + displacement


def without_fix(fixed: ktext.KernelFunction) -> ktext.KernelFunction:
    """The pre-fix function: the call to nmi_uaccess_okay, its test and its branch removed."""
    call_at = safety.calls_into(fixed)[0]
    check = fixed.code[call_at:call_at + 9]
    assert check[5:7] == b"\x84\xc0" and check[7] == 0x74, check.hex()   # test al,al; je rel8
    code = bytearray(fixed.code[:call_at] + fixed.code[call_at + 9:])
    for offset in range(call_at, len(code) - 4):      # later calls keep their targets
        if code[offset] == 0xE8 and fixed.code[offset + 9] == 0xE8:
            displacement, = struct.unpack_from("<i", code, offset + 1)
            struct.pack_into("<i", code, offset + 1, displacement + 9)
    return ktext.KernelFunction(fixed.name, fixed.address, bytes(code), fixed.symbols, "constructed")


def test_recorded_fixed_function_calls_nmi_uaccess_okay() -> None:
    # GIVEN copy_from_user_nofault as this machine's kernel runs it
    fixed = recorded()
    # WHEN its calls are searched THEN exactly one reaches nmi_uaccess_okay
    calls = safety.calls_into(fixed)
    assert len(calls) == 1
    assert call_target(fixed, calls[0]) == fixed.symbols["nmi_uaccess_okay"]


def test_an_affected_version_with_the_fix_backported_is_safe_by_its_code() -> None:
    # GIVEN a kernel whose version is in the affected range (6.1.27) but whose code has the fix
    decision = safety.decide((6, 1, 27), recorded)
    # THEN the code decides: safe
    assert decision.safe and decision.basis == "code", decision
    assert "backported" in decision.detail


def test_an_affected_version_without_the_fix_is_unsafe() -> None:
    # GIVEN the same function built without the fix (see the module docstring)
    fixed = recorded()
    unfixed = without_fix(fixed)
    other_calls = [o for o in range(len(fixed.code) - 4) if fixed.code[o] == 0xE8 and o not in
                   safety.calls_into(fixed)]
    assert [call_target(unfixed, o - 9) for o in other_calls] == [call_target(fixed, o) for o in other_calls]
    # WHEN the decision reads it on a 6.1.27 kernel
    decision = safety.decide((6, 1, 27), lambda: unfixed)
    # THEN it is unsafe, by the code, and says what is missing
    assert not decision.safe and decision.basis == "code", decision
    assert "does not call nmi_uaccess_okay" in decision.detail
    assert safety.calls_into(unfixed) == []


def test_a_call_to_another_function_is_not_the_fix() -> None:
    # GIVEN the fixed bytes, but nmi_uaccess_okay (and its padding) elsewhere in the kernel
    fixed = recorded()
    moved = {k: v + 0x1000 for k, v in fixed.symbols.items()}
    decision = safety.decide((6, 2, 5), lambda: ktext.KernelFunction(fixed.name, fixed.address, fixed.code,
                                                                      moved, "moved"))
    # THEN the call no longer counts
    assert not decision.safe and decision.basis == "code"


def test_a_kernel_without_the_symbol_or_unreadable_code_is_unsafe() -> None:
    fixed = recorded()
    no_symbol = ktext.KernelFunction(fixed.name, fixed.address, fixed.code, {}, "no symbol")
    assert not safety.decide((6, 0, 9), lambda: no_symbol).safe

    def unreadable() -> ktext.KernelFunction:
        raise ktext.KernelTextUnavailable("no /proc/kcore")

    decision = safety.decide((6, 3, 9), unreadable)
    assert not decision.safe and decision.basis == "unverifiable" and "no /proc/kcore" in decision.detail


@pytest.mark.parametrize("version, affected", [
    ((5, 15, 140), False), ((5, 18, 19), False), ((5, 19, 0), True), ((6, 0, 19), True), ((6, 1, 0), True),
    ((6, 1, 35), True), ((6, 1, 36), False), ((6, 1, 192), False), ((6, 2, 16), True), ((6, 3, 9), True),
    ((6, 3, 10), False), ((6, 4, 0), False), ((6, 12, 118), False), ((6, 18, 44), False),
])
def test_affected_versions(version, affected) -> None:
    def must_not_read() -> ktext.KernelFunction:
        raise AssertionError("an unaffected version needs no code")

    reader = recorded if affected else must_not_read
    assert requirements.in_freeze_range(version) is affected
    decision = safety.decide(version, reader)
    assert decision.basis == ("code" if affected else "version")


def test_debian_and_ubuntu_kernels_are_judged_by_their_upstream_version() -> None:
    # Debian's release name 6.1.0-57-amd64 is 6.1.192 (fixed); by the name alone it would look affected
    assert requirements.upstream_version("6.1.0-57-amd64", DEBIAN_6_1, "") == \
        ((6, 1, 192), "/proc/version (Debian)")
    assert requirements.upstream_version("5.15.0-91-generic", "Linux version 5.15.0-91-generic",
                                         "Ubuntu 5.15.0-91.101-generic 5.15.131")[0] == (5, 15, 131)
    assert requirements.upstream_version("6.18.44-fc-v657", "Linux version 6.18.44-fc-v657", "") == \
        ((6, 18, 44), "uname -r")


def test_refusal_is_exit_7_unless_allowed() -> None:
    unsafe = safety.SafetyDecision(False, "code", "Linux 6.1.27: copy_from_user_nofault does not call ...")
    with pytest.raises(MissingKernelFeature) as refused:
        safety.require_safe_kernel(False, unsafe)
    assert refused.value.exit_code == 7 and "--allow-unsafe-kernel" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert safety.require_safe_kernel(True, unsafe) is unsafe


def test_the_minimum_kernel_names_the_first_missing_feature() -> None:
    assert requirements.MIN_KERNEL == (5, 15, 0)
    names = [f.name for f in requirements.missing_features((5, 10, 209)) if f.required]
    assert names[0] == "bpf_get_current_task_btf" and "bpf_task_pt_regs" in names
    assert "BPF ring buffer" in [f.name for f in requirements.missing_features((5, 4, 0))]
    assert not [f for f in requirements.missing_features((6, 18, 44)) if f.required]


def test_kcore_segments_and_kallsyms_bounds(tmp_path: Path) -> None:
    # GIVEN an ELF core with one PT_LOAD segment at 0xffffffff81000000 and a kallsyms listing
    text = bytes(range(256)) * 4
    vaddr, data_offset = 0xFFFFFFFF81000000, 0x1000
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 32, 64)
    struct.pack_into("<HH", header, 54, 56, 1)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, data_offset, vaddr, 0, len(text), len(text), 0x1000)
    core = tmp_path / "kcore"
    core.write_bytes(bytes(header) + phdr + bytes(data_offset - 64 - len(phdr)) + text)
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000100 T copy_from_user_nofault\nffffffff81000100 t alias\n"
                        "ffffffff810001b0 T __pfx_copy_to_user_nofault\n")
    # THEN the bytes at an address come from the segment, bounded reads past it are refused
    assert ktext.read_kcore(vaddr + 0x100, 16, core) == text[0x100:0x110]
    with pytest.raises(ktext.KernelTextUnavailable):
        ktext.read_kcore(vaddr + len(text) - 8, 16, core)
    # AND kallsyms gives the function and the next distinct address (its end)
    symbols = ktext.symbol_addresses(["copy_from_user_nofault"], kallsyms)
    assert symbols == {"copy_from_user_nofault": 0xFFFFFFFF81000100,
                       "next:copy_from_user_nofault": 0xFFFFFFFF810001B0}
    kallsyms.write_text("0000000000000000 T copy_from_user_nofault\n")
    with pytest.raises(ktext.KernelTextUnavailable):
        ktext.symbol_addresses(["copy_from_user_nofault"], kallsyms)
