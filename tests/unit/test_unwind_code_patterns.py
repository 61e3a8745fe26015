"""Instruction patterns the unwinder recognises at the top frame (pyprof.sampling.unwind)."""

from __future__ import annotations

import pytest

from pyprof.sampling.unwind import epilogue_slot, is_stack_pop

RET = b"\xc3"
POP_RBP = b"\x5d"
POLL = b"\x49\x3b\xa7\x28\x04\x00\x00"      # cmp rsp, [r15+0x428]  (return safepoint poll, JDK 17/21)
POLL_25 = b"\x49\x3b\x67\x28"                  # cmp rsp, [r15+0x28]   (JDK 25: disp8)
JA = b"\x0f\x87\x10\x00\x00\x00"             # ja slow path
POLL_11 = b"\x4d\x8b\x97\x08\x01\x00\x00"   # mov r10, [r15+0x108]  (JDK 11: thread-local polling page)
TEST_11 = b"\x41\x85\x02"                      # test [r10], eax
JMP = b"\xe9\xe9\x68\x62\xf8"                  # jmp rel32 (a tail jump to a stub)


@pytest.mark.parametrize("code, slot", [
    (RET + b"\x90" * 15, 0),                             # at `ret`: the return address is at [sp]
    (JA + RET + b"\x90" * 9, 0),                         # at `ja` of the poll
    (POLL + JA + RET + b"\x90" * 2, 0),                  # at the poll's `cmp`
    (POP_RBP + RET + b"\x90" * 14, 1),                   # at `pop rbp` without a poll
    (POP_RBP + POLL + JA + RET + b"\x90", 1),            # at `pop rbp` before the poll
    (POLL_25 + JA + RET + b"\x90" * 5, 0),               # JDK 25: at the poll's `cmp` (disp8)
    (POP_RBP + POLL_25 + JA + RET + b"\x90" * 4, 1),     # JDK 25: at `pop rbp` before the poll
    (POLL_11 + TEST_11 + RET + b"\x90" * 5, 0),          # JDK 11: at the poll's load of the page
    (TEST_11 + RET + b"\x90" * 12, 0),                   # JDK 11: at the poll's `test`
    (POP_RBP + POLL_11 + TEST_11 + RET + b"\x90" * 4, 1),  # JDK 11: at `pop rbp` before the poll
    (POP_RBP + JMP + b"\x90" * 10, 1),                   # at `pop rbp` before a tail jump
    (POP_RBP + POLL_25 + b"\x90" * 11, None),             # a poll without its `ja; ret`: not an epilogue
    (b"\x48\x83\xc4\x20" + POP_RBP + RET + b"\x90" * 10, None),   # at `add rsp`: the frame is whole
    (b"\x8b\x45\x10" + b"\x90" * 13, None),              # ordinary body code
])
def test_epilogue_slot(code: bytes, slot) -> None:
    # GIVEN the bytes at a top frame's pc  WHEN classified  THEN the return address slot is known
    assert epilogue_slot(code) == slot


@pytest.mark.parametrize("code, pushed", [
    (b"\x48\x8f\x44\x24\x20", True),       # pop qword [rsp+0x20]: C2's spill move, after its push
    (b"\x8f\x44\x24\x20", True),           # the same without REX.W
    (b"\x48\x8f\x84\x24\x00\x01\x00\x00", True),   # [rsp+disp32]
    (b"\x48\x8f\x04\x24", True),           # [rsp]
    (b"\x48\xff\x34\x24", False),          # push qword [rsp]: not pushed yet
    (b"\x48\x8f\x45\x20", False),          # pop [rbp+0x20]: not the stack pointer
    (b"\x5d\xc3", False),
])
def test_stack_pop(code: bytes, pushed: bool) -> None:
    # GIVEN the bytes at a top frame's pc  THEN a spill word is on the stack only at the `pop [rsp+d]`
    assert is_stack_pop(code + b"\x90" * 8) == pushed
