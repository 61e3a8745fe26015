"""Instruction patterns the unwinder recognises at the top frame (pyprof.sampling.unwind)."""

from __future__ import annotations

import pytest

from pyprof.sampling.unwind import epilogue_slot

RET = b"\xc3"
POP_RBP = b"\x5d"
POLL = b"\x49\x3b\xa7\x28\x04\x00\x00"      # cmp rsp, [r15+0x428]  (return safepoint poll)
JA = b"\x0f\x87\x10\x00\x00\x00"             # ja slow path


@pytest.mark.parametrize("code, slot", [
    (RET + b"\x90" * 15, 0),                             # at `ret`: the return address is at [sp]
    (JA + RET + b"\x90" * 9, 0),                         # at `ja` of the poll
    (POLL + JA + RET + b"\x90" * 2, 0),                  # at the poll's `cmp`
    (POP_RBP + RET + b"\x90" * 14, 1),                   # at `pop rbp` without a poll
    (POP_RBP + POLL + JA + RET + b"\x90", 1),            # at `pop rbp` before the poll
    (b"\x48\x83\xc4\x20" + POP_RBP + RET + b"\x90" * 10, None),   # at `add rsp`: the frame is whole
    (b"\x8b\x45\x10" + b"\x90" * 13, None),              # ordinary body code
])
def test_epilogue_slot(code: bytes, slot) -> None:
    # GIVEN the bytes at a top frame's pc  WHEN classified  THEN the return address slot is known
    assert epilogue_slot(code) == slot
