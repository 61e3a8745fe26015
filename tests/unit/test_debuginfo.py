"""Decoding of HotSpot's compressed debug-info streams (pyprof.hotspot.debuginfo)."""

from __future__ import annotations

import pytest

from pyprof.errors import MemoryReadError
from pyprof.hotspot.debuginfo import nearest_scope, parse_line_table, read_unsigned5


def encode_unsigned5(value: int, excludes_zero: bool) -> bytes:
    """HotSpot's writer (CompressedWriteStream::write_int_mb / UNSIGNED5::write_uint), for the tests."""
    x = 1 if excludes_zero else 0
    low, high = 192 - x, 64
    out = bytearray()
    total = value
    for i in range(5):
        if total < low or i == 4:
            out.append(total + x)
            return bytes(out)
        total -= low
        out.append(low + (total % high) + x)
        total >>= 6
    return bytes(out)


def zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 31) if value >= 0 else ((-value) << 1) - 1


@pytest.mark.parametrize("excludes_zero", [False, True], ids=["jdk17", "jdk20plus"])
@pytest.mark.parametrize("value", [0, 1, 190, 191, 192, 255, 1000, 12345, 1 << 20, (1 << 31) - 1, 0xFFFFFFFF])
def test_unsigned5_round_trip(value: int, excludes_zero: bool) -> None:
    # GIVEN a value written the way HotSpot writes it, followed by unrelated bytes
    data = encode_unsigned5(value, excludes_zero) + b"\x07\x07"
    # WHEN it is read back
    decoded, pos = read_unsigned5(data, 0, excludes_zero)
    # THEN the value and the position after it are exact
    assert decoded == value
    assert pos == len(data) - 2


def test_unsigned5_with_zero_byte_is_corrupt_on_jdk20() -> None:
    # GIVEN a JDK 20+ stream (no zero bytes by construction) that contains one
    # WHEN/THEN it is refused as corrupt instead of decoding garbage
    with pytest.raises(MemoryReadError):
        read_unsigned5(b"\x00\x01", 0, True)


@pytest.mark.parametrize("excludes_zero", [False, True])
def test_line_table_short_and_escaped_pairs(excludes_zero: bool) -> None:
    # GIVEN a table with two one-byte pairs and one escaped pair (a large line jump, a negative delta)
    short1 = (0 << 3) | 5            # bci +0, line +5
    short2 = (4 << 3) | 1            # bci +4, line +1
    escaped = bytes([0xFF]) + encode_unsigned5(zigzag(300), excludes_zero) \
        + encode_unsigned5(zigzag(-3), excludes_zero)
    data = bytes([short1, short2]) + escaped + b"\x00" + b"garbage"
    # WHEN it is parsed
    pairs = parse_line_table(data, excludes_zero)
    # THEN bci and line accumulate as HotSpot's CompressedLineNumberReadStream does
    assert pairs == [(0, 5), (4, 6), (304, 3)]


def test_line_table_without_terminator_raises_index_error() -> None:
    # GIVEN a truncated table  WHEN parsed  THEN the caller is told to read more (IndexError)
    with pytest.raises(IndexError):
        parse_line_table(bytes([0x0D, 0x21]), False)


# PcDesc tables as HotSpot lays them out: a sentinel at pc -1 and one at the end, both without a scope.
OFFSETS = [-1, 40, 96, 170, 281]
SCOPES = [0, 12, 30, 18, 0]


@pytest.mark.parametrize("pc_offset, scope", [
    (96, 30),     # a return address: its own PcDesc
    (50, 30),     # the top frame inside the body: the next safepoint's PcDesc
    (0, 12),      # before the first PcDesc (prologue): the first one
    (186, 18),    # past the last real PcDesc (loop tail, epilogue): the last one before it
    (500, 18),    # past everything
])
def test_nearest_scope(pc_offset: int, scope: int) -> None:
    # GIVEN an nmethod's PcDescs  WHEN a PC is described  THEN the scope is the one HotSpot would use,
    # or, past the last PcDesc, the last real one instead of none
    assert nearest_scope(OFFSETS, SCOPES, pc_offset) == scope


def test_nearest_scope_of_a_table_without_scopes_is_none() -> None:
    assert nearest_scope([-1, 50], [0, 0], 10) == 0
