"""DWARF call-frame information (.eh_frame) compiled into compact unwind tables, one per build-id.

Native code without frame pointers (libc, parts of libjvm such as the C2 compiler, JNI libraries, the
vDSO) can only be unwound with the CFI every x86_64 ELF carries for C++ exceptions. pyelftools locates
the sections; the entries themselves are decoded here, in one pass over the raw bytes, because
pyelftools' per-entry objects take ~30 s for libjvm's 44k FDEs (this decoder: about a second).

Only what an x86_64 unwinder needs is kept, per address range ("row"):
- how the CFA (the caller's sp) is computed: rsp + N, rbp + N, or the PLT's fixed expression;
- where the caller's rbp was saved (CFA + N), if it was;
- whether the return address is undefined (the outermost frame: clone3, _start);
- rows the table cannot express (other CFA registers, other expressions): "no rule", the caller falls
  back to frame pointers.

A table is two arrays (row start addresses, packed rules) searched with bisect; it is cached in memory
(LRUCache by build-id) and on disk (see `TableCache`), so each library is decoded once per machine.
The input is untrusted (a file of the target, or its vDSO image): every read is bounded, a malformed
entry ends the decoding of that section with the rows read so far.
"""

from __future__ import annotations

import bisect
import io
import os
import struct
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pyprof.lru import LRUCache

# Rule kinds (low 3 bits of a packed rule)
NO_RULE, CFA_RSP, CFA_RBP, CFA_PLT, ROOT = 0, 1, 2, 3, 4
RSP, RBP, RA = 7, 6, 16                  # DWARF register numbers on x86_64
MAX_EH_FRAME = 64 << 20                  # refuse absurd sections (hostile input)
MAX_ROWS = 4_000_000
FORMAT_VERSION = 1
_MAGIC = b"PYPROF-CFI\0"


@dataclass(frozen=True)
class Rule:
    """How to find the caller of a frame whose pc falls in one row."""

    kind: int
    cfa_offset: int = 0     # CFA = reg + cfa_offset (CFA_PLT: the base offset from rsp)
    fp_offset: int = 0      # the caller's rbp is at CFA + fp_offset; 0: rbp was not saved (unchanged)
    plt_threshold: int = 0  # CFA_PLT: +8 when (pc & 15) >= plt_threshold

    def pack(self) -> int:
        extra = self.plt_threshold if self.kind == CFA_PLT else self.fp_offset
        return (self.kind & 7) | ((self.cfa_offset & 0xFFFFFFFF) << 3) | ((extra & 0xFFFF) << 35)

    @classmethod
    def unpack(cls, packed: int) -> Rule:
        kind = packed & 7
        cfa = _signed((packed >> 3) & 0xFFFFFFFF, 32)
        extra = _signed((packed >> 35) & 0xFFFF, 16)
        if kind == CFA_PLT:
            return cls(kind, cfa, 0, extra)
        return cls(kind, cfa, extra)


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


class UnwindTable:
    """Rows of one ELF file, keyed by link-time address."""

    def __init__(self, build_id: str, starts: array, rules: array) -> None:
        self.build_id = build_id
        self.starts = starts
        self.rules = rules

    def __len__(self) -> int:
        return len(self.starts)

    def rule_at(self, vaddr: int) -> Optional[Rule]:
        i = bisect.bisect_right(self.starts, vaddr) - 1
        if i < 0:
            return None
        packed = self.rules[i]
        return None if packed & 7 == NO_RULE else Rule.unpack(packed)

    def to_bytes(self) -> bytes:
        bid = self.build_id.encode()
        head = _MAGIC + struct.pack("<IHI", FORMAT_VERSION, len(bid), len(self.starts)) + bid
        return head + self.starts.tobytes() + self.rules.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnwindTable:
        if not data.startswith(_MAGIC):
            raise ValueError("not an unwind table")
        at = len(_MAGIC)
        version, bid_len, count = struct.unpack_from("<IHI", data, at)
        at += 10
        if version != FORMAT_VERSION or count > MAX_ROWS or len(data) != at + bid_len + 16 * count:
            raise ValueError("unwind table of another version or truncated")
        bid = data[at:at + bid_len].decode()
        at += bid_len
        starts, rules = array("Q"), array("Q")
        starts.frombytes(data[at:at + 8 * count])
        rules.frombytes(data[at + 8 * count:at + 16 * count])
        return cls(bid, starts, rules)


