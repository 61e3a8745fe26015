"""The hybrid unwinder: a raw eBPF sample (registers + a copy of the top of the user stack) -> frames.

Per frame, by what the PC points into (x86_64; see ../shared/docs/hotspot-facts.md "Interpreter and
frames"):
- an nmethod or a RuntimeStub/singleton blob with a frame size: sender_sp = sp + 8*frame_size, the
  return address at sender_sp - 8 and the saved rbp at sender_sp - 16 (C2 code does not keep rbp as a
  frame pointer, so rbp is only trusted when it was saved). In the prologue of the *top* frame
  (pc < code_begin + frame_complete_offset) only the return address is on the stack.
- the interpreter: Method* and bcp in fixed slots below rbp; caller = [rbp+8], its sp = sender_sp slot.
- the call stub (entry frame) and BufferBlob stubs: standard rbp frames.
- native code (libjvm, libc, JNI libraries): frame pointers while they look sane; when they do not,
  the JavaThread's last-Java-frame anchor says where the thread left Java, and unwinding resumes there.
- kernel frames come from the eBPF program (bpf_get_stack), innermost first.

Every read is bounded: a depth cap, stack-bound checks (the stack grows down, so each caller's sp must
be above the callee's), and a frame that cannot be named becomes a counted `[unknown]` frame.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from pyprof.errors import MemoryReadError
from pyprof.hotspot.codecache import BlobKind, CodeBlobInfo
from pyprof.hotspot.debuginfo import DebugInfo
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.method import MethodInfo, MethodResolver
from pyprof.hotspot.threads import JavaThreads
from pyprof.lru import LRUCache
from pyprof.model import FrameKind, LogicalFrame, PhysicalFrame
from pyprof.symbols import cfi

MAX_DEPTH = 1024                # physical frames (framework stacks reach 300+ Java frames)
MAX_FRAME_BYTES = 1 << 20       # no single frame larger than 1 MiB
WORD = 8
LIVE_CHUNK = 4096               # the live stack beyond the copy is read a page at a time ...
LIVE_READ_LIMIT = 64            # ... at most this many pages per sample (256 KiB)
WEAK, STRONG = 1, 2             # how sure a candidate return address is (Unwinder._return_strength)
OVERLAP = 1024                  # bytes at the end of the copy compared with live memory before using it
COPY_LINKS = 4                  # ... or, where they changed, the last frame slots the walk read in the copy
MAX_STACK_SPAN = 64 << 20       # a Java thread's stack is at most this deep (-Xss caps at 1 GiB; 64 MiB is
                                # generous): an anchor further away than that is garbage
_U64 = struct.Struct("<Q")


class StackSample(Protocol):
    """What the unwinder needs of a raw sample (pyprof.sampling.sampler.RawSample)."""

    tid: int
    time_ns: int
    ip: int
    sp: int
    bp: int
    r13: int
    stack: bytes
    kernel_ips: tuple
    anchor_sp: int
    anchor_pc: int
    anchor_fp: int


@dataclass
class UnwindStats:
    samples: int = 0
    frames: int = 0
    reached_root: int = 0
    java_samples: int = 0
    java_reached_root: int = 0
    unknown_frames: Counter = field(default_factory=Counter)
    live_reads: int = 0
    anchor_used: int = 0
    anchor_starts: int = 0        # java_only walks begun at the anchor (VM frames below it not walked)
    deoptimized_frames: int = 0
    cfi_steps: int = 0            # native frames unwound with DWARF CFI
    fp_steps: int = 0             # native frames unwound with frame pointers (no CFI there)
    stub_steps: int = 0           # frameless or framed JVM stubs unwound to a verified caller
    rejected_callers: int = 0     # return addresses into compiled code that were no call site of it
    truncated_stacks: int = 0     # stacks deeper than the copy + live reads (or MAX_DEPTH): root end marked
    live_completed: int = 0       # stacks that reached their root only thanks to reads of live memory
    live_refused: int = 0         # live stacks not used: changed since the sample (see _StackReader)

    def as_dict(self) -> dict:
        """The counters for a summary (JSON)."""
        return {"samples": self.samples, "java_samples": self.java_samples,
                "java_reached_root": self.java_reached_root, "anchor_used": self.anchor_used,
                "anchor_starts": self.anchor_starts, "deoptimized_frames": self.deoptimized_frames,
                "live_stack_reads": self.live_reads,
                "cfi_steps": self.cfi_steps, "fp_steps": self.fp_steps, "stub_steps": self.stub_steps,
                "rejected_callers": self.rejected_callers, "truncated_stacks": self.truncated_stacks,
                "live_completed": self.live_completed, "live_refused": self.live_refused,
                "unknown_frame_reasons": dict(self.unknown_frames)}

    @property
    def unknown_total(self) -> int:
        return sum(self.unknown_frames.values())


# Where a thread's stack ends. libc (start_thread, clone3) is built without frame pointers, so the walk
# usually stops one frame earlier, at the entry function HotSpot or the java launcher gave the thread:
# thread_native_entry (every thread the JVM starts) or ThreadJavaMain (the launcher's Java main thread).
ROOT_SYMBOLS = ("start_thread", "clone3", "__clone3", "clone", "__clone", "_start", "__libc_start_main",
                "__libc_start_call_main", "thread_native_entry", "ThreadJavaMain")


# Kernel entry points of a breakpoint trap: the user pc is then one byte past the int3.
BREAKPOINT_HANDLERS = frozenset(("asm_exc_int3", "exc_int3", "do_int3", "do_int3_user"))
# ... and of the debug trap a uprobe's single-step raises: the user pc is then in the uprobe's
# out-of-line slot (the `[uprobes]` page, no file), just after the probed function's first instruction.
SINGLE_STEP_HANDLERS = frozenset(("asm_exc_debug", "exc_debug", "exc_debug_user", "noist_exc_debug"))
UPROBE_STEP = LogicalFrame("[uprobe single-step]", FrameKind.NATIVE, "uprobe out-of-line single-step")

# C1's slow subtype check stub (Runtime1 slow_subtype_check: "slow_subtype_check Runtime1 stub" on JDK 17,
# "C1 Runtime slow_subtype_check_blob" on 21+): how many words above its sp its return address may be,
# and the arguments its caller pushed before calling it.
SUBTYPE_CHECK_STUB = "slow_subtype_check"
SUBTYPE_CHECK_SLOTS = 12
SUBTYPE_CHECK_ARGS = 2
ENTRY_BARRIER_COOKIE = (1 << 64) - 1    # the -1 StubRoutines::method_entry_barrier pushes before enter()

INTERPRETER_ENTRY = LogicalFrame("[Interpreter]", FrameKind.JVM_STUB, "interpreter method entry")

# The root end of a stack the walk could not finish within its bounds (deeper than the copy plus the
# live-read budget, or MAX_DEPTH frames): marked, never joined to anything.
TRUNCATED_FRAME = PhysicalFrame(
    0, (LogicalFrame("[truncated]", FrameKind.UNKNOWN, "stack deeper than read"),))


class _Cursor:
    """Where the walk is: one per frame of every sample, so a plain slotted class (a dataclass's
    generated __init__ and attribute dict cost measurably on the hot path)."""

    __slots__ = ("pc", "sp", "fp", "top", "trusted", "after_trap", "single_step", "blob", "blob_known")

    def __init__(self, pc: int, sp: int, fp: int, top: bool = True, trusted: bool = False,
                 after_trap: bool = False, single_step: bool = False) -> None:
        self.pc = pc
        self.sp = sp
        self.fp = fp
        self.top = top
        self.trusted = trusted    # from the JavaThread's anchor: HotSpot's own record, no return address
        self.after_trap = after_trap    # the sample came while the kernel handled a breakpoint at pc - 1
        self.single_step = single_step  # ... or the debug trap of a uprobe's out-of-line single-step
        self.blob: Optional[CodeBlobInfo] = None   # the code blob at pc, when already looked up (blob_known)
        self.blob_known = False

    def __repr__(self) -> str:
        return f"_Cursor(pc=0x{self.pc:x}, sp=0x{self.sp:x}, fp=0x{self.fp:x}, top={self.top})"


class _Walk:
    """The state of one sample's walk."""

    def __init__(self, sample: StackSample) -> None:
        self.saw_java = False
        self.reached_root = False
        self.truncated = False
        anchored = sample.anchor_sp > sample.sp and sample.anchor_sp - sample.sp < MAX_STACK_SPAN
        self.anchor: Optional[_Cursor] = None
        if anchored:
            self.anchor = _Cursor(sample.anchor_pc, sample.anchor_sp, sample.anchor_fp, False, trusted=True)


