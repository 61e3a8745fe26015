"""DWARF CFI: .eh_frame decoding (checked against pyelftools on the real libc), hand-made programs,
hostile input, and the per-build-id table cache (memory and disk)."""

from __future__ import annotations

import io
import os
import random
import stat
import struct
import time
from pathlib import Path

import pytest
from elftools.dwarf.callframe import FDE, RegisterRule
from elftools.elf.elffile import ELFFile

from pyprof.symbols import cfi
from pyprof.symbols.cfi import CFA_PLT, CFA_RBP, CFA_RSP, ROOT, Rule, TableCache, UnwindTable
from tests.conftest import require

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


# ---- hand-made .eh_frame ------------------------------------------------------------------------
def _uleb(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _sleb(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        done = (v == 0 and not b & 0x40) or (v == -1 and b & 0x40)
        out.append(b if done else b | 0x80)
        if done:
            return bytes(out)


def _entry(body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<I", len(body)) + body


# CIE: version 1, "zR", code align 1, data align -8, RA = 16, FDE pointers pcrel|sdata4;
# initial: def_cfa rsp+8, offset RA at cfa-8 (what GCC emits on x86_64)
CIE = _entry(struct.pack("<I", 0) + b"\x01zR\0" + _uleb(1) + _sleb(-8) + b"\x10" + _uleb(1) + b"\x1b"
             + b"\x0c\x07\x08" + b"\x90\x01")


def eh_frame(section_vaddr: int, fdes: list[tuple[int, int, bytes]]) -> bytes:
    """A section holding CIE then one FDE per (begin, size, program)."""
    data = bytearray(CIE)
    for begin, size, program in fdes:
        id_pos = len(data) + 4
        pc_field = id_pos + 4
        body = struct.pack("<I", id_pos) + struct.pack("<i", begin - (section_vaddr + pc_field)) \
            + struct.pack("<I", size) + _uleb(0) + program
        data += _entry(body)
    return bytes(data + b"\0\0\0\0")


def table_of(section: bytes, vaddr: int = 0x1000) -> UnwindTable:
    starts, rules = cfi.compile_rows(cfi.decode_eh_frame(section, vaddr))
    return UnwindTable("test", starts, rules)


def test_push_rbp_mov_rbp_frame_gives_three_rows() -> None:
    # GIVEN a function at 0x2000: push rbp (1 byte); mov rbp, rsp (3 bytes); ... ; 0x40 bytes long
    program = b"\x41" + b"\x0e\x10" + b"\x86\x02" + b"\x43" + b"\x0d\x06"
    table = table_of(eh_frame(0x1000, [(0x2000, 0x40, program)]))
    # THEN at entry the CFA is rsp+8, after the push rsp+16 with rbp saved at CFA-16, then rbp-based
    assert table.rule_at(0x2000) == Rule(CFA_RSP, 8, 0)
    assert table.rule_at(0x2001) == Rule(CFA_RSP, 16, -16)
    assert table.rule_at(0x2003) == Rule(CFA_RSP, 16, -16)
    assert table.rule_at(0x2004) == Rule(CFA_RBP, 16, -16)
    assert table.rule_at(0x203F) == Rule(CFA_RBP, 16, -16)
    # AND nothing outside the function
    assert table.rule_at(0x2040) is None
    assert table.rule_at(0x1FFF) is None


def test_remember_restore_state_and_adjacent_functions() -> None:
    # GIVEN f: sub rsp,24 at +4 ... remember; add rsp,24 at +0x10 (epilogue) ...; restore at +0x11
    f = b"\x44\x0e\x20" + b"\x4c\x0a\x0e\x08" + b"\x41\x0b"
    # and g right after f, frameless
    table = table_of(eh_frame(0x1000, [(0x3000, 0x20, f), (0x3020, 0x10, b"")]))
    assert table.rule_at(0x3004) == Rule(CFA_RSP, 32, 0)
    assert table.rule_at(0x3010) == Rule(CFA_RSP, 8, 0)
    assert table.rule_at(0x3011) == Rule(CFA_RSP, 32, 0)
    assert table.rule_at(0x3020) == Rule(CFA_RSP, 8, 0)    # g's row, not f's end marker
    assert table.rule_at(0x3030) is None


def test_undefined_return_address_is_the_root() -> None:
    # clone3/_start mark the return address (register 16) undefined: the outermost frame
    table = table_of(eh_frame(0x1000, [(0x4000, 0x10, b"\x07\x10")]))
    assert table.rule_at(0x4008).kind == ROOT


def test_plt_expression_is_recognized_and_other_expressions_are_not() -> None:
    plt = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])
    other = bytes([0x76, 0x78, 0x06])           # breg6 -8; deref: a realigned frame
    table = table_of(eh_frame(0x1000, [(0x5000, 0x10, b"\x0f" + _uleb(len(plt)) + plt),
                                       (0x6000, 0x10, b"\x0f" + _uleb(len(other)) + other)]))
    assert table.rule_at(0x5004) == Rule(CFA_PLT, 8, 0, 11)
    assert table.rule_at(0x6004) is None         # not expressible: the unwinder uses frame pointers


def test_packing_round_trips_negative_offsets() -> None:
    for rule in (Rule(CFA_RSP, 8, 0), Rule(CFA_RBP, 16, -16), Rule(CFA_RSP, 1 << 20, -56),
                 Rule(CFA_PLT, 8, 0, 11), Rule(ROOT)):
        assert Rule.unpack(rule.pack()) == rule


# ---- the real libc, against pyelftools ----------------------------------------------------------
def _expected(row: dict):
    cfa, rbp, ra = row["cfa"], row.get(cfi.RBP), row.get(cfi.RA)
    if ra is not None and ra.type == RegisterRule.UNDEFINED:
        return (ROOT,)
    if cfa.expr is not None:
        return ("expression",)
    kind = {cfi.RSP: CFA_RSP, cfi.RBP: CFA_RBP}.get(cfa.reg)
    if kind is None:
        return None
    fp = rbp.arg if rbp is not None and rbp.type == RegisterRule.OFFSET else 0
    return (kind, cfa.offset, fp)


def test_libc_tables_agree_with_pyelftools_row_by_row() -> None:
    # GIVEN the machine's libc (real compiler output: PLT, remember/restore, signal frames, asm)
    require(os.path.isfile(LIBC), f"no {LIBC}")
    with open(LIBC, "rb") as f:
        table = cfi.build_table(f, "libc")
        entries = ELFFile(f).get_dwarf_info().EH_CFI_entries()
    # WHEN every row pyelftools decodes is looked up in pyprof's table
    checked = mismatches = 0
    for entry in entries:
        if not isinstance(entry, FDE):
            continue
        try:
            decoded = entry.get_decoded()
        except Exception:     # pyelftools cannot decode a few hand-written entries; pyprof may
            continue
        for row in decoded.table:
            want, got = _expected(row), table.rule_at(row["pc"])
            if want == ("expression",):
                ok = got is None or got.kind == CFA_PLT
            elif want is None:
                ok = got is None
            elif want == (ROOT,):
                ok = got is not None and got.kind == ROOT
            else:
                ok = got is not None and (got.kind, got.cfa_offset, got.fp_offset) == want
            checked += 1
            mismatches += not ok
    # THEN they all agree
    assert checked > 20_000, checked
    assert mismatches == 0, (mismatches, checked)


def test_hostile_eh_frame_bytes_fail_cleanly_and_quickly() -> None:
    # GIVEN the first 64 KiB of libc's .eh_frame, mutated at random
    require(os.path.isfile(LIBC), f"no {LIBC}")
    with open(LIBC, "rb") as f:
        section = ELFFile(f).get_section_by_name(".eh_frame")
        original = section.data()[:65536]
        vaddr = section["sh_addr"]
    rng = random.Random(11)
    started = time.monotonic()
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randrange(len(data))
        # WHEN decoded THEN only CfiError may come out, and every row is a pair of ints
        try:
            rows = cfi.decode_eh_frame(bytes(data[:cut]), vaddr)
        except cfi.CfiError:
            continue
        assert all(isinstance(a, int) and isinstance(r, int) for a, r in rows[:100])
    assert time.monotonic() - started < 60


# ---- the cache ----------------------------------------------------------------------------------
def _image() -> io.BytesIO:
    with open(LIBC, "rb") as f:
        return io.BytesIO(f.read())


def test_table_cache_writes_once_then_reads_from_disk(tmp_path: Path) -> None:
    require(os.path.isfile(LIBC), f"no {LIBC}")
    directory = tmp_path / "cfi"
    first = TableCache(directory)
    table = first.get("00aa11", _image)
    assert table is not None and len(table) > 1000 and first.built == 1 and first.disk_writes == 1
    # the directory is private and holds exactly one table, no temporary file
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert [p.name for p in directory.iterdir()] == ["00aa11.v1.cfi"]
    # a second pyprof process (a new cache object) reads it back without building
    second = TableCache(directory)
    again = second.get("00aa11", lambda: pytest.fail("rebuilt although cached on disk"))
    assert again is not None and second.disk_hits == 1 and second.built == 0
    assert list(again.starts) == list(table.starts) and list(again.rules) == list(table.rules)
    # and from memory the third time
    assert second.get("00aa11", lambda: pytest.fail("not kept in memory")) is again


def test_table_cache_ignores_corrupt_files_and_open_directories(tmp_path: Path) -> None:
    require(os.path.isfile(LIBC), f"no {LIBC}")
    directory = tmp_path / "cfi"
    TableCache(directory).get("00bb22", _image)
    path = directory / "00bb22.v1.cfi"
    path.write_bytes(path.read_bytes()[:1000])           # truncated
    cache = TableCache(directory)
    assert cache.get("00bb22", _image) is not None and cache.built == 1 and cache.disk_hits == 0
    # a directory others can write to is neither read nor written
    os.chmod(directory, 0o777)
    path.unlink()
    other = TableCache(directory)
    assert other.get("00bb22", _image) is not None and other.disk_writes == 0
    assert not path.exists()


def test_table_cache_stays_under_its_size_bound(tmp_path: Path) -> None:
    require(os.path.isfile(LIBC), f"no {LIBC}")
    one = len(TableCache(tmp_path / "probe").get("00", _image).to_bytes())
    cache = TableCache(tmp_path / "cfi", max_bytes=int(2.5 * one))
    for i, bid in enumerate(("01", "02", "03", "04")):
        cache.get(bid, _image)
        os.utime(tmp_path / "cfi" / f"{bid}.v1.cfi", (1000 + i, 1000 + i))
    names = sorted(p.name for p in (tmp_path / "cfi").iterdir())
    assert len(names) == 2 and "04.v1.cfi" in names, names


def test_build_ids_that_are_no_hex_never_become_paths(tmp_path: Path) -> None:
    require(os.path.isfile(LIBC), f"no {LIBC}")
    cache = TableCache(tmp_path / "cfi")
    assert cache.get("../../etc/evil", _image) is not None
    assert not any((tmp_path / "cfi").iterdir())
