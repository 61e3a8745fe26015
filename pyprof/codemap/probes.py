"""The nmethod-event uprobes of any number of JVMs through one compiled program (bpf/nmethod_events.c).

Compiling the program costs clang time (about a second of CPU); attaching a uprobe costs almost nothing.
So the program is compiled once per pyprof process, each JVM gets its own pid-filtered uprobes on its own
libjvm, and every event carries the pid it came from: one ring buffer, events routed to the JVM's handler.
A daemon that finds a new JVM therefore stalls sampling for the uprobe attach only, not for a compile.
"""

from __future__ import annotations

import ctypes
from typing import Callable, Optional

from pyprof.errors import SourceUnavailable
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.kernel.bpf_loader import close_bpf, detach_uprobes, load_bpf
from pyprof.kernel.features import uprobes_permitted


class NmethodEvent(ctypes.Structure):
    """One record of the ring buffer `events` (see bpf/nmethod_events.c)."""
    _fields_ = [("time_ns", ctypes.c_uint64), ("address", ctypes.c_uint64), ("arg", ctypes.c_uint64),
                ("tid", ctypes.c_uint32), ("kind", ctypes.c_uint32), ("pid", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


EventHandler = Callable[[NmethodEvent], None]


class NmethodProbes:
    def __init__(self) -> None:
        self._bpf = None
        self._handlers: dict[int, EventHandler] = {}
        self._probe_names: dict[int, list[bytes]] = {}
        self.unrouted = 0     # events of a pid with no handler (a JVM detached a moment ago)

    def _program(self):
        if self._bpf is None:
            bpf = load_bpf("nmethod_events.c")
            try:
                bpf["events"].open_ring_buffer(self._on_event)
            except Exception as e:  # bcc raises plain Exception
                close_bpf(bpf)
                raise SourceUnavailable(f"cannot open the nmethod event ring buffer: {e}") from e
            self._bpf = bpf
        return self._bpf

    def attach(self, jvm: HotSpotJvm, symbols: dict[str, list[str]], handler: EventHandler) -> int:
        """Attach every handler -> libjvm symbols of `symbols` for this JVM only; returns probes attached.
        SourceUnavailable when one cannot be attached (the ones attached so far are removed)."""
        if not uprobes_permitted():   # ask first: bcc would print its tracefs fallback's failure
            raise SourceUnavailable("uprobes on libjvm need CAP_SYS_ADMIN on this kernel: its perf uprobe "
                                    "PMU refuses CAP_PERFMON")
        bpf = self._program()
        before = set(bpf.uprobe_fds)
        self._handlers[jvm.pid] = handler
        try:
            for fn_name, names in symbols.items():
                for name in names:
                    sym = jvm.symbols.lookup(name)
                    if sym is None:
                        continue
                    # By link-time address (bcc turns it into a file offset): local and .part.0 symbols
                    # need no name resolution, and the path is the file the JVM really mapped.
                    bpf.attach_uprobe(name=jvm.libjvm_open_path, addr=sym.value, fn_name=fn_name, pid=jvm.pid)
        except Exception as e:  # bcc raises plain Exception
            self._probe_names[jvm.pid] = [n for n in bpf.uprobe_fds if n not in before]
            self.detach(jvm.pid)
            raise SourceUnavailable(f"cannot attach uprobes to libjvm of {jvm.pid}: {e}") from e
        self._probe_names[jvm.pid] = [n for n in bpf.uprobe_fds if n not in before]
        return len(self._probe_names[jvm.pid])

    def detach(self, pid: int) -> None:
        names = self._probe_names.pop(pid, [])
        self._handlers.pop(pid, None)
        if self._bpf is not None and names:
            detach_uprobes(self._bpf, names)

    def poll(self, timeout_ms: int = 0) -> None:
        """Deliver the events that arrived to their JVMs' handlers."""
        if self._bpf is not None:
            self._bpf.ring_buffer_poll(timeout_ms)

    def _on_event(self, _ctx, data, _size) -> int:
        event = ctypes.cast(data, ctypes.POINTER(NmethodEvent)).contents
        handler = self._handlers.get(event.pid)
        if handler is None:
            self.unrouted += 1
        else:
            handler(event)
        return 0

    @property
    def lost(self) -> int:
        """Events that did not fit in the ring buffer (all JVMs together)."""
        if self._bpf is None:
            return 0
        return sum(v.value for v in self._bpf["lost"].values())

    @property
    def attached_pids(self) -> list[int]:
        return list(self._probe_names)

    def close(self) -> None:
        if self._bpf is not None:
            bpf, self._bpf = self._bpf, None
            close_bpf(bpf)
        self._handlers.clear()
        self._probe_names.clear()


_shared: Optional[NmethodProbes] = None


def shared_probes() -> NmethodProbes:
    """The process's one NmethodProbes (compiled on first use)."""
    global _shared
    if _shared is None:
        _shared = NmethodProbes()
    return _shared