def _tier_kind(level: int) -> FrameKind:
    if level == 0:
        return FrameKind.NATIVE_METHOD
    return FrameKind.C2 if level == 4 else FrameKind.C1


class Unwinder:
    def __init__(self, jvm: HotSpotJvm, lookup_blob: Callable[[int, int], Optional[CodeBlobInfo]],
                 resolver: MethodResolver, threads: JavaThreads, native_symbolizer=None,
                 kernel_symbols=None) -> None:
        self.jvm = jvm
        self.r = jvm.reader
        self.lookup_blob = lookup_blob
        self.resolver = resolver
        self.threads = threads
        self.natives = native_symbolizer
        self.kernel = kernel_symbols
        self.stats = UnwindStats()
        self.debug = DebugInfo(jvm.reader, jvm.layout, resolver)
        slots = jvm.layout.interpreter_frame_slots()
        self.slot_method = slots["method"] * WORD
        self.slot_bcp = slots["bcp"] * WORD
        self.slot_sender_sp = slots["sender_sp"] * WORD
        self.call_stub_return = self._static_pointer("StubRoutines._call_stub_return_address")
        self._compiled_frames: LRUCache[tuple[int, int], PhysicalFrame] = LRUCache(
            "pc -> compiled frame", 500_000)
        self._partial_slots: LRUCache[tuple[int, int, int], Optional[int]] = LRUCache(
            "pc -> prologue/epilogue slot", 200_000)
        self._native_frames: LRUCache[int, tuple[PhysicalFrame, bool]] = LRUCache(
            "pc -> native frame", 500_000)
        self._call_sites: LRUCache[tuple[int, int, int], bool] = LRUCache("return address -> call site",
                                                                          200_000)
        self._cfi_rules: LRUCache[int, Optional[cfi.Rule]] = LRUCache("pc -> CFI rule", 200_000)
        self._kernel_frames: LRUCache[int, PhysicalFrame] = LRUCache("pc -> kernel frame", 100_000)
        self._method_frames: LRUCache[tuple[int, FrameKind, int, bool], LogicalFrame] = LRUCache(
            "method -> logical frame", 500_000)
        self._native_code: LRUCache[int, bool] = LRUCache("pc -> in native code", 200_000)
        # planned steps (_planned_step): plain dicts, cleared when full (they refill from the pcs hit)
        self._java_plans: dict[tuple[int, int, int, bool], tuple] = {}
        self._native_plans: dict[object, tuple] = {}     # pc (a caller's), or (pc, after a trap) at the top
        self._accepted_callers: dict[tuple[int, int, int], bool] = {}   # nmethod call sites seen
        # Method* -> (validated at, in CLOCK_MONOTONIC ns like sample times; metadata generation; method)
        self._validated_methods: dict[int, tuple[int, int, MethodInfo]] = {}
        self._trap_ips: set[int] = set()    # kernel pcs in a breakpoint handler (BREAKPOINT_HANDLERS)
        self._single_step_ips: set[int] = set()   # kernel pcs in the debug trap (SINGLE_STEP_HANDLERS)
        # (pc, Method*, ConstMethod*, bcp, metadata generation) -> interpreted frame: the line lookup and
        # the frame object once per position (the Method* itself is validated by _method)
        self._interpreted_frames: LRUCache[tuple[int, int, int, int, int], PhysicalFrame] = LRUCache(
            "interpreter position -> frame", 200_000)

    def _static_pointer(self, key: str) -> int:
        try:
            return self.r.ptr(self.jvm.layout[key].address) if self.jvm.layout.has(key) else 0
        except MemoryReadError:
            return 0

    # ---- entry point -----------------------------------------------------------------------------
    def unwind(self, sample: StackSample, java_only: bool = False) -> tuple[PhysicalFrame, ...]:
        """Frames of one sample, leaf first (kernel frames, then user frames).

        java_only: the caller keeps only the stack from its innermost Java frame on (events.java_part:
        alloc). A sample taken in the VM (a uprobe in libjvm) then starts at the JavaThread's anchor,
        HotSpot's own record of its last Java frame, instead of walking the kernel and VM frames below
        it by CFI only to drop them: the same Java frames at a fraction of the cost."""
        self.stats.samples += 1
        if sample.sp == 0:
            known = self._kernel_frames.peek
            frames = [known(ip) or self._kernel_frame(ip) for ip in sample.kernel_ips]
            frames.append(self.unknown_frame("no user registers"))
            self.stats.frames += len(frames)
            return tuple(frames)
        reader = _StackReader(sample, self.r, self.stats)
        walk = _Walk(sample)
        cursor: Optional[_Cursor]
        if java_only and walk.anchor is not None:
            frames: list[PhysicalFrame] = []
            cursor, walk.anchor = walk.anchor, None
            if cursor.pc == 0:    # HotSpot left last_Java_pc unset: the return address below its sp
                cursor.pc = reader.word(cursor.sp - WORD) or 0
            self.stats.anchor_starts += 1
            walk.saw_java = True
        else:
            known = self._kernel_frames.peek
            frames = [known(ip) or self._kernel_frame(ip) for ip in sample.kernel_ips]
            kernel_ips = sample.kernel_ips
            trap = bool(self._trap_ips) and not self._trap_ips.isdisjoint(kernel_ips)
            step = bool(self._single_step_ips) and not self._single_step_ips.isdisjoint(kernel_ips)
            cursor = _Cursor(sample.ip, sample.sp, sample.bp, after_trap=trap, single_step=step)
        for _ in range(MAX_DEPTH):
            if cursor is None:
                break
            if cursor.pc == 0:
                walk.reached_root = True   # the outermost frame's return address slot is zero
                break
            if walk.anchor is not None and not cursor.top and cursor.sp >= walk.anchor.sp:
                walk.anchor = None     # the walk is past the anchored frame: the anchor cannot help any more
            stepped = self._planned_step(cursor, reader, walk, sample.time_ns)
            frame, nxt = stepped if stepped is not None else self._step(cursor, reader, sample, walk)
            frames.append(frame)
            if walk.reached_root or nxt is None:
                break
            if reader.used_live and frame.frames[0].kind is FrameKind.UNKNOWN:
                break      # live memory led nowhere: it had changed after all; the stack is truncated
            if nxt.sp <= cursor.sp or nxt.sp - cursor.sp > MAX_FRAME_BYTES:
                frames.append(self.unknown_frame("stack went backwards"))
                break
            nxt.blob = self.lookup_blob(nxt.pc, sample.time_ns)     # looked up once per frame
            nxt.blob_known = True
            from_interpreter = cursor.blob is not None and cursor.blob.kind is BlobKind.INTERPRETER
            # an interpreted frame's link to its caller is HotSpot's own frame structure (also for frames
            # the deoptimizer built), not a guess: only the other steps' callers are checked
            if not nxt.trusted and not from_interpreter and (
                    _native_caller_of_java(cursor.blob, nxt.pc, nxt.blob)
                    or not self._accept_caller(nxt.pc, sample.time_ns, nxt.blob)):
                # a compiled "caller" at a pc that is no call site of it: a stale or misread return
                # address. Joining it would invent a caller chain; the stack ends here instead.
                self.stats.rejected_callers += 1
                frames.append(self.unknown_frame("return address is no call site"))
                break
            cursor = nxt
        else:
            walk.truncated = True
        if not walk.reached_root and (walk.truncated or reader.used_live or reader.exhausted):
            self._mark_truncated(frames)
        elif walk.reached_root and reader.used_live:
            self.stats.live_completed += 1
        self._count(sample, frames, walk)
        return tuple(frames)

    # ---- planned steps: a frame seen before is one dict lookup -------------------------------------
    def _planned_step(self, cur: _Cursor, reader: _StackReader, walk: _Walk, time_ns: int
                      ) -> Optional[tuple[PhysicalFrame, Optional[_Cursor]]]:
        """The step from a frame whose pc was stepped from before, when its kind of step needs nothing
        but its pc: a compiled frame with a frame size (in the top frame: the prologue or epilogue slot
        too), the call stub's return, or native code with a CFI rule or frame pointers (where a pending
        anchor would take over, _step does it). The frame and the step's constants are planned once per
        pc (per nmethod and compile id, per top or caller frame) and reused; the words read and the
        cursor built are exactly _step's. None: not such a frame, a top frame whose caller does not
        check out, or a walk that goes on at the anchor; _step decides (every other case and failure)."""
        if not cur.blob_known:       # the top frame (the walk looks up every caller's blob)
            cur.blob = self.lookup_blob(cur.pc, time_ns)
            cur.blob_known = True
        blob = cur.blob
        if blob is None:
            key = cur.pc if not cur.top else (cur.pc, cur.after_trap)
            plan = self._native_plans.get(key)
            if plan is None:
                lookup_pc = self._native_lookup_pc(cur)
                plan = self._plan_native(key, lookup_pc, cur.pc)
            if plan is _UNPLANNED:
                return None
            frame, rule = plan
            if rule is _ROOT:
                walk.reached_root = True    # the thread's entry function, or CFI without a return address
                return frame, None
            nxt = self._cfi_step(rule, cur, reader) if rule is not None else self._fp_step(cur, reader)
            if walk.anchor is not None and self._leaves_native(nxt, walk, time_ns):
                return None     # _step goes on at the anchor
            if rule is None:
                self.stats.fp_steps += 1
            elif nxt is not None:
                self.stats.cfi_steps += 1
            return frame, nxt
        key = (cur.pc, blob.address, blob.compile_id, cur.top)
        plan = self._java_plans.get(key)
        if plan is None:
            plan = self._plan_java(cur, blob, key)
        if plan is _UNPLANNED:
            return None
        frame, frame_bytes, is_java, slot = plan
        if not frame_bytes:
            # the call stub's return: an rbp frame, whatever the pc's frame size (_java_step)
            if is_java:
                walk.saw_java = True
            return frame, self._fp_step(cur, reader)
        if slot is not None:
            nxt = _slot_caller(cur, reader, slot)
        else:
            sender_sp = cur.sp + frame_bytes
            ret = reader.word(sender_sp - WORD)
            saved_fp = reader.word(sender_sp - 2 * WORD)
            if ret is None:
                nxt = None
            else:
                nxt = _Cursor(ret, sender_sp, saved_fp if saved_fp is not None else cur.fp, top=False)
        if cur.top and nxt is not None and not self._java_caller_strength(blob, nxt.pc, time_ns):
            return None     # _java_step looks for another caller
        if is_java:
            walk.saw_java = True
        return frame, nxt

    def _plan_java(self, cur: _Cursor, blob: CodeBlobInfo, key: tuple[int, int, int, bool]) -> tuple:
        """What _java_step does at pc when that needs nothing but the pc: a sized step (frame bytes > 0),
        or the call stub's return (frame bytes 0: an rbp frame). Not the interpreter, not a deoptimized
        caller frame (at its deopt handler), not stubs without a frame size."""
        pc = cur.pc
        plan: tuple = _UNPLANNED
        if blob.kind is BlobKind.INTERPRETER or \
                (not cur.top and blob.is_nmethod and blob.deopt_handler and pc == blob.deopt_handler) or \
                (cur.top and SUBTYPE_CHECK_STUB in blob.name):
            pass
        elif pc == self.call_stub_return:
            plan = (self._compiled_frame(blob, pc), 0, blob.is_nmethod, None)
        elif blob.frame_size > 0:
            slot = self._partial_frame_slot(blob, pc) if cur.top else None
            plan = (self._compiled_frame(blob, pc), WORD * blob.frame_size, blob.is_nmethod, slot)
        return _bounded_put(self._java_plans, key, plan)

    def _plan_native(self, key: object, lookup_pc: int, pc: int) -> tuple:
        """What _native_step does for native code at pc: a named frame (not unknown) that is a thread's
        root (rule _ROOT), or is stepped with its CFA rule, or with frame pointers where there is no CFI
        (rule None)."""
        plan: tuple = _UNPLANNED
        frame, is_root = self._native_frame(lookup_pc, pc)
        if frame.frames[0].kind is FrameKind.UNKNOWN:
            pass
        elif is_root:
            plan = (frame, _ROOT)
        else:
            rule = self._cfi_rule(lookup_pc)
            if rule is not None and rule.kind == cfi.ROOT:
                plan = (frame, _ROOT)
            elif rule is None or rule.kind in (cfi.CFA_RSP, cfi.CFA_RBP, cfi.CFA_PLT):
                plan = (frame, rule)
        return _bounded_put(self._native_plans, key, plan)

    def _step(self, cursor: _Cursor, reader: _StackReader, sample: StackSample, walk: _Walk
              ) -> tuple[PhysicalFrame, Optional[_Cursor]]:
        if not cursor.blob_known:
            cursor.blob, cursor.blob_known = self.lookup_blob(cursor.pc, sample.time_ns), True
        blob = cursor.blob
        if blob is not None:
            walk.saw_java |= blob.is_nmethod or blob.kind is BlobKind.INTERPRETER
            return self._java_step(blob, cursor, reader, sample)
        if cursor.single_step and cursor.top and not self._is_native_code(cursor.pc):
            return self._uprobe_step(cursor, reader, sample)
        frame, nxt, is_root = self._native_step(cursor, reader)
        if is_root:
            walk.reached_root = True
            return frame, None
        if walk.anchor is not None and self._leaves_native(nxt, walk, sample.time_ns):
            # Native code without usable frame pointers (JNI libraries, libc): the thread's last Java
            # frame, recorded by HotSpot when it left Java and read at sample time, is where Java resumes.
            nxt, walk.anchor = walk.anchor, None
            self.stats.anchor_used += 1
            walk.saw_java = True
            if nxt.pc == 0:
                nxt.pc = reader.word(nxt.sp - WORD) or 0
        return frame, nxt

    def _uprobe_step(self, cur: _Cursor, reader: _StackReader, sample: StackSample
                     ) -> tuple[PhysicalFrame, Optional[_Cursor]]:
        """The top pc in a uprobe's out-of-line slot (pyprof's own probes on libjvm): the probed
        function's first instruction has just run there, so its return address is at [sp] (or [sp+8]
        after a `push rbp`); rbp is still the caller's and [rbp+8] would skip the caller."""
        found = self._choose([], self._frameless_candidates(cur, reader), sample.time_ns, reader)
        return PhysicalFrame(cur.pc, (UPROBE_STEP,)), found

    def _leaves_native(self, nxt: Optional[_Cursor], walk: _Walk, time_ns: int) -> bool:
        """Should the walk continue at the anchor instead of at `nxt` (the frame-pointer step)?"""
        assert walk.anchor is not None
        if nxt is None or nxt.sp >= walk.anchor.sp:
            return True
        return self.lookup_blob(nxt.pc, time_ns) is None and not self._is_native_code(nxt.pc)

    def _is_native_code(self, pc: int) -> bool:
        """Is pc in a mapped native file? Memoized when it is (a mapping does not move; a pc that is in
        none is asked again: a library may be mapped since)."""
        if self.natives is None:
            return False
        if self._native_code.get(pc):
            return True
        if self.natives.symbolize(pc) is None:
            return False
        self._native_code.put(pc, True)
        return True

    def _mark_truncated(self, frames: list[PhysicalFrame]) -> None:
        """A walk that went on beyond the copy (in live memory, which the thread has changed since the
        sample) or past MAX_DEPTH and did not reach the root: its root end is marked `[truncated]`,
        replacing the unknown frames the live part ended in (they say nothing about the sample)."""
        while frames and frames[-1].frames[0].kind is FrameKind.UNKNOWN and len(frames) > 1:
            why = frames.pop().frames[0].system_name
            if self.stats.unknown_frames[why] > 0:
                self.stats.unknown_frames[why] -= 1
        self.stats.truncated_stacks += 1
        frames.append(TRUNCATED_FRAME)

    def _count(self, sample: StackSample, frames: list[PhysicalFrame], walk: _Walk) -> None:
        self.stats.frames += len(frames)
        self.stats.reached_root += walk.reached_root
        if walk.saw_java or self.threads.is_java_thread(sample.tid):
            self.stats.java_samples += 1
            self.stats.java_reached_root += walk.reached_root

    # ---- Java and stub frames --------------------------------------------------------------------
    def _java_step(self, blob: CodeBlobInfo, cur: _Cursor, reader: _StackReader,
                   sample: StackSample) -> tuple[PhysicalFrame, Optional[_Cursor]]:
        if blob.kind is BlobKind.INTERPRETER:
            return self._interpreted(cur, reader, sample)
        frame = self._compiled_frame(blob, self._deoptimized_pc(blob, cur, reader))
        if cur.pc == self.call_stub_return:
            return frame, self._fp_step(cur, reader)
        if cur.top and SUBTYPE_CHECK_STUB in blob.name:
            return frame, self._subtype_check_caller(cur, reader, sample.time_ns)
        if blob.frame_size > 0:
            nxt = self._sized_step(blob, cur, reader)
            if cur.top and nxt is not None and not self._java_caller_strength(blob, nxt.pc, sample.time_ns):
                # the top frame may be in code whose frame is not (yet, or no longer) laid out as its
                # frame size says: an inline-cache miss path, a stub-like prologue, a stub's epilogue
                # (stubs, unlike compiled Java code, keep rbp as their frame pointer)
                framed = [] if blob.is_nmethod else self._framed_candidates(cur, reader)
                found = self._choose(framed, self._frameless_candidates(cur, reader), sample.time_ns, reader)
                if found is None and blob.is_nmethod:
                    found = self._pushed_word_caller(blob, cur, reader, sample.time_ns)
                if found is None:
                    # no caller checks out: end the stack here rather than join a made-up one
                    self.stats.rejected_callers += 1
                return frame, found
            return frame, nxt
        return frame, self._stub_step(blob, cur, reader, sample)

    def _stub_step(self, blob: CodeBlobInfo, cur: _Cursor, reader: _StackReader, sample: StackSample
                   ) -> Optional[_Cursor]:
        """Stubs without a frame size (StubRoutines, vtable/itable stubs, JNI fast field accessors, i2c/c2i
        adapters, method-handle adapters): some build an rbp frame (StubRoutines' `enter()`), some have
        none (vtable stubs and the JNI fast accessors only jump or return: the return address stays at
        [sp]), and an adapter may have pushed one word. Each candidate caller is accepted only at a real
        call site (see _return_strength)."""
        time_ns = sample.time_ns
        framed = self._framed_candidates(cur, reader)
        if not cur.top:
            found = self._choose(framed, [], time_ns, reader)
        elif blob.kind is BlobKind.ADAPTER:
            found = self._adapter_caller(cur, reader, sample, framed)
        elif _frameless_kind(blob):
            found = self._choose([], self._frameless_candidates(cur, reader) + framed, time_ns, reader)
        else:
            found = self._choose(framed, self._frameless_candidates(cur, reader), time_ns, reader)
        if found is not None:
            self.stats.stub_steps += 1
        return found

    def _adapter_caller(self, cur: _Cursor, reader: _StackReader, sample: StackSample,
                        framed: list[_Cursor]) -> Optional[_Cursor]:
        """i2c/c2i adapters move sp: the c2i adapter pops the return address, keeps the caller's sp in
        r13 (the interpreter's sender sp) and grows the stack for the interpreter's arguments, storing
        the return address at the new [sp]. So each frameless return address is tried with sp + 8 and
        with r13, and a compiled caller is accepted only where its own frame then leads to a call site
        (one step of lookahead)."""
        time_ns = sample.time_ns
        candidates = []
        for c in self._frameless_candidates(cur, reader):
            if cur.sp < sample.r13 < cur.sp + MAX_FRAME_BYTES and sample.r13 % WORD == 0:
                candidates.append(_Cursor(c.pc, sample.r13, c.fp, top=False))
            candidates.append(c)
        for c in candidates:
            strength = self._return_strength(c.pc, time_ns)
            if strength == STRONG and self._frame_leads_on(c, reader, time_ns):
                return c
            if strength == WEAK and self._interpreter_frame_ok(c, reader):
                return c
        return self._choose(framed, [], time_ns, reader)

    def _frame_leads_on(self, cur: _Cursor, reader: _StackReader, time_ns: int) -> bool:
        """Does a compiled frame at `cur` (pc, sp) have a call site where its frame size puts its
        return address? Frames of other kinds are not checked."""
        blob = self.lookup_blob(cur.pc, time_ns)
        if blob is None or not blob.is_nmethod or blob.frame_size <= 0:
            return True
        ret = reader.word(cur.sp + WORD * blob.frame_size - WORD)
        return ret is not None and self._return_strength(ret, time_ns) > 0

    def _pushed_word_caller(self, blob: CodeBlobInfo, cur: _Cursor, reader: _StackReader, time_ns: int
                            ) -> Optional[_Cursor]:
        """The caller of a top compiled frame that pushed one word inside its body (C2's String
        compression intrinsic: `push len; ...; pop len`): its frame one word above sp. Taken only at a
        call site whose own frame leads on to another call site."""
        nxt = self._sized_step(blob, _Cursor(cur.pc, cur.sp + WORD, cur.fp, top=False), reader)
        if nxt is None or self._java_caller_strength(blob, nxt.pc, time_ns) != STRONG \
                or not self._frame_leads_on(nxt, reader, time_ns):
            return None
        return nxt

    def _framed_candidates(self, cur: _Cursor, reader: _StackReader) -> list[_Cursor]:
        """Callers of a stub with an rbp frame: the return address above the saved rbp, or one word
        higher where the stub pushed a cookie (-1) before `enter()` (the nmethod entry barrier stub,
        StubRoutines::method_entry_barrier, keeps that slot for deoptimization)."""
        framed = self._fp_step(cur, reader)
        if framed is None:
            return []
        if framed.pc != ENTRY_BARRIER_COOKIE:
            return [framed]
        ret = reader.word(cur.fp + 2 * WORD)
        return [_Cursor(ret, cur.fp + 3 * WORD, framed.fp, top=False)] if ret else []

    def _subtype_check_caller(self, cur: _Cursor, reader: _StackReader, time_ns: int) -> Optional[_Cursor]:
        """C1's slow subtype check stub runs on a stack its caller pushed two arguments on (`push klass;
        push super; call`), and pushes registers itself (4 on JDK 17, 4 and 4 more words on JDK 25):
        its return address is the first of the top words that is a call site of an nmethod whose frame,
        above those two arguments, leads on to another call site."""
        for slot in range(SUBTYPE_CHECK_SLOTS):
            ret = reader.word(cur.sp + WORD * slot)
            if not ret:
                continue
            blob = self.lookup_blob(ret, time_ns)
            if blob is None or not blob.is_nmethod or self._return_strength(ret, time_ns, blob) != STRONG:
                continue
            caller = _Cursor(ret, cur.sp + WORD * (slot + 1 + SUBTYPE_CHECK_ARGS), cur.fp, top=False)
            if self._frame_leads_on(caller, reader, time_ns):
                self.stats.stub_steps += 1
                return caller
        return None

    def _frameless_candidates(self, cur: _Cursor, reader: _StackReader) -> list[_Cursor]:
        out = []
        for slot in (0, 1):
            ret = reader.word(cur.sp + WORD * slot)
            if ret:
                out.append(_Cursor(ret, cur.sp + WORD * (slot + 1), cur.fp, top=False))
        return out

    def _choose(self, framed: list[_Cursor], frameless: list[_Cursor], time_ns: int, reader: _StackReader
                ) -> Optional[_Cursor]:
        """The caller among candidates: a strong one (a call site in compiled or native code) framed
        first, then frameless; then a weak one (an interpreter return address, which cannot be checked)
        frameless first: where the stub has no frame, rbp is the caller's or stale, and [fp+8] would
        skip a frame."""
        strength = {id(c): self._return_strength(c.pc, time_ns) for c in framed + frameless}
        for group, wanted in ((framed + frameless, STRONG), (frameless + framed, WEAK)):
            for candidate in group:
                if strength[id(candidate)] == wanted and (wanted == STRONG or self._interpreter_frame_ok(
                        candidate, reader)):
                    return candidate
        return None

    def _interpreter_frame_ok(self, cur: _Cursor, reader: _StackReader) -> bool:
        """A weak (interpreter) candidate is taken only when its rbp frames a readable Method*."""
        if cur.fp <= cur.sp - 2 * WORD or cur.fp - cur.sp > MAX_FRAME_BYTES:
            return False
        method = reader.word(cur.fp + self.slot_method)
        return bool(method) and self._method(method) is not None

    # ---- is a return address real? ---------------------------------------------------------------
    def _accept_caller(self, pc: int, time_ns: int, blob: Optional[CodeBlobInfo]) -> bool:
        """A caller in compiled Java code is accepted only at one of its call sites (remembered per
        nmethod and compile id once accepted: a call site stays one)."""
        if blob is None or blob.kind is not BlobKind.NMETHOD:
            return True
        key = (pc, blob.address, blob.compile_id)
        if key in self._accepted_callers:
            return True
        if self._return_strength(pc, time_ns, blob) > 0:
            _bounded_put(self._accepted_callers, key, True)
            return True
        return False

    def _return_strength(self, pc: int, time_ns: int, blob: Optional[CodeBlobInfo] = None) -> int:
        """How sure is it that `pc` is a return address: STRONG at a call site of an nmethod (a PcDesc
        exactly there, or a leaf call) or after a call instruction in stubs and native code; WEAK in the
        interpreter (its return entries are pushed, not called, so nothing can be checked); 0 otherwise.
        Memoized per pc."""
        if pc <= 0x1000:
            return 0
        blob = blob or self.lookup_blob(pc, time_ns)
        if blob is not None and blob.kind is BlobKind.INTERPRETER:
            return WEAK
        if blob is not None and blob.is_nmethod and pc == blob.deopt_handler:
            return STRONG
        key = (pc, blob.address, blob.compile_id) if blob is not None else (pc, 0, 0)
        found, valid = self._call_sites.lookup(key)
        if found:
            return STRONG if valid else 0
        if blob is not None and blob.is_nmethod and not blob.is_native_wrapper:
            # The PcDescs are read now, after the sample: in a deoptimization storm the nmethod may have
            # been flushed and its memory reused, so where they cannot be read, a return address that
            # follows a call instruction is taken. Where they can and none is there, only a leaf call
            # (to a stub or the VM, which have no PcDesc) is: every Java call has one, and a stale
            # return address after some other call was once joined (a frame skipped, a wrong caller).
            site = self.debug.is_call_site(blob, pc)
            valid = bool(site) or self._leaf_call(pc, time_ns) or (site is None and self._after_call(pc))
        elif blob is not None or self._is_native_code(pc):
            valid = self._after_call(pc)
        else:
            valid = False
        return STRONG if self._call_sites.put(key, valid) else 0

    def _java_caller_strength(self, callee: CodeBlobInfo, pc: int, time_ns: int) -> int:
        """_return_strength of a candidate caller of `callee`'s frame; 0 for native code above an nmethod
        (see _native_caller_of_java)."""
        blob = self.lookup_blob(pc, time_ns)
        if _native_caller_of_java(callee, pc, blob):
            return 0
        return self._return_strength(pc, time_ns, blob)

    def _leaf_call(self, pc: int, time_ns: int) -> bool:
        """Compiled code's calls without a PcDesc: leaf calls (no safepoint) into stubs or the VM, e.g.
        the arraycopy stubs: `call rel32` to a non-Java target, or `call reg` (a far runtime entry)."""
        try:
            code = self.r.bytes(pc - 7, 7)
        except MemoryReadError:
            return False
        if code[2] == 0xE8:
            target = (pc + int.from_bytes(code[3:7], "little", signed=True)) & 0xFFFFFFFFFFFFFFFF
            callee = self.lookup_blob(target, time_ns)
            if callee is None:
                return self._is_native_code(target)
            return not callee.is_nmethod and callee.kind is not BlobKind.INTERPRETER
        return (code[5] == 0xFF and 0xD0 <= code[6] <= 0xD7) or \
            (0x40 <= code[4] <= 0x4F and code[5] == 0xFF and 0xD0 <= code[6] <= 0xD7)

    def _after_call(self, pc: int) -> bool:
        try:
            return ends_with_call(self.r.bytes(pc - 7, 7))
        except MemoryReadError:
            return False

    def _sized_step(self, blob: CodeBlobInfo, cur: _Cursor, reader: _StackReader) -> Optional[_Cursor]:
        if cur.top:
            slot = self._partial_frame_slot(blob, cur.pc)
            if slot is not None:
                return _slot_caller(cur, reader, slot)
        sender_sp = cur.sp + WORD * blob.frame_size
        ret = reader.word(sender_sp - WORD)
        saved_fp = reader.word(sender_sp - 2 * WORD)
        if ret is None:
            return None
        return _Cursor(ret, sender_sp, saved_fp if saved_fp is not None else cur.fp, top=False)

    def _partial_frame_slot(self, blob: CodeBlobInfo, pc: int) -> Optional[int]:
        """Where the return address is when the top frame is not as its frame size says: 0 ([sp]), 1
        ([sp+8]) in a prologue or epilogue, frame_size with a spill word pushed (is_stack_pop), or None
        (use the frame size). Decided from the code bytes, cached per pc."""
        key = (pc, blob.address, blob.compile_id)
        found, cached = self._partial_slots.lookup(key)
        if found:
            return cached
        try:
            if pc < blob.code_begin + max(blob.frame_complete_offset, 0):
                slot = self._prologue_slot(blob, pc)
            else:
                code = self.r.bytes(pc, 16)
                slot = epilogue_slot(code)
                if slot is None and is_stack_pop(code):
                    slot = blob.frame_size      # a whole frame and one word pushed on it
        except MemoryReadError:
            slot = None
        return self._partial_slots.put(key, slot)

    def _prologue_slot(self, blob: CodeBlobInfo, pc: int) -> Optional[int]:
        """C1/C2 prologue (x86_64 MacroAssembler::verified_entry / build_frame): the inline-cache check
        before the verified entry, stack bangs `mov [rsp-N], eax` (89 84 24 disp32), `push rbp`, then
        `sub rsp, N` allocates the frame. Up to and including the push, the return address is at [sp];
        after the push, at [sp+8]; after the sub the frame size applies (None), also before
        frame_complete_offset (JDK 21+'s nmethod entry barrier comes after the sub). C2 without a stack
        bang allocates the frame first (`sub rsp, N; mov [rsp+N], rbp`, no push)."""
        if blob.code_begin <= pc < blob.verified_entry:
            return 0    # the inline-cache check (`cmp; jne ic_miss`) pushes nothing
        entry = blob.verified_entry if blob.code_begin <= blob.verified_entry <= pc else blob.code_begin
        if pc <= entry:
            # nothing pushed yet; also where a not-entrant nmethod's entry was patched with a `jmp`
            # over the first stack bang (the bytes after it no longer decode as a prologue)
            return 0
        code = self.r.bytes(entry, max(8, min(64, blob.code_end - entry)))
        i = 0
        while code[i:i + 3] == b"\x89\x84\x24":
            i += 7
        if pc <= entry + i:
            return 0        # the stack bangs push nothing: up to the `push rbp` (or `sub rsp`), [sp]
        if _sub_rsp_length(code[i:]):
            return None     # `sub rsp, N` before any push: past it, the frame is allocated
        if code[i:i + 1] != b"\x55":
            return 1        # an unknown prologue: as before, one word pushed
        sub = _sub_rsp_length(code[i + 1:])
        if sub and pc >= entry + i + 1 + sub:
            # past `push rbp; sub rsp, N` the frame is allocated, though not yet "complete": JDK 21+
            # puts the nmethod entry barrier (`cmp dword [r15+N], imm; jne slow`) before
            # frame_complete_offset
            return None
        return 1

    def _deoptimized_pc(self, blob: CodeBlobInfo, cur: _Cursor, reader: _StackReader) -> int:
        """A caller frame being deoptimized returns to the nmethod's deopt handler; HotSpot saved the
        original pc in the frame at sp + orig_pc_offset (frame::get_deopt_original_pc)."""
        if cur.top or not blob.is_nmethod or not blob.deopt_handler or cur.pc != blob.deopt_handler:
            return cur.pc
        self.stats.deoptimized_frames += 1
        original = reader.word(cur.sp + blob.orig_pc_offset)
        return original if original and blob.code_begin <= original < blob.code_end else cur.pc

    def _fp_step(self, cur: _Cursor, reader: _StackReader) -> Optional[_Cursor]:
        fp = cur.fp
        if fp <= cur.sp or fp - cur.sp > MAX_FRAME_BYTES or fp % WORD:
            return None
        ret = reader.word(fp + WORD)
        saved = reader.word(fp)
        if ret is None or saved is None:
            return None
        return _Cursor(ret, fp + 2 * WORD, saved, top=False)

    def _interpreted(self, cur: _Cursor, reader: _StackReader,
                     sample: StackSample) -> tuple[PhysicalFrame, Optional[_Cursor]]:
        fp = cur.fp
        if fp <= cur.sp or fp - cur.sp > MAX_FRAME_BYTES:
            return self.unknown_frame("interpreter frame without frame pointer"), None
        method = reader.word(fp + self.slot_method)
        info = self._method(method, sample.time_ns) if method else None
        if info is None and cur.top:
            # the interpreter's method entry, whose frame (and Method* slot) is not built yet: known code,
            # unknown method, as async-profiler shows it. rbp is still the caller's (perhaps compiled code,
            # where it frames nothing); the return address is at [sp] and r13 holds the sender's sp.
            return PhysicalFrame(cur.pc, (INTERPRETER_ENTRY,)), self._adapter_caller(cur, reader, sample, [])
        if info is None:
            frame = self.unknown_frame("interpreted frame with unreadable Method*")
        else:
            # In the top frame the live bcp is in r13; deeper frames saved it in their bcp slot.
            bcp = sample.r13 if cur.top else reader.word(fp + self.slot_bcp)
            frame = self._interpreted_frame(cur.pc, method, info, bcp or 0)
        ret = reader.word(fp + WORD)
        saved = reader.word(fp)
        sender_sp = reader.word(fp + self.slot_sender_sp)
        if ret is None or saved is None:
            return frame, None
        # The caller continues at its unextended sp (the sender_sp slot); for a compiled caller that
        # is where its frame size counts from.
        sp = sender_sp if sender_sp and sender_sp > fp else fp + 2 * WORD
        return frame, _Cursor(ret, sp, saved, top=False)

    def _interpreted_frame(self, pc: int, method: int, info: MethodInfo, bcp: int) -> PhysicalFrame:
        key = (pc, method, info.const_method, bcp, self.resolver.generation)
        frame = self._interpreted_frames.get(key)
        if frame is None:
            bci = self.debug.bci_of_bcp(info, bcp) if bcp else -1
            line = self.debug.line_of(info, bci) if bci >= 0 else 0
            frame = self._interpreted_frames.put(
                key, self._java_frame(pc, method, info, FrameKind.INTERPRETED, line))
        return frame

    def _method(self, method: int, time_ns: Optional[int] = None) -> Optional[MethodInfo]:
        """The method behind a Method* of an interpreted frame. The resolver re-validates a Method*
        with a read of the target (is its ConstMethod still the one cached?); a sample taken before such
        a read learns nothing more from a read of its own (both come after it, and the earlier one is
        nearer to it), so a validation is reused for every sample older than it. Where the JVM says
        exactly when classes are unloaded (MetadataWatch), a validation also holds for a later sample
        taken before the resolver's last look found nothing unloaded since: the thread roots that stay
        interpreted forever cost one look (three words) per drained batch instead of one read per
        Method* per batch (or per frame)."""
        generation = self.resolver.generation
        if time_ns is not None:
            known = self._validated_methods.get(method)
            if known is not None and known[1] == generation:
                if time_ns <= known[0]:
                    return known[2]
                # a sample taken after the validation, but before a look that found no metadata freed
                # since (no class unloaded): the Method is still the one validated, no read needed
                if time_ns <= self.resolver.settled_at() and self.resolver.generation == generation:
                    return known[2]
        try:
            validated_at = _monotonic_ns()
            info = self.resolver.resolve(method)
        except MemoryReadError:
            return None
        if time_ns is not None and self.resolver.generation == generation:
            _bounded_put(self._validated_methods, method, (validated_at, generation, info))
        return info

    # ---- frame objects (cached) ------------------------------------------------------------------
    def _compiled_frame(self, blob: CodeBlobInfo, pc: int) -> PhysicalFrame:
        key = (pc, blob.compile_id if blob.is_nmethod else -blob.address)
        frame = self._compiled_frames.get(key)
        if frame is None:
            frame = self._compiled_frames.put(key, PhysicalFrame(pc, self._compiled_logical(blob, pc)))
        return frame

    def _compiled_logical(self, blob: CodeBlobInfo, pc: int) -> tuple[LogicalFrame, ...]:
        """The inlining chain at pc, innermost first; the outermost is the nmethod's own method (marked
        OSR when the nmethod is an on-stack-replacement compilation)."""
        if not blob.is_nmethod:
            return (LogicalFrame(f"[{blob.name}]", FrameKind.JVM_STUB, blob.kind.value),)
        tier = _tier_kind(blob.level)
        scopes = self.debug.scopes_at(blob, pc)
        if scopes:
            last = len(scopes) - 1
            return tuple(self._logical_for(s.method_ptr, s.method, FrameKind.INLINED, s.line) if i < last
                         else self._logical_for(s.method_ptr, s.method, tier, s.line, blob.is_osr)
                         for i, s in enumerate(scopes))
        if blob.method is not None:
            return (self._logical_for(blob.method_ptr, blob.method, tier, osr=blob.is_osr),)
        self.stats.unknown_frames["nmethod without method"] += 1
        return (LogicalFrame("[unknown nmethod]", FrameKind.UNKNOWN),)

    def _java_frame(self, pc: int, method: int, info: MethodInfo, kind: FrameKind, line: int = 0
                    ) -> PhysicalFrame:
        return PhysicalFrame(pc, (self._logical_for(method, info, kind, line),))

    def _logical_for(self, method: int, info: MethodInfo, kind: FrameKind, line: int = 0, osr: bool = False
                     ) -> LogicalFrame:
        key = (info.const_method or method, kind, line, osr)
        frame = self._method_frames.get(key)
        if frame is None:
            frame = self._method_frames.put(
                key, LogicalFrame(info.java_name, kind, info.codelist_name, info.source_file, line, osr))
        return frame

    def unknown_frame(self, why: str) -> PhysicalFrame:
        self.stats.unknown_frames[why] += 1
        return PhysicalFrame(0, (LogicalFrame("[unknown]", FrameKind.UNKNOWN, why),))

    def _kernel_frame(self, ip: int) -> PhysicalFrame:
        frame = self._kernel_frames.get(ip)
        if frame is None:
            name = self.kernel.lookup(ip) if self.kernel is not None else None
            if name in BREAKPOINT_HANDLERS:
                self._trap_ips.add(ip)
            elif name in SINGLE_STEP_HANDLERS:
                self._single_step_ips.add(ip)
            frame = self._kernel_frames.put(
                ip, PhysicalFrame(ip, (LogicalFrame(name or f"[kernel 0x{ip:x}]", FrameKind.KERNEL),)))
        return frame

    # ---- native frames ---------------------------------------------------------------------------
    def _native_step(self, cur: _Cursor, reader: _StackReader
                     ) -> tuple[PhysicalFrame, Optional[_Cursor], bool]:
        lookup_pc = self._native_lookup_pc(cur)
        frame, is_root = self._native_frame(lookup_pc, cur.pc)
        if frame.frames[0].kind is FrameKind.UNKNOWN:
            self.stats.unknown_frames[frame.frames[0].system_name] += 1    # per sample, not per pc
        if is_root:
            return frame, None, True
        rule = self._cfi_rule(lookup_pc)
        if rule is not None:
            if rule.kind == cfi.ROOT:          # the return address is undefined: clone3, _start
                return frame, None, True
            nxt = self._cfi_step(rule, cur, reader)
            if nxt is not None:
                self.stats.cfi_steps += 1
            # no frame-pointer guess where the CFI says how the frame is laid out: if its slots cannot be
            # read (beyond the copy) or do not check out, rbp would only lead to a stale frame
            return frame, nxt, False
        self.stats.fp_steps += 1
        return frame, self._fp_step(cur, reader), False

    def _cfi_rule(self, pc: int) -> Optional[cfi.Rule]:
        """The DWARF CFI rule at pc, memoized per pc (the tables themselves are compiled once per
        build-id, see pyprof.symbols.cfi)."""
        if self.natives is None:
            return None
        found, rule = self._cfi_rules.lookup(pc)
        if found:
            return rule
        _mapped, rule = self.natives.unwind_rule(pc)
        return self._cfi_rules.put(pc, rule)

    def _cfi_step(self, rule: cfi.Rule, cur: _Cursor, reader: _StackReader) -> Optional[_Cursor]:
        if rule.kind == cfi.CFA_RSP:
            cfa = cur.sp + rule.cfa_offset
        elif rule.kind == cfi.CFA_RBP:
            cfa = cur.fp + rule.cfa_offset
        elif rule.kind == cfi.CFA_PLT:
            cfa = cur.sp + rule.cfa_offset + (WORD if (cur.pc & 15) >= rule.plt_threshold else 0)
        else:
            return None
        if cfa <= cur.sp or cfa - cur.sp > MAX_FRAME_BYTES or cfa % WORD:
            return None
        ret = reader.word(cfa - WORD)
        if ret is None:
            return None
        fp = self._cfi_saved_fp(rule, cur, cfa, reader)
        return _Cursor(ret, cfa, fp, top=False) if fp is not None else None

    @staticmethod
    def _cfi_saved_fp(rule: cfi.Rule, cur: _Cursor, cfa: int, reader: _StackReader) -> Optional[int]:
        """The caller's rbp by the CFI rule: unchanged, or saved at CFA + fp_offset. A slot below sp was
        popped already (the epilogue after `pop rbp`/`leave`, where GCC's CFI still says "saved"; the copy
        starts at sp): rbp holds the caller's value again."""
        if not rule.fp_offset:
            return cur.fp
        slot = cfa + rule.fp_offset
        if slot < cur.sp:
            return cur.fp
        return reader.word(slot)

    def _native_lookup_pc(self, cur: _Cursor) -> int:
        """Where to look up native code's symbol and CFI rule. A return address may be the first byte
        after a call to a noreturn function, i.e. already in the next function: callers are looked up at
        pc - 1 (as perf and libunwind do). A top pc while the kernel handles a uprobe's int3 (pyprof's own,
        at a libjvm function's entry) is the breakpoint's address plus one on entry to the trap, and the
        breakpoint's address itself while the probe's handlers run (handle_swbp resets it for them): in
        both the probed instruction has not run yet, so the function's entry is looked up."""
        if not cur.top:
            return cur.pc - 1
        if cur.after_trap and not (self.natives is not None and self.natives.starts_function(cur.pc)):
            return cur.pc - 1
        return cur.pc

    def _native_frame(self, lookup_pc: int, pc: int) -> tuple[PhysicalFrame, bool]:
        cached = self._native_frames.get(pc)
        if cached is not None:
            return cached
        symbol = None
        system_name = ""
        mapping = None
        library = ""
        if self.natives is not None:
            native = self.natives.symbolize(lookup_pc)
            if native is not None:
                symbol, system_name = native.symbol, native.system_name
                library, mapping = native.library, native.mapping
        if symbol is None and not library:
            why = "native pc outside any mapping"
            result = (PhysicalFrame(pc, (LogicalFrame("[unknown]", FrameKind.UNKNOWN, why),)), False)
        else:
            # unnamed: the file offset, as addr2line and objdump -d take it
            offset = pc - mapping.start + mapping.offset if mapping else pc
            name = symbol or f"{library.rsplit('/', 1)[-1]}+0x{offset:x}"
            is_root = name.split("(", 1)[0] in ROOT_SYMBOLS
            logical = LogicalFrame(name, FrameKind.NATIVE, system_name or name, library)
            result = (PhysicalFrame(pc, (logical,), mapping), is_root)
        return self._native_frames.put(pc, result)


