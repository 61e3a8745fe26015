"""Bounded reads of the target's memory.

The target's memory is untrusted input: every read has a size bound, every failure is a MemoryReadError
(which callers turn into a counted "unknown", never a crash). /proc/PID/mem with pread never stops the
target (no ptrace attach); nor does process_vm_readv, which batches many small reads into one system call
(ProcessMemory.read_many).
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Optional, Protocol, Sequence

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


IOV_MAX = 1024                # iovecs per process_vm_readv call (the kernel's UIO_MAXIOV)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_process_vm_readv = getattr(_libc, "process_vm_readv", None)
if _process_vm_readv is not None:
    _process_vm_readv.restype = ctypes.c_ssize_t
    _process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                                  ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]


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

    def read_many(self, addresses: Sequence[int], size: int) -> list[Optional[bytes]]:
        """`size` bytes at each address (None where unreadable), in as few system calls as possible:
        process_vm_readv takes up to IOV_MAX reads at once (a thread list refresh reads two words of
        thousands of threads). It stops at the first read that fails; that one is None and the batch
        goes on after it. Without process_vm_readv (refused, or missing) each is a pread."""
        out: list[Optional[bytes]] = [None] * len(addresses)
        start = 0
        while start < len(addresses):
            batch = list(addresses[start:start + IOV_MAX])
            done = self._readv(batch, size) if _process_vm_readv is not None and size > 0 else None
            if done is None:      # no process_vm_readv here: one pread each
                for i in range(start, len(addresses)):
                    try:
                        out[i] = self.read(addresses[i], size)
                    except MemoryReadError:
                        out[i] = None
                return out
            for i, data in enumerate(done):
                out[start + i] = data
            start += len(done)      # never empty: past the reads done and the one that failed
        return out

    def _readv(self, addresses: list[int], size: int) -> Optional[list[Optional[bytes]]]:
        """One process_vm_readv of `addresses`: the reads up to and including the first failed one
        (that one None), or None when the call itself is unavailable or refused."""
        valid = []
        for address in addresses:
            try:
                check_range(address, size)
            except MemoryReadError:
                break
            valid.append(address)
        if not valid:
            return [None]
        n = len(valid)
        buf = ctypes.create_string_buffer(n * size)
        base = ctypes.addressof(buf)
        # iovec arrays filled as flat (base, len) word pairs: slice assignment, no object per iovec
        local = (ctypes.c_size_t * (2 * n))()
        local[0::2] = range(base, base + n * size, size)
        local[1::2] = [size] * n
        remote = (ctypes.c_size_t * (2 * n))()
        remote[0::2] = valid
        remote[1::2] = [size] * n
        iovecs = ctypes.POINTER(_IoVec)
        got = _process_vm_readv(self.pid, ctypes.cast(local, iovecs), n, ctypes.cast(remote, iovecs), n, 0)
        if got < 0:
            err = ctypes.get_errno()
            if err in (1, 38):      # EPERM, ENOSYS: not allowed here; pread still is
                return None
            return [None]           # EFAULT etc.: the first one is unreadable
        self.reads += 1
        self.bytes_read += got
        whole = got // size
        raw = buf.raw
        out: list[Optional[bytes]] = [raw[i * size:(i + 1) * size] for i in range(whole)]
        if whole < len(addresses):
            out.append(None)        # the read that stopped the batch
        return out

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

    def many(self, addresses: Sequence[int], size: int, signed: bool = False) -> list[Optional[int]]:
        """Integers of `size` bytes at each address (None where unreadable): batched where the memory
        can (ProcessMemory.read_many), else one read each."""
        read_many = getattr(self.mem, "read_many", None)
        if read_many is not None:
            raw = read_many(addresses, size)
        else:
            raw = []
            for address in addresses:
                try:
                    raw.append(self.mem.read(address, size))
                except MemoryReadError:
                    raw.append(None)
        return [int.from_bytes(b, "little", signed=signed) if b is not None else None for b in raw]

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