# ---- decoding .eh_frame --------------------------------------------------------------------------
class CfiError(ValueError):
    pass


class _Bytes:
    """A bounded cursor over a section's bytes."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise CfiError("read past the end of an entry")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        if self.pos >= self.end:
            raise CfiError("read past the end of an entry")
        self.pos += 1
        return self.data[self.pos - 1]

    def uleb(self) -> int:
        return self._leb128(signed=False)

    def sleb(self) -> int:
        return self._leb128(signed=True)

    def _leb128(self, signed: bool) -> int:
        result = shift = 0
        while True:
            b = self.u8()
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result - (1 << shift) if signed and b & 0x40 else result
            if shift > 63:
                raise CfiError("LEB128 too long")

    def cstring(self) -> bytes:
        end = self.data.find(b"\0", self.pos, self.end)
        if end < 0:
            raise CfiError("unterminated string")
        out = self.data[self.pos:end]
        self.pos = end + 1
        return out


_FIXED = {0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i", 0x0C: "<q"}


def _encoded(cur: _Bytes, encoding: int, section_vaddr: int) -> int:
    """A pointer in DW_EH_PE_* encoding; pc-relative ones are resolved against the section's vaddr."""
    if encoding == 0xFF:
        return 0
    field_vaddr = section_vaddr + cur.pos
    fmt = encoding & 0x0F
    if fmt == 0x00:
        value = struct.unpack("<Q", cur.take(8))[0]
    elif fmt == 0x01:
        value = cur.uleb()
    elif fmt == 0x09:
        value = cur.sleb()
    elif fmt in _FIXED:
        spec = _FIXED[fmt]
        value = struct.unpack(spec, cur.take(struct.calcsize(spec)))[0]
    else:
        raise CfiError(f"pointer encoding 0x{encoding:x}")
    if encoding & 0x70 == 0x10:       # pcrel
        value += field_vaddr
    return value & 0xFFFFFFFFFFFFFFFF


@dataclass
class _Cie:
    code_align: int
    data_align: int
    ra_reg: int
    fde_encoding: int
    has_z: bool
    initial: bytes


@dataclass
class _State:
    cfa_reg: int = RSP
    cfa_offset: int = 8
    cfa_expr: Optional[bytes] = None
    fp_offset: int = 0                # 0: rbp unchanged
    ra_undefined: bool = False
    fp_unsupported: bool = False

    def copy(self) -> _State:
        return _State(self.cfa_reg, self.cfa_offset, self.cfa_expr, self.fp_offset, self.ra_undefined,
                      self.fp_unsupported)

    def rule(self) -> int:
        if self.ra_undefined:
            return Rule(ROOT).pack()
        if self.cfa_expr is not None:
            plt = _plt_rule(self.cfa_expr)
            return plt.pack() if plt is not None else NO_RULE
        if self.fp_unsupported:
            return NO_RULE
        if self.cfa_reg == RSP:
            return Rule(CFA_RSP, self.cfa_offset, self.fp_offset).pack()
        if self.cfa_reg == RBP:
            return Rule(CFA_RBP, self.cfa_offset, self.fp_offset).pack()
        return NO_RULE


def _plt_rule(expr: bytes) -> Optional[Rule]:
    """The PLT's CFA expression (binutils): rsp + N + ((rip & 15) >= K ? 8 : 0), i.e.
    DW_OP_breg7 N; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_litK; DW_OP_ge; DW_OP_lit3; DW_OP_shl;
    DW_OP_plus. Any other expression is not supported."""
    if len(expr) < 11 or expr[0] != 0x77:
        return None
    cur = _Bytes(expr, 1, len(expr))
    try:
        base = cur.sleb()
        tail = cur.take(cur.end - cur.pos)
    except CfiError:
        return None
    if len(tail) == 9 and tail[:4] == b"\x80\x00\x3f\x1a" and 0x30 <= tail[4] <= 0x4F \
            and tail[5:] == b"\x2a\x33\x24\x22":
        return Rule(CFA_PLT, base, 0, tail[4] - 0x30)
    return None