def _slot_caller(cur: _Cursor, reader: _StackReader, slot: int) -> Optional[_Cursor]:
    """The caller of a top frame in its prologue or epilogue (Unwinder._partial_frame_slot): only the
    return address (and maybe rbp) is on the stack, `slot` words above sp. The caller's rbp is the word
    below the return address once it was pushed (after `push rbp`, at `pop rbp`: rbp itself is not the
    caller's there; a whole frame under a pushed spill word); at slot 0 rbp is the caller's (not pushed
    yet, or popped). The planned and the full step both take it from here."""
    ret = reader.word(cur.sp + WORD * slot)
    if not ret:
        return None
    fp = reader.word(cur.sp + WORD * (slot - 1)) if slot >= 1 else cur.fp
    return _Cursor(ret, cur.sp + WORD * (slot + 1), fp if fp is not None else cur.fp, top=False)


def _native_caller_of_java(callee: Optional[CodeBlobInfo], pc: int, caller: Optional[CodeBlobInfo]) -> bool:
    """Is this a compiled Java frame returning into native code? Never real: native code enters Java
    through the call stub (JavaCalls), so a return address outside the code cache above an nmethod frame
    is a stale word (a libc or libjvm return address left on the stack by an earlier call). A zero
    return address is the end of the stack, not a caller."""
    return pc != 0 and caller is None and callee is not None and callee.is_nmethod


