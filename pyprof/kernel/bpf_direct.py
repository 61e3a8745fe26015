"""A cached BPF module (pyprof.kernel.bpf_cache) loaded and attached without bcc: the few parts of bcc's
BPF object that pyprof uses (tables by name with ctypes Key/Leaf, ring buffers, perf-event, raw-tracepoint
and uprobe attachment, cleanup), over the bpf() and perf_event_open() system calls.

Ring buffers are read with libbpf's ring_buffer API (libbpf.so.1: a dependency of bcc's own libbcc, and
small: it does not load LLVM).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Callable, Iterator, Optional

from pyprof.kernel import bpf_syscalls as sys_bpf
from pyprof.kernel.bpf_cache import CacheEntry, MapDef, build_type
from pyprof.procfs.elf import file_offset_of

UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"
EINVAL = 22
# The kernel refuses (EINVAL, "ref_ctr_offset mismatch" in dmesg) a uprobe at an (inode, offset) that
# already has one with another ref_ctr_offset. bcc 0.26's Python binding calls bpf_attach_uprobe with one
# argument too few, and the kernel gets 6 (measured: every bcc-made uprobe on this host); so beside a
# bcc-based tracer (an older pyprof, or this one's bcc fallback) a uprobe is retried with bcc's value.
# The kernel increments a ref_ctr only in a writable private mapping of the file at that offset, and
# offset 6 is the ELF header (a read-only mapping): the target is not written either way.
BCC_REF_CTR_OFFSET = 6
RINGBUF_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_libbpf: Optional[ctypes.CDLL] = None


def libbpf() -> ctypes.CDLL:
    """libbpf.so.1 with the ring_buffer functions typed (OSError when it is not installed)."""
    global _libbpf
    if _libbpf is None:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        lib.ring_buffer__new.restype = ctypes.c_void_p
        lib.ring_buffer__new.argtypes = [ctypes.c_int, RINGBUF_CALLBACK, ctypes.c_void_p, ctypes.c_void_p]
        lib.ring_buffer__poll.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.ring_buffer__consume.argtypes = [ctypes.c_void_p]
        lib.ring_buffer__free.argtypes = [ctypes.c_void_p]
        _libbpf = lib
    return _libbpf


def _open_uprobe(pmu_type: int, path: str, offset: int, pid: int, retprobe: bool, ref_ctr_offset: int) -> int:
    path_buffer = ctypes.create_string_buffer(os.fsencode(path))
    attr = sys_bpf.PerfEventAttr(type=pmu_type, flags=sys_bpf.PERF_FLAG_DISABLED, sample_period=1,
                                 wakeup_events=1, config1=ctypes.addressof(path_buffer), config2=offset,
                                 # format/retprobe is config:0; the ref_ctr_offset is config:32-63
                                 config=(1 if retprobe else 0) | ref_ctr_offset << 32)
    return sys_bpf.perf_event_open(attr, pid if pid > 0 else -1, 0 if pid <= 0 else -1)


class DirectTable:
    """One map: bcc's Table interface as pyprof uses it (keys and values are ctypes objects)."""

    def __init__(self, owner: DirectBpf, definition: MapDef, fd: int) -> None:
        self.owner = owner
        self.name = definition.name
        self.map_fd = fd
        self.Key = build_type(definition.key_type)
        self.Leaf = self.sLeaf = build_type(definition.leaf_type)
        if definition.map_type in sys_bpf.PERCPU_MAP_TYPES:
            # as bcc: Leaf is one value per possible CPU (the kernel pads each to 8 bytes)
            cpus = len(sys_bpf.cpu_list("/sys/devices/system/cpu/possible"))
            stride = (ctypes.sizeof(self.sLeaf) + 7) // 8 * 8
            padded = stride != ctypes.sizeof(self.sLeaf)
            self.Leaf = ctypes.c_char * (stride * cpus) if padded else self.sLeaf * cpus
        self._value_type = self.Leaf

    def _key(self, key: Any) -> Any:
        return key if isinstance(key, ctypes._SimpleCData | ctypes.Structure | ctypes.Union | ctypes.Array) \
            else self.Key(key)

    def __getitem__(self, key: Any) -> Any:
        value = self._value_type()
        if not sys_bpf.map_lookup(self.map_fd, ctypes.addressof(self._key(key)), ctypes.addressof(value)):
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        sys_bpf.map_update(self.map_fd, ctypes.addressof(self._key(key)), ctypes.addressof(value))

    def __delitem__(self, key: Any) -> None:
        if not sys_bpf.map_delete(self.map_fd, ctypes.addressof(self._key(key))):
            raise KeyError(key)

    def keys(self) -> Iterator[Any]:
        previous: Optional[Any] = None
        for _ in range(1 << 24):   # bounded: a map changing under us cannot loop forever
            key = self.Key()
            after = ctypes.addressof(previous) if previous is not None else None
            if not sys_bpf.map_next_key(self.map_fd, after, ctypes.addressof(key)):
                return
            yield key
            previous = key

    def values(self) -> list[Any]:
        out = []
        for key in self.keys():
            try:
                out.append(self[key])
            except KeyError:
                continue
        return out

    def items(self) -> list[tuple[Any, Any]]:
        out = []
        for key in self.keys():
            try:
                out.append((key, self[key]))
            except KeyError:
                continue
        return out

    def open_ring_buffer(self, callback: Callable[[Any, int, int], int]) -> None:
        self.owner.open_ring_buffer(self.map_fd, callback)