def _run(program: bytes, cie: _Cie, state: _State, initial: _State, loc: int, end_loc: int,
         rows: list[tuple[int, int]], section_vaddr: int, fde_encoding: int) -> int:
    """Execute one CFA program, appending (address, packed rule) rows; returns the final location."""
    cur = _Bytes(program, 0, len(program))
    stack: list[_State] = []
    rows.append((loc, state.rule()))
    while cur.pos < cur.end:
        op = cur.u8()
        high, low = op & 0xC0, op & 0x3F
        new_loc = loc
        if high == 0x40:
            new_loc = loc + low * cie.code_align
        elif high == 0x80:
            _set_offset(state, low, cur.uleb() * cie.data_align)
        elif high == 0xC0:
            _restore(state, initial, low)
        elif op == 0x00:
            pass
        elif op == 0x01:
            new_loc = _encoded(cur, fde_encoding & 0x0F, section_vaddr)
        elif op in (0x02, 0x03, 0x04):
            size = {0x02: 1, 0x03: 2, 0x04: 4}[op]
            new_loc = loc + int.from_bytes(cur.take(size), "little") * cie.code_align
        elif op == 0x05:
            reg = cur.uleb()
            _set_offset(state, reg, cur.uleb() * cie.data_align)
        elif op == 0x06:
            _restore(state, initial, cur.uleb())
        elif op == 0x07:
            reg = cur.uleb()
            if reg == RA:
                state.ra_undefined = True
            elif reg == RBP:
                state.fp_offset = 0
        elif op == 0x08:
            if cur.uleb() == RBP:
                state.fp_offset = 0
        elif op == 0x09:
            reg, _other = cur.uleb(), cur.uleb()
            if reg == RBP:
                state.fp_unsupported = True
        elif op == 0x0A:
            if len(stack) > 64:
                raise CfiError("remember_state too deep")
            stack.append(state.copy())
        elif op == 0x0B:
            if not stack:
                raise CfiError("restore_state without remember_state")
            state.__dict__.update(stack.pop().__dict__)
        elif op == 0x0C:
            state.cfa_reg, state.cfa_offset, state.cfa_expr = cur.uleb(), cur.uleb(), None
        elif op == 0x0D:
            state.cfa_reg, state.cfa_expr = cur.uleb(), None
        elif op == 0x0E:
            state.cfa_offset = cur.uleb()
        elif op == 0x0F:
            state.cfa_expr = cur.take(cur.uleb())
        elif op in (0x10, 0x16):
            reg = cur.uleb()
            cur.take(cur.uleb())
            if reg == RBP:
                state.fp_unsupported = True
            elif reg == RA:
                state.ra_undefined = False
        elif op == 0x11:
            reg = cur.uleb()
            _set_offset(state, reg, cur.sleb() * cie.data_align)
        elif op == 0x12:
            state.cfa_reg, state.cfa_offset, state.cfa_expr = cur.uleb(), cur.sleb() * cie.data_align, None
        elif op == 0x13:
            state.cfa_offset = cur.sleb() * cie.data_align
        elif op in (0x14, 0x15):
            reg = cur.uleb()
            cur.uleb() if op == 0x14 else cur.sleb()
            if reg == RBP:
                state.fp_unsupported = True
        elif op == 0x2E:
            cur.uleb()                  # GNU_args_size: no effect on the CFA rule
        elif op == 0x2F:
            reg = cur.uleb()
            _set_offset(state, reg, -cur.uleb() * cie.data_align)
        else:
            raise CfiError(f"CFA opcode 0x{op:x}")
        if new_loc != loc:
            if new_loc >= end_loc:
                break
            loc = new_loc
            rows.append((loc, state.rule()))
        elif rows and rows[-1][0] == loc:
            rows[-1] = (loc, state.rule())
    return loc


def _set_offset(state: _State, reg: int, offset: int) -> None:
    if reg == RBP:
        state.fp_offset, state.fp_unsupported = offset, False
    elif reg == RA:
        state.ra_undefined = False


def _restore(state: _State, initial: _State, reg: int) -> None:
    if reg == RBP:
        state.fp_offset, state.fp_unsupported = initial.fp_offset, initial.fp_unsupported
    elif reg == RA:
        state.ra_undefined = initial.ra_undefined