_UNPLANNED: tuple = ("unplanned",)   # a planned-step entry: this pc's step is _step's to decide
_ROOT = object()     # a planned native step: the stack's root end
MAX_PLANS = 200_000


def _monotonic_ns() -> int:
    """The clock of sample times (bpf_ktime_get_ns)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _bounded_put(memo: dict, key, value):
    if len(memo) >= MAX_PLANS:
        memo.clear()
    memo[key] = value
    return value


def _frameless_kind(blob: CodeBlobInfo) -> bool:
    """Stubs that never build an rbp frame: their return address is at [sp] while they run. Also an
    nmethod without a frame size: a method handle intrinsic (`MethodHandle.invokeBasic`, `linkTo*`) only
    jumps on, and compiled code's rbp is no frame pointer (a stale [rbp+8] was joined before [sp])."""
    return blob.kind in (BlobKind.VTABLE, BlobKind.ADAPTER, BlobKind.METHOD_HANDLES) \
        or blob.name.startswith("jni_fast_") or blob.is_nmethod


def ends_with_call(code: bytes) -> bool:
    """Do the bytes just before a return address end with an x86_64 call instruction? `code` is the 7
    bytes before it. Recognized: `call rel32` (e8), and `call r/m64` (ff /2) in every addressing form,
    with or without a REX prefix."""
    if len(code) < 7:
        return False
    if code[2] == 0xE8:
        return True
    for length in range(2, 8):
        start = 7 - length
        if code[start] == 0xFF and _ff2_length(code[start + 1:]) == length:
            return True
        if length >= 3 and 0x40 <= code[start] <= 0x4F and code[start + 1] == 0xFF \
                and _ff2_length(code[start + 2:]) == length - 1:
            return True
    return False


