"""Bounded reads of the target's memory.

The target's memory is untrusted input: every read has a size bound, every failure is a MemoryReadError
(which callers turn into a counted "unknown", never a crash). /proc/PID/mem with pread never stops the
target (no ptrace attach).
"""

from __future__ import annotations

import os
import struct
from typing import Protocol

from pyprof.errors import MemoryReadError, NoSuchProcess
from pyprof.procfs.capabilities import memory_denied

MAX_READ = 16 * 1024 * 1024   # no single read of target memory larger than this
MAX_CSTRING = 4096            # C strings in HotSpot's tables are short; longer means garbage
USER_SPACE_END = 1 << 47      # x86_64 canonical user addresses


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


class MemoryReader(Protocol):
    def read(self, address: int, size: int) -> bytes:
        """Exactly `size` bytes at `address`, or MemoryReadError."""
        ...


def check_range(address: int, size: int) -> None:
    if size < 0 or size > MAX_READ:
        raise MemoryReadError(f"read of {size} bytes refused (bound {MAX_READ})")
    if address <= 0 or address + size > USER_SPACE_END:
        raise MemoryReadError(f"address 0x{address:x} outside user space")


class ProcessMemory:
    """/proc/PID/mem, read with pread. Not thread-safe to close while reading; cheap to create."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError) as e:   # ESRCH: exited, or exec replaces its mm
            raise NoSuchProcess(f"no such process: {pid}") from e
        except PermissionError as e:
            raise memory_denied(pid) from e
        self.reads = 0
        self.bytes_read = 0

    def read(self, address: int, size: int) -> bytes:
        check_range(address, size)
        try:
            data = os.pread(self._fd, size, address)
        except OSError as e:  # EIO: unmapped; ESRCH: exited
            raise MemoryReadError(f"read 0x{address:x}+{size}: {e.strerror}") from None
        self.reads += 1
        self.bytes_read += len(data)
        if len(data) != size:
            raise MemoryReadError(f"short read at 0x{address:x}: {len(data)} of {size}")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesMemory:
    """Memory served from byte buffers at given addresses: for tests and for copied stacks."""

    def __init__(self, regions: dict[int, bytes] | None = None) -> None:
        self.regions = dict(regions or {})

    def add(self, address: int, data: bytes) -> None:
        self.regions[address] = data

    def read(self, address: int, size: int) -> bytes:
        check_range(address, size)
        for base, data in self.regions.items():
            if base <= address and address + size <= base + len(data):
                off = address - base
                return data[off : off + size]
        raise MemoryReadError(f"0x{address:x}+{size} not mapped")


class Reader:
    """Typed little-endian reads on top of a MemoryReader."""

    def __init__(self, mem: MemoryReader) -> None:
        self.mem = mem

    def bytes(self, address: int, size: int) -> bytes:
        return self.mem.read(address, size)

    def u8(self, address: int) -> int:
        return self.mem.read(address, 1)[0]

    def i8(self, address: int) -> int:
        v = self.mem.read(address, 1)[0]
        return v - 256 if v >= 128 else v

    def u16(self, address: int) -> int:
        return _U16.unpack(self.mem.read(address, 2))[0]

    def i16(self, address: int) -> int:
        v = self.u16(address)
        return v - 65536 if v >= 32768 else v

    def u32(self, address: int) -> int:
        return _U32.unpack(self.mem.read(address, 4))[0]

    def i32(self, address: int) -> int:
        return _I32.unpack(self.mem.read(address, 4))[0]

    def u64(self, address: int) -> int:
        return _U64.unpack(self.mem.read(address, 8))[0]

    def i64(self, address: int) -> int:
        return _I64.unpack(self.mem.read(address, 8))[0]

    ptr = u64

    def uint(self, address: int, size: int, signed: bool = False) -> int:
        """An integer of 1, 2, 4 or 8 bytes (the size VMStructs says a field has)."""
        return int.from_bytes(self.mem.read(address, size), "little", signed=signed)

    def cstring(self, address: int, limit: int = 256) -> str:
        """A NUL-terminated string of at most `limit` bytes (read in chunks; never crosses the bound)."""
        limit = min(limit, MAX_CSTRING)
        out = bytearray()
        chunk = 64
        while len(out) < limit:
            want = min(chunk, limit - len(out))
            try:
                data = self.mem.read(address + len(out), want)
            except MemoryReadError:
                if want == 1:
                    raise
                chunk = 1  # maybe the string ends right before an unmapped page
                continue
            nul = data.find(b"\0")
            if nul >= 0:
                out += data[:nul]
                return out.decode("utf-8", "replace")
            out += data
        raise MemoryReadError(f"string at 0x{address:x} longer than {limit}")
