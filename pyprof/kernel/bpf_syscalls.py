"""The bpf() and perf_event_open() system calls through ctypes: what a cached program needs to be loaded
and attached without bcc (and so without its LLVM/clang, 65 MiB of RSS just to import).

Only stable kernel ABI is used (union bpf_attr and struct perf_event_attr prefixes); every failure is an
OSError with the kernel's errno.
"""

from __future__ import annotations

import ctypes
import os
from typing import Optional

SYS_BPF, SYS_PERF_EVENT_OPEN = 321, 298    # x86_64 (pyprof samples x86_64 only: features.check_arch)
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 0, 1, 2, 3
BPF_MAP_GET_NEXT_KEY, BPF_PROG_LOAD, BPF_OBJ_GET_INFO_BY_FD, BPF_RAW_TRACEPOINT_OPEN = 4, 5, 15, 17
PROG_KPROBE, PROG_PERF_EVENT, PROG_RAW_TRACEPOINT = 2, 7, 17
MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH, MAP_RINGBUF = 5, 6, 10, 27
PERCPU_MAP_TYPES = frozenset((MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH))
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF = 0x2400, 0x40042408
PERF_FLAG_DISABLED, PERF_FLAG_FREQ = 1 << 0, 1 << 10   # perf_event_attr.flags bits
PERF_FLAG_FD_CLOEXEC = 8
OBJ_NAME_LEN = 16
VERIFIER_LOG_BYTES = 1 << 20
ENOENT = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]


class MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("inner_map_fd", ctypes.c_uint32), ("numa_node", ctypes.c_uint32),
                ("map_name", ctypes.c_char * OBJ_NAME_LEN)]


class ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * OBJ_NAME_LEN)]


class InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * OBJ_NAME_LEN)]


class RawTracepointAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1)."""
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("wakeup_events", ctypes.c_uint32), ("bp_type", ctypes.c_uint32),
                ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64)]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    result = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int, name: str) -> int:
    attr = MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                         max_entries=max_entries, map_flags=flags,
                         map_name=name.encode()[:OBJ_NAME_LEN - 1])
    return _bpf(BPF_MAP_CREATE, attr)


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                          info=ctypes.addressof(info)))
    return info


def map_lookup(fd: int, key: int, value: int) -> bool:
    """Copy the value of the key at address `key` to address `value`; False when there is none."""
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, ElemAttr(map_fd=fd, key=key, value=value))
    except OSError as e:
        if e.errno == ENOENT:
            return False
        raise
    return True


def map_update(fd: int, key: int, value: int) -> None:
    _bpf(BPF_MAP_UPDATE_ELEM, ElemAttr(map_fd=fd, key=key, value=value))


def map_delete(fd: int, key: int) -> bool:
    try:
        _bpf(BPF_MAP_DELETE_ELEM, ElemAttr(map_fd=fd, key=key))
    except OSError as e:
        if e.errno == ENOENT:
            return False
        raise
    return True


def map_next_key(fd: int, key: Optional[int], next_key: int) -> bool:
    """The key after the one at address `key` (None: the first) into address `next_key`; False at the end."""
    try:
        _bpf(BPF_MAP_GET_NEXT_KEY, ElemAttr(map_fd=fd, key=key or 0, value=next_key))
    except OSError as e:
        if e.errno == ENOENT:
            return False
        raise
    return True


class VerifierRejected(OSError):
    """BPF_PROG_LOAD failed; `log` is the end of the verifier's log (where it explains why)."""

    def __init__(self, err: int, log: str) -> None:
        super().__init__(err, os.strerror(err))
        self.log = log


def prog_load(prog_type: int, name: str, insns: bytes, license_text: bytes, kern_version: int) -> int:
    """Load a program; on failure load it again with the verifier's log, for the reason."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license_text)

    def attempt(log_level: int, log: Optional[ctypes.Array]) -> int:
        attr = ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=ctypes.addressof(code),
                            license=ctypes.addressof(lic), kern_version=kern_version,
                            prog_name=name.encode()[:OBJ_NAME_LEN - 1])
        if log is not None:
            attr.log_level, attr.log_size, attr.log_buf = log_level, len(log), ctypes.addressof(log)
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(0, None)
    except OSError as first:
        log = ctypes.create_string_buffer(VERIFIER_LOG_BYTES)
        try:
            return attempt(1, log)   # a transient failure (EAGAIN) may pass the second time
        except OSError:
            text = log.value.decode(errors="replace").strip().splitlines()
            raise VerifierRejected(first.errno or 0, text[-1] if text else "") from first


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    text = ctypes.create_string_buffer(name.encode())
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, RawTracepointAttr(name=ctypes.addressof(text), prog_fd=prog_fd))


def perf_event_open(attr: PerfEventAttr, pid: int, cpu: int) -> int:
    attr.size = ctypes.sizeof(PerfEventAttr)
    fd = _libc.syscall(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def attach_to_perf_event(event_fd: int, prog_fd: int) -> None:
    """Run `prog_fd` on every event of `event_fd`, then enable it (it was opened disabled)."""
    for request, arg in ((PERF_EVENT_IOC_SET_BPF, prog_fd), (PERF_EVENT_IOC_ENABLE, 0)):
        if _libc.ioctl(event_fd, request, arg) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


def cpu_list(path: str) -> list[int]:
    """CPUs of a sysfs list such as "0-3,5" (/sys/devices/system/cpu/online)."""
    cpus: list[int] = []
    try:
        with open(path) as f:
            text = f.read(4096).strip()
    except OSError:
        return [0]
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            cpus.extend(range(int(first), int(last or first) + 1))
    return cpus[:65536] or [0]