def _ff2_length(rest: bytes) -> int:
    """Length of `ff /2` (call r/m64) whose ModRM byte starts `rest`; 0 when it is not a call."""
    if not rest:
        return 0
    modrm = rest[0]
    if (modrm >> 3) & 7 != 2:
        return 0
    mod, rm = modrm >> 6, modrm & 7
    length = 2
    if mod == 3:
        return length
    if rm == 4:                      # SIB byte
        if len(rest) < 2:
            return 0
        length += 1
        if mod == 0 and rest[1] & 7 == 5:
            length += 4
    if mod == 1:
        length += 1
    elif mod == 2:
        length += 4
    elif rm == 5:                    # rip-relative
        length += 4
    return length


def _sub_rsp_length(code: bytes) -> int:
    """Length of the `sub rsp, imm8` (48 83 ec) or `sub rsp, imm32` (48 81 ec) that `code` starts with;
    0 when it starts with something else."""
    if code[:3] == b"\x48\x83\xec":
        return 4
    if code[:3] == b"\x48\x81\xec":
        return 7
    return 0


def _poll_then_ret(code: bytes) -> bool:
    """Does `code` start with a return safepoint poll followed by `ret`? The polls, by JDK:
    17, 21: `cmp rsp, [r15+disp32]` (49 3b a7), `ja slow` (0f 87 rel32);
    25:     `cmp rsp, [r15+disp8]` (49 3b 67: the polling word is within 128 bytes of the JavaThread), `ja`;
    11:     `mov r10, [r15+disp]` (4d 8b 97 disp32 / 4d 8b 57 disp8), `test [r10], eax` (41 85 02), the
            thread-local polling page; or, with a global polling page, `test eax, [rip+disp32]` (85 05)."""
    if code[:3] in (b"\x49\x3b\xa7", b"\x49\x3b\x67"):
        after = 7 if code[2] == 0xA7 else 4
        return code[after:after + 2] == b"\x0f\x87" and code[after + 6:after + 7] == b"\xc3"
    if code[:3] in (b"\x4d\x8b\x97", b"\x4d\x8b\x57"):
        after = 7 if code[2] == 0x97 else 4
        return code[after:after + 4] == b"\x41\x85\x02\xc3"
    return code[:2] == b"\x85\x05" and code[6:7] == b"\xc3"