class DirectBpf:
    """The loaded maps and programs of a cache entry, and what has been attached to them."""

    def __init__(self, entry: CacheEntry) -> None:
        self.entry = entry
        self.map_fds: list[int] = []
        self.prog_fds: dict[str, int] = {}
        self.tables: dict[str, DirectTable] = {}
        self.perf_event_fds: list[int] = []
        self.tracepoint_fds: list[int] = []
        self.uprobe_fds: dict[bytes, int] = {}
        self._ringbuf: Optional[int] = None
        self._callbacks: list[Any] = []     # ctypes callbacks live as long as the ring buffer

    @classmethod
    def load(cls, entry: CacheEntry) -> DirectBpf:
        """Create the maps, patch their fds into the code and load every program (OSError, or
        sys_bpf.VerifierRejected when the kernel refuses one; nothing stays loaded then)."""
        if any(m.map_type == sys_bpf.MAP_RINGBUF for m in entry.maps):
            libbpf()   # its ring-buffer reader: OSError before anything is created when it is missing
        bpf = cls(entry)
        try:
            for definition in entry.maps:
                bpf.map_fds.append(sys_bpf.map_create(definition.map_type, definition.key_size,
                                                      definition.value_size, definition.max_entries,
                                                      definition.flags, definition.name))
            for function in entry.functions:
                code = bytearray(function.insns)
                for index, map_index in function.map_refs:
                    code[8 * index + 4:8 * index + 8] = bpf.map_fds[map_index].to_bytes(4, "little")
                bpf.prog_fds[function.name] = sys_bpf.prog_load(
                    function.prog_type, function.name, bytes(code), entry.license, entry.kern_version)
        except BaseException:
            bpf.cleanup()
            raise
        return bpf

    def __getitem__(self, name: str | bytes) -> DirectTable:
        key = name.decode() if isinstance(name, bytes) else name
        table = self.tables.get(key)
        if table is None:
            for index, definition in enumerate(self.entry.maps):
                if definition.name == key:
                    table = self.tables[key] = DirectTable(self, definition, self.map_fds[index])
                    break
            else:
                raise KeyError(name)
        return table

    def _prog(self, fn_name: str | bytes) -> int:
        name = fn_name.decode() if isinstance(fn_name, bytes) else fn_name
        fd = self.prog_fds.get(name)
        if fd is None:
            raise Exception(f"Unknown program {name}")   # bcc's own exception type and wording
        return fd

    # ---- attaching (bcc's method names and arguments) ----------------------------------------------
    def attach_perf_event(self, ev_type: int, ev_config: int, fn_name: str | bytes, sample_freq: int = 0,
                          sample_period: int = 0, cpu: int = -1, pid: int = -1) -> None:
        prog_fd = self._prog(fn_name)
        cpus = [cpu] if cpu >= 0 else sys_bpf.cpu_list("/sys/devices/system/cpu/online")
        flags = sys_bpf.PERF_FLAG_DISABLED | (sys_bpf.PERF_FLAG_FREQ if sample_freq else 0)
        for each in cpus:
            attr = sys_bpf.PerfEventAttr(type=ev_type, config=ev_config, flags=flags,
                                         sample_period=sample_freq or sample_period)
            fd = sys_bpf.perf_event_open(attr, pid, each)
            self.perf_event_fds.append(fd)
            sys_bpf.attach_to_perf_event(fd, prog_fd)

    def attach_raw_tracepoint(self, tp: str | bytes, fn_name: str | bytes) -> None:
        name = tp.decode() if isinstance(tp, bytes) else tp
        self.tracepoint_fds.append(sys_bpf.raw_tracepoint_open(name, self._prog(fn_name)))

    def attach_uprobe(self, name: str, addr: int, fn_name: str | bytes, pid: int = -1) -> None:
        self._attach_uprobe(name, addr, fn_name, pid, retprobe=False)

    def attach_uretprobe(self, name: str, addr: int, fn_name: str | bytes, pid: int = -1) -> None:
        self._attach_uprobe(name, addr, fn_name, pid, retprobe=True)

    def _attach_uprobe(self, path: str, addr: int, fn_name: str | bytes, pid: int, retprobe: bool) -> None:
        """A uprobe at link-time address `addr` of the ELF file `path` (as bcc: turned into its file
        offset through the executable PT_LOAD segment that holds it), for process `pid` only."""
        prog_fd = self._prog(fn_name)
        offset = file_offset_of(path, addr)
        if offset is None:
            raise Exception(f"could not determine address of symbol 0x{addr:x} in {path}")
        with open(f"{UPROBE_PMU}/type") as f:
            pmu_type = int(f.read(32))
        try:
            fd = _open_uprobe(pmu_type, path, offset, pid, retprobe, 0)
        except OSError as e:
            if e.errno != EINVAL:
                raise
            fd = _open_uprobe(pmu_type, path, offset, pid, retprobe, BCC_REF_CTR_OFFSET)
        try:
            sys_bpf.attach_to_perf_event(fd, prog_fd)
        except OSError:
            os.close(fd)
            raise
        kind = "r" if retprobe else "p"
        self.uprobe_fds[f"{kind}_{path}_0x{offset:x}_{pid}_{fd}".encode()] = fd

    def detach_uprobes(self, names: list[bytes]) -> None:
        for name in names:
            fd = self.uprobe_fds.pop(name, None)
            if fd is not None:
                os.close(fd)

    # ---- ring buffers ------------------------------------------------------------------------------
    def open_ring_buffer(self, map_fd: int, callback: Callable[[Any, int, int], int]) -> None:
        if self._ringbuf is not None:
            raise Exception("one ring buffer per module (pyprof's programs have one)")
        lib = libbpf()

        def on_record(ctx: Any, data: int, size: int) -> int:
            return callback(ctx, data, size)

        c_callback = RINGBUF_CALLBACK(on_record)
        manager = lib.ring_buffer__new(map_fd, c_callback, None, None)
        if not manager:
            raise Exception("Could not open ring buffer")
        self._callbacks.append(c_callback)
        self._ringbuf = manager

    def ring_buffer_poll(self, timeout: int = -1) -> None:
        if self._ringbuf is None:
            raise Exception("No ring buffers to poll")
        libbpf().ring_buffer__poll(self._ringbuf, timeout)

    def ring_buffer_consume(self) -> None:
        if self._ringbuf is None:
            raise Exception("No ring buffers to poll")
        libbpf().ring_buffer__consume(self._ringbuf)

    def cleanup(self) -> None:
        """Detach and free everything (closing the last fd of a perf event, tracepoint link, program or
        map releases it in the kernel)."""
        if self._ringbuf is not None:
            libbpf().ring_buffer__free(self._ringbuf)
            self._ringbuf = None
        fds = [*self.uprobe_fds.values(), *self.perf_event_fds, *self.tracepoint_fds,
               *self.prog_fds.values(), *self.map_fds]
        self.uprobe_fds.clear()
        self.perf_event_fds, self.tracepoint_fds, self.map_fds = [], [], []
        self.prog_fds.clear()
        self.tables.clear()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