def _parse_cie(cur: _Bytes, section_vaddr: int) -> _Cie:
    version = cur.u8()
    aug = cur.cstring()
    if b"eh" in aug:
        cur.take(8)
    code_align, data_align = cur.uleb(), cur.sleb()
    ra_reg = cur.u8() if version == 1 else cur.uleb()
    fde_encoding = 0
    has_z = aug.startswith(b"z")
    if has_z:
        length = cur.uleb()
        aug_end = cur.pos + length
        for ch in aug[1:]:
            if ch == ord("R"):
                fde_encoding = cur.u8()
            elif ch == ord("L"):
                cur.u8()
            elif ch == ord("P"):
                enc = cur.u8()
                _encoded(cur, enc & 0x7F, section_vaddr)
            elif ch in (ord("S"), ord("B")):
                pass
            else:
                break
        cur.pos = aug_end
    return _Cie(code_align, data_align, ra_reg, fde_encoding, has_z, cur.take(cur.end - cur.pos))


def decode_eh_frame(data: bytes, section_vaddr: int) -> list[tuple[int, int]]:
    """(address, packed rule) rows of every FDE, unsorted; an FDE's end is a NO_RULE row."""
    if len(data) > MAX_EH_FRAME:
        raise CfiError(f".eh_frame too large ({len(data)} bytes)")
    rows: list[tuple[int, int]] = []
    cies: dict[int, _Cie] = {}
    pos = 0
    while pos + 4 <= len(data) and len(rows) < MAX_ROWS:
        length = struct.unpack_from("<I", data, pos)[0]
        if length == 0:                 # the terminator
            break
        header = 4
        if length == 0xFFFFFFFF:
            if pos + 12 > len(data):
                break
            length, header = struct.unpack_from("<Q", data, pos + 4)[0], 12
        id_pos = pos + header
        end = id_pos + length
        if end > len(data) or length < 4:
            raise CfiError("entry runs past the section")
        cie_id = struct.unpack_from("<I", data, id_pos)[0]
        cur = _Bytes(data, id_pos + 4, end)
        if cie_id == 0:
            cies[pos] = _parse_cie(cur, section_vaddr)
        else:
            cie_pos = id_pos - cie_id
            cie = cies.get(cie_pos)
            if cie is None:
                cie = _parse_cie(_cie_cursor(data, cie_pos), section_vaddr)
                cies[cie_pos] = cie
            _decode_fde(cur, cie, section_vaddr, rows)
        pos = end
    return rows


def _cie_cursor(data: bytes, pos: int) -> _Bytes:
    if pos < 0 or pos + 8 > len(data):
        raise CfiError("FDE points to no CIE")
    length = struct.unpack_from("<I", data, pos)[0]
    if length == 0xFFFFFFFF or pos + 4 + length > len(data) or struct.unpack_from("<I", data, pos + 4)[0]:
        raise CfiError("FDE points to no CIE")
    return _Bytes(data, pos + 8, pos + 4 + length)


def _decode_fde(cur: _Bytes, cie: _Cie, section_vaddr: int, rows: list[tuple[int, int]]) -> None:
    begin = _encoded(cur, cie.fde_encoding, section_vaddr)
    size = _encoded(cur, cie.fde_encoding & 0x0F, section_vaddr)
    if cie.has_z:
        cur.take(cur.uleb())
    if not begin or size <= 0 or size > 1 << 32:
        return
    program = cur.take(cur.end - cur.pos)
    initial = _State()
    scratch: list[tuple[int, int]] = []
    _run(cie.initial, cie, initial, _State(), begin, begin + size, scratch, section_vaddr, cie.fde_encoding)
    state = initial.copy()
    _run(program, cie, state, initial, begin, begin + size, rows, section_vaddr, cie.fde_encoding)
    rows.append((begin + size, -1))    # the end of this FDE: NO_RULE unless another starts there


def compile_rows(rows: list[tuple[int, int]]) -> tuple[array, array]:
    """Sorted, deduplicated arrays. At one address a real row wins over another FDE's end marker; two
    consecutive rows with the same rule are merged."""
    rows.sort(key=lambda r: (r[0], r[1] != -1))
    starts, rules = array("Q"), array("Q")
    for addr, rule in rows:
        packed = NO_RULE if rule == -1 else rule
        if starts and starts[-1] == addr:
            if rule == -1:
                continue
            rules[-1] = packed
            if len(rules) > 1 and rules[-2] == packed:
                starts.pop()
                rules.pop()
            continue
        if rules and rules[-1] == packed:
            continue
        starts.append(addr)
        rules.append(packed)
    return starts, rules