def is_stack_pop(code: bytes) -> bool:
    """Does `code` start with `pop qword [rsp+disp]` (8f /0, SIB base rsp; REX.W optional)? C2 moves a
    64-bit spill slot to another with `push [rsp+a]; pop [rsp+b]`: between the two, one word more is on
    the stack than the frame size says."""
    i = 1 if code[:1] == b"\x48" else 0
    return code[i:i + 1] == b"\x8f" and code[i + 1:i + 2] in (b"\x04", b"\x44", b"\x84") \
        and code[i + 2:i + 3] == b"\x24"


def epilogue_slot(code: bytes) -> Optional[int]:
    """The return-address slot when `code` (the bytes at the top frame's pc) is the end of a compiled
    method's epilogue: `add rsp, N; pop rbp; [return poll;] ret` (x86_64 MacroAssembler::remove_frame +
    the return safepoint poll, see _poll_then_ret), or `add rsp, N; pop rbp; jmp stub` (a tail jump, e.g.
    to the rethrow stub). After `add rsp` only rbp and the return address are left; after `pop rbp` only
    the return address. None: not in an epilogue."""
    if code[:1] == b"\xc3" or _poll_then_ret(code):
        return 0
    if code[:2] == b"\x0f\x87" and code[6:7] == b"\xc3":      # at the `ja` of a 17+ poll
        return 0
    if code[:4] == b"\x41\x85\x02\xc3":                       # at the `test` of JDK 11's poll
        return 0
    if code[:1] == b"\x5d" and (code[1:2] in (b"\xc3", b"\xe9") or _poll_then_ret(code[1:])):
        return 1
    return None


