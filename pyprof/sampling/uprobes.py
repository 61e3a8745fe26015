"""Per-JVM uprobes of the event programs (alloc, lock) on that JVM's own libjvm.

Like the code-cache probes (pyprof/codemap/probes.py): one compiled module serves every JVM; each JVM
gets pid-filtered uprobes on the libjvm file it really mapped (/proc/PID/map_files, or its root for a
container), placed by link-time address (the functions are local .symtab symbols, which bcc's name
lookup does not see).
"""

from __future__ import annotations

from pyprof.errors import MissingKernelFeature, NotAJvm, SourceUnavailable, UnsupportedJvm
from pyprof.hotspot.layout import event_probe_symbols
from pyprof.kernel.bpf_loader import detach_uprobes
from pyprof.kernel.features import uprobes_permitted
from pyprof.procfs.elf import Symbol, load_symbols_cached
from pyprof.procfs.maps import library_entries, open_mapped_file, read_maps


def libjvm_functions(pid: int, event: str) -> tuple[str, dict[str, Symbol]]:
    """(the path that opens the JVM's libjvm, program function -> libjvm symbol) for `event`."""
    entries = library_entries(read_maps(pid), "libjvm.so")
    if not entries:
        raise NotAJvm(f"process {pid} has no libjvm.so mapped")
    _how, path = open_mapped_file(pid, entries)
    try:
        symbols = load_symbols_cached(str(path))
    except OSError as e:
        raise NotAJvm(f"cannot read libjvm.so of process {pid}: {e}") from e
    return str(path), event_probe_symbols(symbols, event)


class LibjvmUprobes:
    """The uprobes one event program attached, per pid (to detach them when that JVM goes)."""

    def __init__(self, event: str, entry_functions: tuple[str, ...], return_functions: tuple[str, ...] = ()):
        self.event = event
        self.entry_functions = entry_functions     # program functions attached at entry
        self.return_functions = return_functions   # attached at return too (as fn_name + "_return")
        self.attached: dict[int, list[bytes]] = {}
        self.symbols: dict[int, dict[str, str]] = {}   # pid -> program function -> libjvm symbol name

    def attach(self, bpf, pid: int) -> int:
        """Attach this event's uprobes to JVM `pid`; returns how many. SourceUnavailable when the kernel
        refuses uprobes, UnsupportedJvm when this libjvm lacks a function the event needs (nothing stays
        attached)."""
        if pid in self.attached:   # Sampler.start() and add_target() may both name the same pid
            return len(self.attached[pid])
        if not uprobes_permitted():
            raise MissingKernelFeature("uprobes on libjvm need CAP_SYS_ADMIN on this kernel: its perf uprobe "
                                       "PMU refuses CAP_PERFMON")
        path, found = libjvm_functions(pid, self.event)
        missing = [fn for fn in self.entry_functions if fn not in found]
        if missing:
            raise UnsupportedJvm(f"-e {self.event}: libjvm of {pid} lacks {', '.join(missing)}'s function "
                                    "(stripped libjvm, or an unknown JDK)")
        before = set(bpf.uprobe_fds)
        try:
            for fn in self.entry_functions:
                bpf.attach_uprobe(name=path, addr=found[fn].value, fn_name=fn, pid=pid)
            for fn in self.return_functions:
                bpf.attach_uretprobe(name=path, addr=found[fn].value, fn_name=fn + "_return", pid=pid)
        except Exception as e:  # bcc raises plain Exception
            detach_uprobes(bpf, [n for n in bpf.uprobe_fds if n not in before])
            raise SourceUnavailable(f"-e {self.event}: cannot attach uprobes to libjvm of {pid}: {e}") from e
        self.attached[pid] = [n for n in bpf.uprobe_fds if n not in before]
        self.symbols[pid] = {fn: sym.name for fn, sym in found.items()}
        return len(self.attached[pid])

    def detach(self, bpf, pid: int) -> None:
        names = self.attached.pop(pid, [])
        self.symbols.pop(pid, None)
        if names:
            detach_uprobes(bpf, names)