def build_table(f: BinaryIO, build_id: str) -> UnwindTable:
    """The unwind table of an ELF image (a file or the vDSO's bytes)."""
    try:
        elf = ELFFile(f)
        section = elf.get_section_by_name(".eh_frame")
        if section is None or section["sh_type"] == "SHT_NOBITS":
            return UnwindTable(build_id, array("Q"), array("Q"))
        if section["sh_size"] > MAX_EH_FRAME:
            raise CfiError(".eh_frame too large")
        f.seek(section["sh_offset"])
        data = f.read(section["sh_size"])
        rows = decode_eh_frame(data, section["sh_addr"])
    except (ELFError, struct.error, OSError) as e:
        raise CfiError(str(e)) from e
    starts, rules = compile_rows(rows)
    return UnwindTable(build_id, starts, rules)


# ---- caches --------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyprof" / "cfi"


class TableCache:
    """Unwind tables by build-id: in memory (LRU) and on disk, one file per build-id.

    The disk cache is a private directory (0700, owned by us; anything else is not used), files are
    written to a temporary name and renamed (a reader never sees half a table), and the directory is
    kept under `max_bytes` by removing the least recently used files."""

    def __init__(self, directory: Optional[Path] = None, max_bytes: int = 256 << 20,
                 memory_entries: int = 64) -> None:
        self.directory = directory if directory is not None else default_cache_dir()
        self.max_bytes = max_bytes
        self.memory: LRUCache[str, UnwindTable] = LRUCache("build-id -> unwind table", memory_entries)
        self.disk_hits = self.disk_writes = self.built = self.errors = 0

    def get(self, build_id: str, open_image) -> Optional[UnwindTable]:
        """The table of `build_id`; `open_image()` returns a binary stream of the ELF when it must be
        built. None when the image has no usable CFI."""
        table = self.memory.get(build_id) if build_id else None
        if table is not None:
            return table
        table = self._load(build_id) if build_id else None
        if table is None:
            try:
                with open_image() as f:
                    table = build_table(f, build_id)
            except (CfiError, OSError, ValueError):
                self.errors += 1
                return None
            self.built += 1
            if build_id:
                self._store(table)
        if build_id:
            self.memory.put(build_id, table)
        return table

    def _usable_dir(self, create: bool) -> Optional[Path]:
        d = self.directory
        try:
            if create:
                d.mkdir(parents=True, mode=0o700, exist_ok=True)
            st = os.lstat(d)
        except OSError:
            return None
        import stat
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None        # not ours, a symlink, or open to others: do not trust or write it
        return d

    def _path(self, d: Path, build_id: str) -> Optional[Path]:
        if not build_id or not all(c in "0123456789abcdef" for c in build_id) or len(build_id) > 128:
            return None
        return d / f"{build_id}.v{FORMAT_VERSION}.cfi"

    def _load(self, build_id: str) -> Optional[UnwindTable]:
        d = self._usable_dir(create=False)
        path = self._path(d, build_id) if d is not None else None
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                data = f.read(16 * MAX_ROWS + 4096)
            table = UnwindTable.from_bytes(data)
        except (OSError, ValueError, struct.error, UnicodeDecodeError):
            return None
        if table.build_id != build_id:
            return None
        self.disk_hits += 1
        try:
            os.utime(path)             # recently used: kept longest
        except OSError:
            pass
        return table

    def _store(self, table: UnwindTable) -> None:
        d = self._usable_dir(create=True)
        path = self._path(d, table.build_id) if d is not None else None
        if d is None or path is None:
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".cfi")
            with os.fdopen(fd, "wb") as f:
                f.write(table.to_bytes())
            os.replace(tmp, path)
            self.disk_writes += 1
        except OSError:
            return
        self._trim(d)

    def _trim(self, d: Path) -> None:
        try:
            files = [(e.stat().st_mtime, e.stat().st_size, e.path) for e in os.scandir(d)
                     if e.is_file(follow_symlinks=False) and e.name.endswith(".cfi")]
        except OSError:
            return
        total = sum(size for _, size, _ in files)
        for _mtime, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            try:
                os.unlink(path)
                total -= size
            except OSError:
                pass


def table_from_bytes(image: bytes, build_id: str) -> UnwindTable:
    return build_table(io.BytesIO(image), build_id)
