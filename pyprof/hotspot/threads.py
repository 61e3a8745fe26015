"""JavaThreads of the target, read attach-free: OS tid -> JavaThread*, its Java name, its stack base and
where its last-Java-frame anchor lives.

ThreadsSMRSupport::_java_thread_list -> ThreadsList {_length, _threads[]} -> JavaThread ->
_osthread -> OSThread::_thread_id. JDK 11 does not publish the SMR list: there the threads are the
linked list Threads::_thread_list -> JavaThread::_next (walked with a cap and a loop check).
The anchor (JavaThread::_anchor: _last_Java_sp/pc/fp) is where a
thread that left Java (into the VM, a JNI library or a blocking call) last was in Java code. The BPF
sampler reads it at the moment of each sample (anchor_addresses()); the unwinder resumes Java
unwinding there when native frames have no usable frame pointers.

Virtual threads (21+): JavaThread::_vthread is an OopHandle to the java.lang.Thread the carrier runs
now: the mounted virtual thread, else the carrier's own (the same object as _threadObj). Both handles
point at OopStorage slots that stay put for the thread's life (mounting rewrites the slot, and a GC
updates it), so the BPF sampler is given the two slot addresses and compares what they hold at sample
time; with java.lang.Thread.tid's offset it also reads the mounted virtual thread's id there.

Thread states (the wall-clock profile's `thread_state` label): JavaThread::_thread_state says where the
thread is (in Java, in native code, in the VM, blocked) and OSThread::_state why a blocked thread
waits (sleeping, Object.wait, monitor entry, a parker's or VM monitor's condition variable). The BPF
wall program reads both at the switch through the addresses in anchor_addresses(); state_name() names
the pair with the JVM's own VMStructs constants.

Whoever owns a JavaThreads refreshes it (the profiling session, every 0.5 s); a refresh of an unchanged
thread set reads one pointer. Lookups never read the target (name() reads one thread's name, and its
callers cache it), so they are safe on the per-sample path.
"""

from __future__ import annotations

from typing import Iterable, Optional

from pyprof.errors import MemoryReadError, NoSuchProcess
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.oops import JavaObjects
from pyprof.procfs.process import host_tids, namespace_pid

MAX_THREADS = 100_000