class _StackReader:
    """Words from the copied stack; beyond the copy (a stack deeper than the eBPF program copies), the
    live stack, read a page at a time, at most LIVE_READ_LIMIT pages per sample. The part of a stack
    far from its top (its root end) is what changes least while the thread runs on; every caller found
    there is still checked (call sites, stack order) before it is joined. When the budget runs out the
    stack is marked truncated at its root end (`exhausted`)."""

    def __init__(self, sample: StackSample, live, stats: UnwindStats) -> None:
        self.base = sample.sp
        self.stack = sample.stack
        self.last = len(sample.stack) - WORD     # the last offset a whole word of the copy starts at
        self.live = live
        self.stats = stats
        self.live_left = LIVE_READ_LIMIT
        self.pages: dict[int, Optional[bytes]] = {}
        self.exhausted = False
        self.used_live = False
        self._overlap_ok: Optional[bool] = None
        self.copy_reads: list[int] = []     # addresses the walk read in the copy (its frames' slots)

    def _live_matches_copy(self) -> bool:
        """The second read: the live stack is used only when its last OVERLAP bytes of the copied range
        still hold what the copy holds, i.e. the thread has not returned below the end of the copy since
        the sample (had it, the frames beyond would be other calls' and the walk would join them); or,
        where those bytes changed, when the last frame slots the walk read in the copy (return
        addresses, saved rbp) did not: a thread still running in those frames or deeper changes locals
        (C2's compiler threads keep 30+ KiB of them), not the links of the frames above."""
        if self._overlap_ok is None:
            n = min(OVERLAP, len(self.stack) - len(self.stack) % WORD)
            start = self.base + len(self.stack) - n
            try:
                self._overlap_ok = n > 0 and (self.live.bytes(start, n) == self.stack[len(self.stack) - n:]
                                              or self._links_unchanged())
            except MemoryReadError:
                self._overlap_ok = False
            self.stats.live_reads += 1
            if not self._overlap_ok:
                self.stats.live_refused += 1
        return self._overlap_ok

    def _links_unchanged(self) -> bool:
        """Do the last words the walk read in the copy still hold the same values in live memory?"""
        if not self.copy_reads:
            return False
        for address in self.copy_reads[-COPY_LINKS:]:
            off = address - self.base
            if self.live.bytes(address, WORD) != self.stack[off:off + WORD]:
                return False
        return True

    def word(self, address: int) -> Optional[int]:
        off = address - self.base
        if 0 <= off <= self.last:
            self.copy_reads.append(address)
            return _U64.unpack_from(self.stack, off)[0]
        if off < 0 or address % WORD:
            return None
        page = address - address % LIVE_CHUNK
        data = self.pages.get(page, b"") if page in self.pages else self._read_page(page)
        if data is None:
            return None
        at = address - page
        self.used_live = True
        return int.from_bytes(data[at:at + WORD], "little")

    def _read_page(self, page: int) -> Optional[bytes]:
        if self.live_left <= 0 or not self._live_matches_copy():
            self.exhausted = True
            return None
        self.live_left -= 1
        self.stats.live_reads += 1
        try:
            data: Optional[bytes] = self.live.bytes(page, LIVE_CHUNK)
        except MemoryReadError:
            data = None
        self.pages[page] = data
        return data
