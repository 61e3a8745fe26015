"""The running kernel's own code: symbol addresses from /proc/kallsyms and a function's bytes.

The bytes come from /proc/kcore (an ELF core image of kernel memory, root only) and, where the kernel
has no /proc/kcore (CONFIG_PROC_KCORE=n, like this machine's 6.18), from a tiny BPF program that copies
them with bpf_probe_read_kernel (bpf/kernel_read.c). Reads are bounded: at most MAX_FUNCTION_BYTES.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

KALLSYMS = Path("/proc/kallsyms")
KCORE = Path("/proc/kcore")
MAX_FUNCTION_BYTES = 1024    # copy_from_user_nofault is ~150 bytes; the BPF reader copies this much
_PT_LOAD = 1


class KernelTextUnavailable(Exception):
    """The symbols or the bytes cannot be read here (not root, kptr_restrict, no kcore and no BPF)."""


@dataclass(frozen=True)
class KernelFunction:
    """A function's address, its code, and the addresses of the symbols its calls are checked against."""

    name: str
    address: int
    code: bytes
    symbols: dict[str, int]      # name -> address (only the names the caller asked for)
    source: str                  # where the bytes came from: "/proc/kcore", "bpf", or a recording


def symbol_addresses(names: Iterable[str], kallsyms: Path = KALLSYMS) -> dict[str, int]:
    """name -> address of the text symbols asked for, and `next:NAME` -> the address of the symbol after
    NAME (its end bound). Zero addresses (kptr_restrict, not root) raise KernelTextUnavailable."""
    wanted = set(names)
    found: dict[str, int] = {}
    previous: Optional[str] = None
    try:
        with kallsyms.open() as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                address = int(parts[0], 16)
                if previous is not None and address > found[previous]:
                    found[f"next:{previous}"] = address
                    previous = None
                name = parts[2]
                if name in wanted and name not in found:
                    found[name] = address
                    previous = name
    except OSError as e:
        raise KernelTextUnavailable(f"{kallsyms}: {e.strerror}") from e
    if any(found.get(name) == 0 for name in wanted):
        raise KernelTextUnavailable(f"{kallsyms} shows zero addresses (needs root; kernel.kptr_restrict)")
    return found


def read_kcore(address: int, size: int, kcore: Path = KCORE) -> bytes:
    """`size` bytes of kernel memory at `address`, through /proc/kcore's PT_LOAD segments."""
    try:
        fd = os.open(kcore, os.O_RDONLY)
    except OSError as e:
        raise KernelTextUnavailable(f"{kcore}: {e.strerror}") from e
    try:
        header = os.pread(fd, 64, 0)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
            raise KernelTextUnavailable(f"{kcore} is not a 64-bit ELF core")
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        table = os.pread(fd, phentsize * min(phnum, 4096), phoff)
        for i in range(min(phnum, 4096)):
            p_type, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", table,
                                                                               i * phentsize)
            if p_type == _PT_LOAD and vaddr <= address and address + size <= vaddr + filesz:
                data = os.pread(fd, size, offset + address - vaddr)
                if len(data) == size:
                    return data
                break
    except OSError as e:
        raise KernelTextUnavailable(f"{kcore}: {e.strerror}") from e
    finally:
        os.close(fd)
    raise KernelTextUnavailable(f"{kcore} has no segment holding {address:#x}")


def read_with_bpf(address: int, size: int) -> bytes:
    """The same bytes through bpf_probe_read_kernel, for kernels without /proc/kcore."""
    from pyprof.errors import PyprofError
    from pyprof.kernel.bpf_loader import close_bpf, load_bpf

    try:
        bpf = load_bpf("kernel_read.c", [f"-DREAD_BYTES={MAX_FUNCTION_BYTES}"])
    except PyprofError as e:
        raise KernelTextUnavailable(f"no /proc/kcore and BPF cannot read kernel memory: {e}") from e
    try:
        zero = ctypes.c_int(0)
        request = bpf["request"]
        result = bpf["result"]
        leaf = result.Leaf()
        leaf.status = 1
        result[zero] = leaf
        request[zero] = request.Leaf(address, os.getpid(), 1)
        os.getppid()                       # any system call of ours fires the raw tracepoint
        out = result[zero]
        if out.status != 0:
            raise KernelTextUnavailable(f"bpf_probe_read_kernel({address:#x}) returned {out.status}")
        return bytes(bytearray(out.bytes)[:size])
    finally:
        close_bpf(bpf)


def read_function(name: str, targets: Iterable[str]) -> KernelFunction:
    """The running kernel's function `name` (bounded by the next symbol) and the addresses of `targets`."""
    targets = tuple(targets)
    symbols = symbol_addresses((name, *targets))
    if name not in symbols:
        raise KernelTextUnavailable(f"{name} is not in {KALLSYMS}")
    address = symbols[name]
    size = min(MAX_FUNCTION_BYTES, symbols.get(f"next:{name}", address + MAX_FUNCTION_BYTES) - address)
    try:
        code, source = read_kcore(address, size), str(KCORE)
    except KernelTextUnavailable as kcore_error:
        try:
            code, source = read_with_bpf(address, size), "bpf"
        except KernelTextUnavailable as bpf_error:
            raise KernelTextUnavailable(f"{kcore_error}; {bpf_error}") from bpf_error
    return KernelFunction(name, address, code, {t: symbols[t] for t in targets if t in symbols}, source)