class JavaThreads:
    """The JVM's threads, read incrementally: a refresh costs one or two reads while the thread set is
    unchanged (SMR: the ThreadsList pointer is replaced whenever a thread starts or ends), and a few
    reads per thread that started since the last refresh. Idle threads cost nothing; names are read when
    asked for (only sampled threads are), not at every refresh."""

    def __init__(self, jvm: HotSpotJvm) -> None:
        self.jvm = jvm
        self.r = jvm.reader
        self.lay = jvm.layout
        self._by_tid: dict[int, int] = {}               # host tid -> JavaThread*
        self._tid_of: dict[int, int] = {}               # JavaThread* -> host tid (as last read)
        self._stack_bases: dict[int, int] = {}          # host tid -> stack base
        self._list: Optional[list[int]] = None          # the JavaThread*s of the last refresh
        self._list_address = 0                          # the SMR ThreadsList they came from
        self._anchors: dict[int, tuple[int, ...]] = {}
        self._osthreads: dict[int, int] = {}            # JavaThread* -> its OSThread*
        self._state_names = _state_names(jvm)
        self.changes = 0                                # bumped whenever the thread set changes
        # A JVM in its own pid namespace (a container) knows its threads by that namespace's tids; the
        # kernel, BPF and /proc speak host tids.
        self._namespaced = namespace_pid(jvm.pid) != jvm.pid
        self._host_tid: dict[int, int] = {}
        self.objects = JavaObjects(jvm)
        self.available = self.lay.supports("Java threads")
        self._smr = self.lay.has("ThreadsSMRSupport._java_thread_list")
        self.virtual_threads = (self.lay.has("JavaThread._vthread") and self.lay.thread_obj_is_handle
                                and self.lay.has("OopHandle._obj") and self.objects.available
                                and self.objects.thread_tid_offset() > 0)

    def refresh(self) -> bool:
        """Re-read the thread list; True when the set of threads changed."""
        if not self.available:
            return False
        try:
            if self._smr:
                address = self.r.ptr(self.lay["ThreadsSMRSupport._java_thread_list"].address)
                if address == self._list_address and self._list is not None:
                    return False            # the same ThreadsList: no thread started or ended
                threads = self._smr_list(address)
            else:
                address, threads = 0, self._linked_list()
        except MemoryReadError:
            return False
        if threads is None or threads == self._list:
            return False
        self._update(threads)
        self._list, self._list_address = threads, address
        return True

    def _update(self, threads: list[int]) -> None:
        """Read what is new: tid and stack base of threads not seen before, and the tid again of threads
        seen before (when the list changes, a JavaThread* of an exited thread may have been reused)."""
        lay = self.lay
        by_ns_tid: dict[int, int] = {}
        # two batched reads for the whole list (a server's thousands of threads: a few system calls,
        # not two preads per thread each time one thread starts or ends)
        osthreads = self.r.many([thread + lay.offset("JavaThread._osthread") for thread in threads], 8)
        readable = [(thread, osthread) for thread, osthread in zip(threads, osthreads) if osthread]
        tids = self.r.many([osthread + lay.offset("OSThread._thread_id") for _, osthread in readable], 4,
                           signed=True)
        for (thread, osthread), tid in zip(readable, tids):
            if tid is not None and tid > 0:
                by_ns_tid[tid] = thread
                self._osthreads[thread] = osthread
        by_tid = self._to_host_tids(by_ns_tid) if self._namespaced else by_ns_tid
        bases = {tid: self._stack_bases[tid] for tid, thread in by_tid.items()
                 if self._tid_of.get(thread) == tid and tid in self._stack_bases}
        bases.update(self._read_stack_bases({tid: t for tid, t in by_tid.items() if tid not in bases}))
        # a thread seen before (same JavaThread*, same tid) keeps its addresses: the anchor's are fixed
        # offsets, and its _vthread/_threadObj slots stay put for its life once set. Only new threads
        # (and ones whose slots were not set yet) are read.
        old = self._anchors
        kept = {tid for tid, thread in by_tid.items()
                if self._tid_of.get(thread) == tid and tid in old and old[tid][3] == bases.get(tid, 0)
                and (not self.virtual_threads or old[tid][4])}
        self._by_tid = by_tid
        self._tid_of = {thread: tid for tid, thread in by_tid.items()}
        self._stack_bases = bases
        self._osthreads = {thread: self._osthreads[thread] for thread in by_tid.values()
                           if thread in self._osthreads}
        self._anchors = {tid: old[tid] if tid in kept else
                         (*self._anchor_fields(thread), bases.get(tid, 0), *self._vthread_slots(thread),
                          *self._state_addresses(thread))
                         for tid, thread in by_tid.items()}
        self.changes += 1

    def _to_host_tids(self, by_ns_tid: dict[int, int]) -> dict[int, int]:
        """Keys from the JVM's namespace tids to host tids; /proc/PID/task is re-read only when a thread
        is new (the mapping of a living thread never changes)."""
        if any(tid not in self._host_tid for tid in by_ns_tid):
            try:
                self._host_tid = host_tids(self.jvm.pid)
            except NoSuchProcess:
                return {}
        return {self._host_tid[tid]: thread for tid, thread in by_ns_tid.items() if tid in self._host_tid}

    def _smr_list(self, tlist: int) -> Optional[list[int]]:
        """JavaThread*s of the ThreadsList at `tlist` (12+), or None when its length is implausible."""
        lay = self.lay
        count = self.r.u32(tlist + lay.offset("ThreadsList._length"))
        array = self.r.ptr(tlist + lay.offset("ThreadsList._threads"))
        if not 0 <= count <= MAX_THREADS:
            return None
        pointers = self.r.bytes(array, 8 * count) if count else b""
        return [int.from_bytes(pointers[8 * i : 8 * i + 8], "little") for i in range(count)]

    def _linked_list(self) -> Optional[list[int]]:
        """JavaThread*s along Threads::_thread_list / JavaThread::_next (11). The list changes under the
        JVM's Threads_lock, which a reader outside cannot take: stop at a repeat, a null or the cap."""
        lay = self.lay
        next_off = lay.offset("JavaThread._next")
        thread = self.r.ptr(lay["Threads._thread_list"].address)
        seen: list[int] = []
        visited: set[int] = set()
        while thread and thread not in visited and len(seen) < MAX_THREADS:
            visited.add(thread)
            seen.append(thread)
            try:
                thread = self.r.ptr(thread + next_off)
            except MemoryReadError:   # a thread freed while we read: keep those seen so far
                break
        return seen

    def _read_stack_bases(self, by_tid: dict[int, int]) -> dict[int, int]:
        """Thread::_stack_base: the top (highest address) of each thread's stack."""
        if not self.lay.has("JavaThread._stack_base"):
            return {}
        off = self.lay.offset("JavaThread._stack_base")
        out = {}
        for tid, thread in by_tid.items():
            try:
                out[tid] = self.r.ptr(thread + off)
            except MemoryReadError:
                continue
        return out

    def name(self, tid: int) -> Optional[str]:
        """The Java name of thread `tid`, read now (None: not a Java thread as of the last refresh, or
        unreadable). Callers cache it (ThreadNames, per sampled thread and second)."""
        thread = self._by_tid.get(tid)
        return self.objects.thread_name(thread) if thread is not None else None

    def is_java_thread(self, tid: int) -> bool:
        """As of the last refresh."""
        return tid in self._by_tid

    def tids(self) -> list[int]:
        return list(self._by_tid)

    def anchor_addresses(self) -> dict[int, tuple[int, ...]]:
        """tid -> addresses of its JavaThread's _last_Java_sp, _pc and _fp, its stack base, the OopStorage
        slots of its _vthread and _threadObj and the offset of java.lang.Thread.tid (these three 0
        where virtual threads are not readable), then of its _thread_state and OSThread::_state (0 when
        not published) for the BPF sampler, which reads the anchor and the
        mounted virtual thread at the moment of each sample and copies the stack up to the base."""
        return self._anchors

    def _vthread_slots(self, thread: int) -> tuple[int, int, int]:
        """(_vthread slot, _threadObj slot, Thread.tid offset), or zeros (before 21, or unreadable)."""
        if not self.virtual_threads:
            return 0, 0, 0
        lay = self.lay
        obj = lay.offset("OopHandle._obj")
        try:
            vthread = self.r.ptr(thread + lay.offset("JavaThread._vthread") + obj)
            carrier = self.r.ptr(thread + lay.offset("JavaThread._threadObj") + obj)
        except MemoryReadError:
            return 0, 0, 0
        if not (vthread and carrier):
            return 0, 0, 0
        return vthread, carrier, self.objects.thread_tid_offset()

    def _state_addresses(self, thread: int) -> tuple[int, int]:
        """(&JavaThread::_thread_state, &OSThread::_state), 0 for what VMStructs does not publish."""
        lay = self.lay
        java = thread + lay.offset("JavaThread._thread_state") if lay.has("JavaThread._thread_state") else 0
        osthread = self._osthreads.get(thread, 0)
        os = osthread + lay.offset("OSThread._state") if osthread and lay.has("OSThread._state") else 0
        return java, os

    def state_name(self, state: int, frame_names: Iterable[str] = ()) -> str:
        """The name of a state the wall program read (_thread_state | OSThread::_state << 16): "java",
        "native", "vm", "sleeping", "waiting" (Object.wait), "blocked" (monitor entry), "parked" (a
        condition variable: LockSupport.park and the VM's own monitors), "blocked" otherwise; "" when
        nothing was read (not a Java thread, or fields not published).

        Thread.sleep waits on a condition variable like park does (os::sleep / JavaThread::sleep set
        CONDVAR_WAIT over JVM_Sleep's SLEEPING on 11 to 25), so a "parked" thread with Thread.sleep in
        its stack (`frame_names`, the sample's function names) is "sleeping"."""
        name = self._state_names(state & 0xFFFF, state >> 16)
        if name == "parked" and any(n.startswith(_SLEEP_METHOD) for n in frame_names):
            return "sleeping"
        return name

    def _anchor_fields(self, thread: int) -> tuple[int, int, int]:
        lay = self.lay
        anchor = thread + lay.offset("JavaThread._anchor")
        return tuple(anchor + lay.offset(f"JavaFrameAnchor._last_Java_{k}")  # type: ignore[return-value]
                     for k in ("sp", "pc", "fp"))


# JavaThreadState (globalDefinitions.hpp; odd values are the transitions "..._trans") and OSThread's
# ThreadState (osThread.hpp): named by the JVM's VMStructs constants, these defaults where not published.
_SLEEP_METHOD = "java.lang.Thread.sleep"   # sleep (11-19), sleep0 / sleepNanos (21+)
_JAVA_STATES = {"_thread_in_native": 4, "_thread_in_vm": 6, "_thread_in_Java": 8, "_thread_blocked": 10}
_OS_STATES = {"MONITOR_WAIT": 3, "CONDVAR_WAIT": 4, "OBJECT_WAIT": 5, "SLEEPING": 7}
_BLOCKED_WHY = {"MONITOR_WAIT": "blocked", "CONDVAR_WAIT": "parked", "OBJECT_WAIT": "waiting",
                "SLEEPING": "sleeping"}
_WHERE = {"_thread_in_native": "native", "_thread_in_vm": "vm", "_thread_in_Java": "java"}


def _state_names(jvm: HotSpotJvm):
    """A function (java state, os state) -> name, built from this JVM's constants."""
    vm = jvm.layout.vm
    java = {vm.constant(name) if vm.constant(name) is not None else value: name
            for name, value in _JAVA_STATES.items()}
    os = {vm.constant(name) if vm.constant(name) is not None else value: name
          for name, value in _OS_STATES.items()}

    def name(java_state: int, os_state: int) -> str:
        if not java_state:
            return ""
        why = _BLOCKED_WHY.get(os.get(os_state, ""))
        if why is not None:   # the OSThread state says why it waits, whatever the Java-level state
            return why
        where = java.get(java_state & ~1)   # a transition state counts as the state it leaves
        if where == "_thread_blocked":
            return "blocked"
        return _WHERE.get(where or "", "other")
    return name
