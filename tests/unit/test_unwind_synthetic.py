"""The unwinder on synthetic stacks, where the layout of the frames is what a test is about.

No root, BPF or JVM: the Layout is the one a real JDK 21 published (VMStructs, recorded in
tests/unit/data/unwind-phases-jdk21.json.gz), memory is served by test_hostile_memory's ReplayMemory, and
the stacks, code blobs and code bytes are built here word by word, so each test knows exactly where every
return address, saved rbp and original pc lies (x86_64 HotSpot frames, ../shared/docs/hotspot-facts.md):
- compiled frames (C1/C2 nmethods, RuntimeStubs): sender_sp = sp + 8 * frame_size, return address at
  sender_sp - 8, saved rbp at sender_sp - 16;
- the call stub and StubRoutines without a frame size: rbp frames;
- the top frame's prologue (stack bang, push rbp, sub rsp) and epilogue (add rsp, pop rbp, poll, ret);
- deoptimized callers: return address = the nmethod's deopt handler, the original pc at
  sp + orig_pc_offset;
- native code with frame pointers, and without (the JavaThread's last-Java-frame anchor);
- the caps: depth, a stack going backwards, bounded reads of the live stack beyond the copy;
- return addresses are checked: a compiled caller is accepted only at a call site (a PcDesc there, or a
  call instruction just before it), so the synthetic code, like real HotSpot and native code, has a
  `call rel32` before every return address the stacks hold (CALL_RETURNS, NATIVE_CALL_RETURNS).
Every test asserts the exact frames (address and name) and the UnwindStats counters.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest

from pyprof.hotspot.codecache import BlobKind, CodeBlobInfo
from pyprof.hotspot.method import MethodInfo, MethodResolver
from pyprof.model import FrameKind, Mapping, PhysicalFrame, display_name
from pyprof.sampling.sampler import RawSample
from pyprof.sampling.unwind import (
    ENTRY_BARRIER_COOKIE,
    LIVE_CHUNK,
    LIVE_READ_LIMIT,
    MAX_DEPTH,
    MAX_STACK_SPAN,
    Unwinder,
    UnwindStats,
)
from pyprof.symbols import cfi
from pyprof.symbols.kernel import KernelSymbols
from pyprof.symbols.native import NativeSymbol
from tests.unit.data.unwind_fixture import RecordedThreads, fixture_path, load, stats_of
from tests.unit.test_hostile_memory import ReplayMemory

LAYOUT_OF = load(fixture_path("Phases", 21))   # a real JDK 21's VMStructs; its memory is not used here
TID = 4242
WORD = 8
SP = 0x7FFD_1000_0000            # the sampled thread's stack pointer
CODE = 0x7F10_0000_0000          # a synthetic code heap
LIBJVM = 0x7F20_0000_0000        # a synthetic native library's text
LIBJNI = 0x7F30_0000_0000        # a JNI library built without frame pointers

NOP = b"\x90"
STACK_BANG = b"\x89\x84\x24\x00\xc0\xfe\xff"   # mov [rsp-0x14000], eax
PUSH_RBP = b"\x55"
SUB_RSP = b"\x48\x83\xec\x20"                    # sub rsp, 0x20: the frame is complete after it
ADD_RSP = b"\x48\x83\xc4\x20"
POP_RBP = b"\x5d"
POLL = b"\x49\x3b\xa7\x28\x04\x00\x00"           # cmp rsp, [r15+0x428]: the return safepoint poll
JA = b"\x0f\x87\x10\x00\x00\x00"
RET = b"\xc3"
SUB_RSP_IMM32 = b"\x48\x81\xec\x28\x00\x00\x00"      # sub rsp, 0x28 (C2 without a stack bang)
MOV_RBP = b"\x48\x89\x6c\x24\x20"                   # mov [rsp+0x20], rbp
ENTRY_BARRIER = b"\x41\x81\x7f\x20\x01\x00\x00\x00\x0f\x85\x00\x01\x00\x00"  # cmpl [r15+0x20], 1; jne
UEP = b"\x48\x3b\x46\x08\x0f\x85\x00\x00\x00\x00\x66\x90"   # inline-cache check: cmp; jne ic_miss; nop
CALL_REL32 = 0xE8                                  # call rel32: 5 bytes, the return address right after

VERIFIED = 0x20                   # offsets in an nmethod's code
FRAME_COMPLETE = VERIFIED + len(STACK_BANG + PUSH_RBP + SUB_RSP)
EPILOGUE = 0x300
DEOPT_HANDLER = 0x380
CODE_SIZE = 0x400
CALL_BEFORE_POP = 0x2E5           # a call site followed by `pop rbp; ret`: a return address that looks like
#                                   an epilogue
# Offsets of every nmethod's code right after a `call rel32`: the return addresses the stacks below hold
# (and the decoys, so that a wrong slot is caught by the frame it names, not by the call-site check).
CALL_RETURNS = (0x60, 0x77, 0x90, 0x99, 0xA0, 0x120, 0x144, 0x200, 0x222, CALL_BEFORE_POP)
NOT_A_CALL_SITE = 0x180           # body code (nops) with no call before it


# ---- building blocks ----------------------------------------------------------------------------------
def method(name: str, const_method: int) -> MethodInfo:
    return MethodInfo("pyproftest.Synth", name, "()J", "Synth.java", const_method=const_method, code_size=16)


def nmethod(address: int, name: str, level: int, frame_size: int, compile_id: int,
            orig_pc_offset: int = 0) -> CodeBlobInfo:
    begin = address + 0x100
    return CodeBlobInfo(address=address, size=0x100 + CODE_SIZE, kind=BlobKind.NMETHOD, name="nmethod",
                        code_begin=begin, code_end=begin + CODE_SIZE, frame_size=frame_size,
                        frame_complete_offset=FRAME_COMPLETE, heap=0, compile_id=compile_id, level=level,
                        state=0, entry_bci=-1, method_ptr=0x8_0000_0000 + compile_id * 0x100,
                        method=method(name, 0x9_0000_0000 + compile_id * 0x100),
                        verified_entry=begin + VERIFIED,
                        orig_pc_offset=orig_pc_offset, deopt_handler=begin + DEOPT_HANDLER)


def stub(address: int, name: str, kind: BlobKind, frame_size: int) -> CodeBlobInfo:
    return CodeBlobInfo(address=address, size=0x200, kind=kind, name=name, code_begin=address + 0x80,
                        code_end=address + 0x200, frame_size=frame_size, frame_complete_offset=-1, heap=0)


def with_calls(code: bytearray, begin: int, returns: tuple[int, ...], target: int) -> bytearray:
    """`call rel32` to `target` ending at each offset of `returns` in `code` (which starts at `begin`)."""
    for ret in returns:
        rel = (target - (begin + ret)) & 0xFFFFFFFF
        code[ret - 5:ret] = bytes([CALL_REL32]) + rel.to_bytes(4, "little")
    return code


def nmethod_code(begin: int, prologue: bytes = STACK_BANG + PUSH_RBP + SUB_RSP) -> bytes:
    """The code of a synthetic nmethod at `begin`: inline-cache check, verified entry with the C1/C2
    prologue, a body of nops with calls (to the runtime stub) before CALL_RETURNS, the epilogue with the
    return poll at EPILOGUE."""
    code = bytearray(NOP * CODE_SIZE)
    code[0:len(UEP)] = UEP
    code[VERIFIED:VERIFIED + len(prologue)] = prologue
    epilogue = ADD_RSP + POP_RBP + POLL + JA + RET
    code[EPILOGUE:EPILOGUE + len(epilogue)] = epilogue
    code[CALL_BEFORE_POP:CALL_BEFORE_POP + 2] = POP_RBP + RET
    return bytes(with_calls(code, begin, CALL_RETURNS, RUNTIME_STUB.code_begin))


HOT = nmethod(CODE + 0x1000, "hot", 4, frame_size=6, compile_id=11)             # C2
NO_BANG = nmethod(CODE + 0x4000, "nobang", 4, frame_size=6, compile_id=14)      # C2, small frame: no bang
CALLER = nmethod(CODE + 0x2000, "caller", 3, frame_size=4, compile_id=12)        # C1
# JDK 21+: the nmethod entry barrier after `push rbp; sub rsp`, before frame_complete_offset
BARRIER = dataclasses.replace(nmethod(CODE + 0x5000, "barrier", 4, frame_size=6, compile_id=15),
                              frame_complete_offset=FRAME_COMPLETE + len(ENTRY_BARRIER))
DEOPTEE = nmethod(CODE + 0x3000, "deoptee", 4, frame_size=8, compile_id=13, orig_pc_offset=0x18)
CALL_STUB = stub(CODE + 0x8000, "StubRoutines (initial stubs)", BlobKind.STUBS, frame_size=0)
INTERPRETER = stub(CODE + 0xA000, "Interpreter", BlobKind.INTERPRETER, frame_size=0)
RUNTIME_STUB = stub(CODE + 0x9000, "_new_array_Java", BlobKind.RUNTIME_STUB, frame_size=2)
CALL_STUB_RETURN = CALL_STUB.code_begin + 0x40     # after the call stub's call of the Java entry
BLOBS = (HOT, CALLER, DEOPTEE, NO_BANG, BARRIER, CALL_STUB, RUNTIME_STUB, INTERPRETER)

NATIVE_FUNCTIONS = {      # name -> (start, end, library)
    "thread_native_entry": (LIBJVM + 0x1000, LIBJVM + 0x1100, "/synthetic/libjvm.so"),
    "JavaCalls::call_helper": (LIBJVM + 0x2000, LIBJVM + 0x2400, "/synthetic/libjvm.so"),
    "SharedRuntime::runtime_work": (LIBJVM + 0x3000, LIBJVM + 0x3100, "/synthetic/libjvm.so"),
    "Java_pyproftest_Synth_work": (LIBJNI + 0x500, LIBJNI + 0x600, "/synthetic/libsynth.so"),
    "checksum_no_fp": (LIBJNI + 0x700, LIBJNI + 0x800, "/synthetic/libsynth.so"),
}


NATIVE_CALL_RETURNS = {  # name -> offsets right after a call: the native return addresses the stacks hold
    "thread_native_entry": (0x30,),
    "JavaCalls::call_helper": (0x40,),
    "SharedRuntime::runtime_work": (0x10,),
}


def native(name: str, offset: int = 0x10) -> int:
    return NATIVE_FUNCTIONS[name][0] + offset


def native_code() -> dict[int, bytes]:
    """The synthetic libraries' code: nops, with a call before each NATIVE_CALL_RETURNS offset."""
    out = {}
    for name, (start, end, _library) in NATIVE_FUNCTIONS.items():
        code = bytearray(NOP * (end - start))
        out[start] = bytes(with_calls(code, start, NATIVE_CALL_RETURNS.get(name, ()), start))
    return out


class Natives:
    """NativeSymbolizer.symbolize() over the synthetic libraries."""

    def symbolize(self, pc: int) -> Optional[NativeSymbol]:
        for name, (start, end, library) in NATIVE_FUNCTIONS.items():
            if start <= pc < end:
                return NativeSymbol(name, name, library, Mapping(start & ~0xFFFFFF, end, 0, library))
        return None

    def starts_function(self, pc: int) -> bool:
        return any(start == pc for start, _end, _library in NATIVE_FUNCTIONS.values())

    def unwind_rule(self, pc: int) -> tuple[bool, Optional[cfi.Rule]]:
        """The synthetic libraries have no CFI (frame pointers only), but for functions in CFI_RULES."""
        found = self.symbolize(pc)
        return found is not None, CFI_RULES.get(found.symbol) if found is not None else None


CFI_RULES: dict[str, cfi.Rule] = {}     # function name -> its CFI rule at every pc (tests set them)


class Stack:
    """The sampled thread's stack, word by word from SP upwards."""

    def __init__(self, size: int = 0x1000) -> None:
        self.size = size
        self.words: dict[int, int] = {}

    def put(self, address: int, value: int) -> Stack:
        assert SP <= address < SP + self.size and address % WORD == 0, hex(address)
        self.words[address] = value
        return self

    def bytes(self) -> bytes:
        out = bytearray(self.size)
        for address, value in self.words.items():
            off = address - SP
            out[off:off + WORD] = value.to_bytes(WORD, "little")
        return bytes(out)


def sample(stack: Stack, ip: int, bp: int = 0, copied: Optional[int] = None, sp: int = SP,
           anchor: tuple[int, int, int] = (0, 0, 0)) -> RawSample:
    """A raw sample as the eBPF program delivers it: registers and the first `copied` bytes above sp."""
    data = stack.bytes()[sp - SP:]
    return RawSample(time_ns=1, tid=TID, cpu=0, ip=ip, sp=sp, bp=bp, r13=0, flags=0, kernel_ips=(),
                     stack=data[:copied] if copied is not None else data,
                     anchor_sp=anchor[0], anchor_pc=anchor[1], anchor_fp=anchor[2])


def unwinder(live_stack: Optional[Stack] = None, extra_regions: Optional[dict[int, bytes]] = None,
             blobs: tuple[CodeBlobInfo, ...] = BLOBS) -> tuple[Unwinder, ReplayMemory]:
    """A fresh Unwinder over the synthetic code heap and libraries; `live_stack` is the thread's stack as
    live memory (what reads beyond the sample's copy find)."""
    lay = LAYOUT_OF.jvm(None).layout
    regions = dict(LAYOUT_OF.regions)   # the recorded JVM's metaspace: real Method*s for interpreted frames
    regions[lay["StubRoutines._call_stub_return_address"].address] = CALL_STUB_RETURN.to_bytes(8, "little")
    for blob in BLOBS:
        if blob is NO_BANG:
            regions[blob.code_begin] = nmethod_code(blob.code_begin, SUB_RSP_IMM32 + MOV_RBP)
        elif blob is BARRIER:
            regions[blob.code_begin] = nmethod_code(blob.code_begin,
                                                    STACK_BANG + PUSH_RBP + SUB_RSP + ENTRY_BARRIER)
        elif blob.is_nmethod:
            regions[blob.code_begin] = nmethod_code(blob.code_begin)
        else:
            code = bytearray(NOP * (blob.code_end - blob.code_begin))
            if blob is CALL_STUB:       # the call stub calls the Java entry
                with_calls(code, blob.code_begin, (CALL_STUB_RETURN - blob.code_begin,), HOT.verified_entry)
            regions[blob.code_begin] = bytes(code)
    regions.update(native_code())
    if live_stack is not None:
        regions[SP] = live_stack.bytes()
    regions.update(extra_regions or {})
    memory = ReplayMemory(sorted(regions.items()))
    jvm = LAYOUT_OF.jvm(memory)

    def lookup(pc: int, _time_ns: int) -> Optional[CodeBlobInfo]:
        return next((b for b in blobs if b.contains(pc)), None)

    u = Unwinder(jvm, lookup, MethodResolver(jvm.reader, jvm.layout), RecordedThreads(frozenset({TID})),  # type: ignore[arg-type]
                 Natives(), None)
    return u, memory


def described(frames: tuple[PhysicalFrame, ...]) -> list[tuple[int, str]]:
    """(address, what a user reads) of every frame, leaf first."""
    return [(f.address, " | ".join(display_name(lf) for lf in f.frames)) for f in frames]


def counters(**changed) -> dict:
    """The UnwindStats of one sample: one sample, root reached, a Java thread, unless `changed`."""
    unknown = changed.pop("unknown_frames", {})
    stats = UnwindStats(samples=1, reached_root=1, java_samples=1, java_reached_root=1)
    for k, v in changed.items():
        setattr(stats, k, v)
    stats.unknown_frames.update(unknown)
    return stats_of(stats)


def unwound(s: RawSample, live_stack: Optional[Stack] = None) -> tuple[list[tuple[int, str]], dict]:
    u, _ = unwinder(live_stack)
    frames = u.unwind(s)
    stats = stats_of(u.stats)
    assert stats["frames"] == len(frames)
    del stats["frames"]
    return described(frames), stats


def counters_of(**changed) -> dict:
    c = counters(**changed)
    del c["frames"]
    return c


def at(blob: CodeBlobInfo, offset: int) -> int:
    return blob.code_begin + offset


# The bottom of every Java stack below: the call stub (entry frame), JavaCalls::call_helper and the thread's
# entry function, linked by frame pointers.
ENTRY_FP = SP + 0x800
HELPER_FP = SP + 0x900


def java_entry(stack: Stack) -> list[tuple[int, str]]:
    """Lays out call stub <- JavaCalls::call_helper <- thread_native_entry; returns their frames."""
    stack.put(ENTRY_FP, HELPER_FP).put(ENTRY_FP + WORD, native("JavaCalls::call_helper", 0x40))
    stack.put(HELPER_FP, 0).put(HELPER_FP + WORD, native("thread_native_entry", 0x30))
    return [(CALL_STUB_RETURN, "[StubRoutines (initial stubs)]"),
            (native("JavaCalls::call_helper", 0x40), "JavaCalls::call_helper"),
            (native("thread_native_entry", 0x30), "thread_native_entry")]


def compiled_frame(stack: Stack, sp: int, blob: CodeBlobInfo, ret: int, saved_rbp: int) -> int:
    """A complete compiled frame at sp: its return address and saved rbp; returns the caller's sp."""
    sender_sp = sp + WORD * blob.frame_size
    stack.put(sender_sp - WORD, ret).put(sender_sp - 2 * WORD, saved_rbp)
    return sender_sp


# ---- compiled frames ----------------------------------------------------------------------------------
def test_compiled_frames_are_walked_by_their_frame_sizes_down_to_the_thread_entry() -> None:
    # GIVEN C2 `hot` (6 words) called by C1 `caller` (4 words) called from the call stub; rbp holds
    # garbage in the C2 frame (C2 does not keep a frame pointer) and C1's frame saved the stub's rbp
    stack = Stack()
    caller_sp = compiled_frame(stack, SP, HOT, at(CALLER, 0x120), saved_rbp=0xDEAD)
    compiled_frame(stack, caller_sp, CALLER, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    bottom = java_entry(stack)
    # WHEN the sample taken in hot's body is unwound
    frames, stats = unwound(sample(stack, ip=at(HOT, 0x80), bp=0x42))
    # THEN every frame, with its tier, down to the thread's entry function
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]"),
                      (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]"), *bottom]
    assert stats == counters_of()


def test_compiled_caller_at_no_call_site_is_rejected() -> None:
    # GIVEN the same stack, but hot's return address lies in caller's body where no call precedes it
    # (a stale or misread word: real HotSpot code has a call right before every return address)
    stack = Stack()
    caller_sp = compiled_frame(stack, SP, HOT, at(CALLER, NOT_A_CALL_SITE), saved_rbp=0xDEAD)
    compiled_frame(stack, caller_sp, CALLER, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    java_entry(stack)
    u, _ = unwinder()
    # WHEN unwound
    frames = described(u.unwind(sample(stack, ip=at(HOT, 0x80), bp=0x42)))
    # THEN the "caller" is not joined: the top frame's caller checks out nowhere, the stack ends there
    # (counted as a rejected caller)
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]")]
    assert stats_of(u.stats) == counters(frames=1, reached_root=0, java_reached_root=0)
    assert u.stats.rejected_callers == 1


def test_deeper_compiled_caller_at_no_call_site_is_a_counted_unknown() -> None:
    # GIVEN hot <- caller (at a call site) <- a "return address" in hot's body where no call precedes it
    stack = Stack()
    caller_sp = compiled_frame(stack, SP, HOT, at(CALLER, 0x120), saved_rbp=0xDEAD)
    compiled_frame(stack, caller_sp, CALLER, at(HOT, NOT_A_CALL_SITE), saved_rbp=ENTRY_FP)
    u, _ = unwinder()
    # WHEN unwound
    frames = described(u.unwind(sample(stack, ip=at(HOT, 0x80), bp=0x42)))
    # THEN that caller is not joined: the stack ends in a counted [unknown] saying why
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]"),
                      (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]"), (0, "[unknown]")]
    assert stats_of(u.stats) == counters(frames=3, reached_root=0, java_reached_root=0,
                                         unknown_frames={"return address is no call site": 1})
    assert u.stats.rejected_callers == 1


def test_stub_caller_candidate_at_no_call_site_is_not_taken() -> None:
    # GIVEN a StubRoutines stub at the top whose rbp frame returns to libjvm code where no call precedes
    # the return address
    stack = Stack()
    stack.put(ENTRY_FP, HELPER_FP).put(ENTRY_FP + WORD, native("JavaCalls::call_helper", 0x80))
    u, _ = unwinder()
    # WHEN unwound
    frames = described(u.unwind(sample(stack, ip=CALL_STUB.code_begin + 0x10, bp=ENTRY_FP)))
    # THEN no caller is found: the stub alone, an incomplete stack
    assert frames == [(CALL_STUB.code_begin + 0x10, "[StubRoutines (initial stubs)]")]
    assert stats_of(u.stats) == counters(frames=1, reached_root=0, java_reached_root=0)
    assert u.stats.stub_steps == 0


def test_runtime_stub_with_a_frame_size_and_stub_routines_without_one() -> None:
    # GIVEN a RuntimeStub (2 words: return address and saved rbp) called from C2 `hot`, called from the
    # call stub
    stack = Stack()
    hot_sp = compiled_frame(stack, SP, RUNTIME_STUB, at(HOT, 0x90), saved_rbp=0xBAD)
    compiled_frame(stack, hot_sp, HOT, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    bottom = java_entry(stack)
    # WHEN unwound from inside the stub
    frames, stats = unwound(sample(stack, ip=RUNTIME_STUB.code_begin + 0x10))
    # THEN the stub is named by its blob and its caller found by its frame size
    assert frames == [(RUNTIME_STUB.code_begin + 0x10, "[_new_array_Java]"),
                      (at(HOT, 0x90), "pyproftest.Synth.hot [C2]"), *bottom]
    assert stats == counters_of()


def test_stub_routine_without_frame_size_follows_rbp() -> None:
    # GIVEN the top frame in a StubRoutines blob without a frame size, rbp = the entry frame's
    stack = Stack()
    bottom = java_entry(stack)
    # WHEN unwound
    frames, stats = unwound(sample(stack, ip=CALL_STUB.code_begin + 0x10, bp=ENTRY_FP))
    # THEN the stub's caller is found through rbp (a stub is no Java method: the thread makes it Java)
    assert frames == [(CALL_STUB.code_begin + 0x10, "[StubRoutines (initial stubs)]"), *bottom[1:]]
    assert stats == counters_of()


def test_entry_barrier_stub_with_its_cookie_above_rbp_returns_to_the_nmethod() -> None:
    # GIVEN StubRoutines::method_entry_barrier (called from C2 `hot`'s entry barrier: `push -1` as a
    # cookie, then `enter()`), which called libjvm (BarrierSetNMethod::nmethod_stub_entry_barrier)
    stack = Stack()
    stub_pc, work_fp, stub_fp = CALL_STUB.code_begin + 0x30, SP + 0x40, SP + 0x80
    stack.put(work_fp, stub_fp).put(work_fp + WORD, stub_pc)
    stack.put(stub_fp, 0xD3A0_23B9).put(stub_fp + WORD, ENTRY_BARRIER_COOKIE).put(stub_fp + 2 * WORD,
                                                                                  at(HOT, 0x90))
    compiled_frame(stack, stub_fp + 3 * WORD, HOT, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    bottom = java_entry(stack)
    # WHEN sampled in libjvm
    frames, stats = unwound(sample(stack, ip=native("SharedRuntime::runtime_work"), bp=work_fp))
    # THEN the stub's caller is the nmethod above the cookie, then the rest of the stack
    assert frames == [(native("SharedRuntime::runtime_work"), "SharedRuntime::runtime_work"),
                      (stub_pc, "[StubRoutines (initial stubs)]"),
                      (at(HOT, 0x90), "pyproftest.Synth.hot [C2]"), *bottom]
    assert stats == counters_of()


SUBTYPE_CHECK = stub(CODE + 0xB000, "C1 Runtime slow_subtype_check_blob", BlobKind.RUNTIME_STUB, frame_size=0)


def test_slow_subtype_check_stub_returns_above_its_pushes_and_its_callers_arguments() -> None:
    # GIVEN C1's slow subtype check stub at the top: its caller (C1 `caller`) pushed two arguments and
    # called it; it pushed four registers, one of which holds a return address of `hot` (a decoy whose
    # frame leads nowhere)
    stack = Stack()
    stack.put(SP, 0x6_9000_1000).put(SP + WORD, at(HOT, 0x200)).put(SP + 2 * WORD, 0x11)
    stack.put(SP + 4 * WORD, at(CALLER, 0x120)).put(SP + 5 * WORD, 0x6_9000_2000).put(SP + 6 * WORD,
                                                                                       0x6_9000_3000)
    compiled_frame(stack, SP + 7 * WORD, CALLER, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    bottom = java_entry(stack)
    u, _ = unwinder(blobs=BLOBS + (SUBTYPE_CHECK,))
    # WHEN unwound
    frames = u.unwind(sample(stack, ip=SUBTYPE_CHECK.code_begin + 0x44))
    # THEN the caller is found above the pushed registers, its frame above its two arguments
    assert described(frames) == [(SUBTYPE_CHECK.code_begin + 0x44, "[C1 Runtime slow_subtype_check_blob]"),
                                 (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]"), *bottom]
    assert stats_of(u.stats) == counters(frames=len(frames))


def test_runtime_stub_in_its_epilogue_is_left_by_its_frame_pointer() -> None:
    # GIVEN a RuntimeStub (enter(): an rbp frame) sampled in its epilogue, its frame partly popped (the
    # frame size no longer leads to a return address), rbp still its frame pointer
    stack = Stack()
    stack.put(SP, 0x5).put(SP + WORD, 0x77)
    stub_fp = SP + 2 * WORD
    stack.put(stub_fp, 0x1F).put(stub_fp + WORD, at(HOT, 0x90))
    compiled_frame(stack, stub_fp + 2 * WORD, HOT, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    bottom = java_entry(stack)
    # WHEN unwound
    frames, stats = unwound(sample(stack, ip=RUNTIME_STUB.code_begin + 0x30, bp=stub_fp))
    # THEN the caller is the one rbp frames
    assert frames == [(RUNTIME_STUB.code_begin + 0x30, "[_new_array_Java]"),
                      (at(HOT, 0x90), "pyproftest.Synth.hot [C2]"), *bottom]
    assert stats == counters_of()


def test_call_stub_is_an_rbp_frame_whatever_its_blob_says() -> None:
    # GIVEN C1 `caller` returning into the call stub, in a blob that claims a frame size (the blob holding
    # the call stub differs between JDKs: only StubRoutines::_call_stub_return_address says which pc it is)
    sized = dataclasses.replace(CALL_STUB, kind=BlobKind.BUFFER, frame_size=4)
    stack = Stack()
    compiled_frame(stack, SP, CALLER, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    stack.put(SP + WORD * CALLER.frame_size + WORD * 3, at(HOT, 0x99))   # where the frame size would look
    bottom = java_entry(stack)
    u, _ = unwinder(blobs=(sized, CALLER))
    # WHEN unwound
    frames = u.unwind(sample(stack, ip=at(CALLER, 0x100)))
    # THEN the entry frame is walked by rbp, down to the thread's entry
    assert described(frames) == [(at(CALLER, 0x100), "pyproftest.Synth.caller [C1]"), *bottom]
    assert stats_of(u.stats) == counters(frames=len(frames))


# ---- the top frame's prologue and epilogue ------------------------------------------------------------

def prologue_case(blob: CodeBlobInfo, offset: int, slot: Optional[int], why: str, bug: str = ""):
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(blob, offset, slot, why, marks=marks, id=f"{blob.method.name}+{offset:#x}")


@pytest.mark.parametrize("blob, offset, slot, why", [
    prologue_case(HOT, 0x4, 0, "inline-cache check before the verified entry"),
    prologue_case(HOT, VERIFIED, 0, "at the stack bang"),
    prologue_case(HOT, VERIFIED + len(STACK_BANG), 0, "at push rbp"),
    prologue_case(HOT, VERIFIED + len(STACK_BANG + PUSH_RBP), 1, "after push rbp, before sub rsp"),
    prologue_case(HOT, EPILOGUE + len(ADD_RSP), 1, "at pop rbp: rbp and the return address left"),
    prologue_case(HOT, EPILOGUE + len(ADD_RSP + POP_RBP), 0, "at the return poll: only the return address"),
    prologue_case(HOT, EPILOGUE + len(ADD_RSP + POP_RBP + POLL + JA), 0, "at ret"),
    prologue_case(NO_BANG, VERIFIED, 0, "C2 without stack bang, at sub rsp (its verified entry)"),
    prologue_case(NO_BANG, VERIFIED + len(SUB_RSP_IMM32), None, "C2 without stack bang, after sub rsp"),
    prologue_case(NO_BANG, FRAME_COMPLETE + 0x10, None, "C2 without stack bang, in the body"),
    prologue_case(BARRIER, VERIFIED + len(STACK_BANG), 0, "JDK 21+: at push rbp"),
    prologue_case(BARRIER, VERIFIED + len(STACK_BANG + PUSH_RBP), 1, "JDK 21+: after push rbp, at sub rsp"),
    prologue_case(BARRIER, FRAME_COMPLETE, None, "JDK 21+: at the entry barrier, after sub rsp"),
    prologue_case(BARRIER, FRAME_COMPLETE + 8, None, "JDK 21+: at the entry barrier's jne"),
])
def test_top_frame_in_prologue_or_epilogue_finds_the_return_address_by_the_code(
        blob: CodeBlobInfo, offset: int, slot: Optional[int], why: str) -> None:
    # GIVEN a C2 nmethod sampled where its frame may not be complete: the return address to C1 `caller`
    # is `slot` words above sp (None: where its frame size says), and every other candidate slot holds a
    # decoy (a return address into the nmethod itself)
    stack = Stack()
    for candidate in (0, 1, blob.frame_size - 1):
        stack.put(SP + WORD * candidate, at(blob, 0x200))
    ret_slot = blob.frame_size - 1 if slot is None else slot
    stack.put(SP + WORD * ret_slot, at(CALLER, 0x120))
    compiled_frame(stack, SP + WORD * (ret_slot + 1), CALLER, 0, saved_rbp=0)   # the end of the stack
    # WHEN unwound
    frames, stats = unwound(sample(stack, ip=at(blob, offset)))
    # THEN the caller is the one at that slot, and the walk ends at its zero return address: complete
    assert frames == [(at(blob, offset), f"pyproftest.Synth.{blob.method.name} [C2]"),
                      (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]")], why
    assert stats == counters_of(), why


def test_top_compiled_frame_with_a_word_pushed_in_its_body_finds_its_caller_above_it() -> None:
    # GIVEN C2 `hot` at the top, in its body, with one word pushed on its frame (C2's String compression
    # intrinsic pushes a register inside the method body), called by C1 `caller`, called by the call stub
    stack = Stack()
    stack.put(SP, 0x6_9000_1000)
    caller_sp = compiled_frame(stack, SP + WORD, HOT, at(CALLER, 0x120), saved_rbp=0)
    compiled_frame(stack, caller_sp, CALLER, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    bottom = java_entry(stack)
    # WHEN unwound (the frame size from sp leads to hot's saved rbp slot: no return address)
    frames, stats = unwound(sample(stack, ip=at(HOT, 0x80)))
    # THEN the caller is found one word higher, and the stack is complete
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]"),
                      (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]"), *bottom]
    assert stats == counters_of()


INVOKE_BASIC = nmethod(CODE + 0x6000, "invokeBasic", 0, frame_size=0, compile_id=16)    # no frame


def test_method_handle_intrinsic_without_a_frame_returns_to_sp_not_to_a_stale_rbp() -> None:
    # GIVEN a method handle intrinsic (an nmethod without a frame: it only jumps on) at the top, called by
    # C1 `caller`; rbp is no frame pointer there and frames a stale return address of `hot`
    stack = Stack()
    stack.put(SP, at(CALLER, 0x120))
    compiled_frame(stack, SP + WORD, CALLER, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    stale_fp = SP + 0x100
    stack.put(stale_fp, 0).put(stale_fp + WORD, at(HOT, 0x90))
    bottom = java_entry(stack)
    u, _ = unwinder(blobs=BLOBS + (INVOKE_BASIC,))
    # WHEN unwound
    frames = u.unwind(sample(stack, ip=INVOKE_BASIC.code_begin + 0x10, bp=stale_fp))
    # THEN its caller is the return address at [sp]
    assert described(frames) == [(INVOKE_BASIC.code_begin + 0x10, "pyproftest.Synth.invokeBasic [jni]"),
                                 (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]"), *bottom]
    assert stats_of(u.stats) == counters(frames=len(frames))


def test_prologue_and_epilogue_rules_apply_to_the_top_frame_only() -> None:
    # GIVEN C2 `hot` complete at the top, returning into C1 `caller` at a call site whose next instruction
    # looks like an epilogue (`pop rbp; ret`): a caller frame is complete whatever its pc
    stack = Stack()
    caller_sp = compiled_frame(stack, SP, HOT, at(CALLER, CALL_BEFORE_POP), saved_rbp=0)
    compiled_frame(stack, caller_sp, CALLER, 0, saved_rbp=0)
    stack.put(caller_sp + WORD, at(HOT, 0x77))   # where the epilogue rule would look
    # WHEN unwound  THEN caller's frame size is used, and the stack ends at its zero return address
    frames, stats = unwound(sample(stack, ip=at(HOT, 0x80)))
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]"),
                      (at(CALLER, CALL_BEFORE_POP), "pyproftest.Synth.caller [C1]")]
    assert stats == counters_of()


# ---- deoptimized frames -------------------------------------------------------------------------------
def test_deoptimized_caller_is_named_by_its_original_pc() -> None:
    # GIVEN C2 `hot` called by `deoptee`, whose frame was deoptimized while `hot` ran: hot returns to
    # deoptee's deopt handler, and HotSpot saved the original return pc at deoptee's sp + orig_pc_offset
    stack = Stack()
    deoptee_sp = compiled_frame(stack, SP, HOT, DEOPTEE.deopt_handler, saved_rbp=0)
    original = at(DEOPTEE, 0x144)
    stack.put(deoptee_sp + DEOPTEE.orig_pc_offset, original)
    compiled_frame(stack, deoptee_sp, DEOPTEE, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    bottom = java_entry(stack)
    # WHEN unwound
    frames, stats = unwound(sample(stack, ip=at(HOT, 0x80)))
    # THEN the deoptimized frame stands at its original pc (where its inlining and line are), counted,
    # and the walk goes on below it by its frame size
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]"),
                      (original, "pyproftest.Synth.deoptee [C2]"), *bottom]
    assert stats == counters_of(deoptimized_frames=1)


def test_deoptimized_frame_with_an_implausible_original_pc_keeps_the_handler_pc() -> None:
    # GIVEN the same, but the saved original pc points outside deoptee's code (garbage)
    stack = Stack()
    deoptee_sp = compiled_frame(stack, SP, HOT, DEOPTEE.deopt_handler, saved_rbp=0)
    stack.put(deoptee_sp + DEOPTEE.orig_pc_offset, HOT.code_begin)
    compiled_frame(stack, deoptee_sp, DEOPTEE, 0, saved_rbp=0)
    # WHEN unwound  THEN the frame is still deoptee's (at the handler), still counted
    frames, stats = unwound(sample(stack, ip=at(HOT, 0x80)))
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]"),
                      (DEOPTEE.deopt_handler, "pyproftest.Synth.deoptee [C2]")]
    assert stats == counters_of(deoptimized_frames=1)


def test_top_frame_running_its_deopt_handler_is_not_a_deoptimized_caller() -> None:
    # GIVEN the sample's pc itself at deoptee's deopt handler (deoptee is unpacking itself)
    stack = Stack()
    compiled_frame(stack, SP, DEOPTEE, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    stack.put(SP + DEOPTEE.orig_pc_offset, at(DEOPTEE, 0x144))
    bottom = java_entry(stack)
    # WHEN unwound  THEN it is named at its real pc and not counted as a deoptimized caller
    frames, stats = unwound(sample(stack, ip=DEOPTEE.deopt_handler))
    assert frames == [(DEOPTEE.deopt_handler, "pyproftest.Synth.deoptee [C2]"), *bottom]
    assert stats == counters_of()


# ---- interpreted frames -------------------------------------------------------------------------------
def recorded_method(name: str) -> int:
    """The Method* of an interpreted frame of `name` in the recording (the word at rbp + method slot of
    a sample whose top frame is that method, interpreted)."""
    slot = LAYOUT_OF.jvm(None).layout.interpreter_frame_slots()["method"] * WORD
    for s in LAYOUT_OF.samples:
        top = [f.frames[0] for f in s.frames if f.frames[0].kind is FrameKind.INTERPRETED][:1]
        if "top:interpreted" in s.features and top and top[0].name == name:
            off = s.raw.bp + slot - s.raw.sp
            return int.from_bytes(s.raw.stack[off:off + WORD], "little")
    raise AssertionError(f"no interpreted {name} at the top of a recorded sample")


INTERPRETED_FP = SP + 0x100
CALLER_SP = SP + 0x180          # the compiled caller's sp: the interpreted frame's sender_sp slot


def interpreted_stack(method_ptr: int, fp: int = INTERPRETED_FP) -> Stack:
    """C2 `hot` (top) called by an interpreted frame (rbp frame, Method* and sender_sp in their slots),
    called by C1 `caller` whose sp is the sender_sp slot (above fp + 16: the interpreter extended the
    caller's frame for its locals), the end of the stack."""
    slots = LAYOUT_OF.jvm(None).layout.interpreter_frame_slots()
    stack = Stack()
    compiled_frame(stack, SP, HOT, INTERPRETER.code_begin + 0x40, saved_rbp=fp)
    stack.put(fp, 0).put(fp + WORD, at(CALLER, 0x120))
    stack.put(fp + WORD * slots["method"], method_ptr).put(fp + WORD * slots["sender_sp"], CALLER_SP)
    stack.put(fp + WORD * slots["bcp"], 0)
    compiled_frame(stack, CALLER_SP, CALLER, 0, saved_rbp=0)
    stack.put(fp + 2 * WORD + WORD * (CALLER.frame_size - 1), at(HOT, 0x222))   # where fp + 16 would lead
    return stack


def test_interpreted_frame_between_compiled_frames_continues_at_its_sender_sp() -> None:
    # GIVEN a real Method* (Phases.loop, from the recorded JVM's metaspace) in an interpreted frame
    stack = interpreted_stack(recorded_method("pyproftest.Phases.loop"))
    frames, stats = unwound(sample(stack, ip=at(HOT, 0x80)))
    # THEN the interpreted frame is named by its Method* (no bcp: no line), and its compiled caller is
    # found from the sender_sp slot, not from fp + 16
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]"),
                      (INTERPRETER.code_begin + 0x40, "pyproftest.Phases.loop [interp]"),
                      (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]")]
    assert stats == counters_of()


def test_top_frame_at_pop_rbp_gives_its_interpreted_caller_the_saved_rbp() -> None:
    # GIVEN the same stack, C2 `hot` sampled at its epilogue's `pop rbp`: sp at the saved rbp (the
    # interpreted caller's frame pointer), rbp itself still hot's own junk
    stack = interpreted_stack(recorded_method("pyproftest.Phases.loop"))
    sp = SP + WORD * (HOT.frame_size - 2)
    frames, stats = unwound(sample(stack, ip=at(HOT, EPILOGUE + len(ADD_RSP)), sp=sp, bp=0xBAD0))
    # THEN the interpreted frame is found by the saved rbp at [sp], and the rest as before
    assert frames == [(at(HOT, EPILOGUE + len(ADD_RSP)), "pyproftest.Synth.hot [C2]"),
                      (INTERPRETER.code_begin + 0x40, "pyproftest.Phases.loop [interp]"),
                      (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]")]
    assert stats == counters_of()


def test_interpreted_frame_with_an_unreadable_method_is_a_counted_unknown() -> None:
    # GIVEN the same stack with a Method* that points nowhere
    frames, stats = unwound(sample(interpreted_stack(0x7F50_DEAD_0000), ip=at(HOT, 0x80)))
    # THEN that frame is an [unknown] with its reason, and the walk goes on
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]"), (0, "[unknown]"),
                      (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]")]
    assert stats == counters_of(unknown_frames={"interpreted frame with unreadable Method*": 1})


def test_interpreted_frame_without_a_frame_pointer_ends_the_walk() -> None:
    # GIVEN an interpreted frame whose rbp (saved by hot) lies below its sp
    stack = interpreted_stack(recorded_method("pyproftest.Phases.loop"))
    compiled_frame(stack, SP, HOT, INTERPRETER.code_begin + 0x40, saved_rbp=SP + 0x8)
    frames, stats = unwound(sample(stack, ip=at(HOT, 0x80)))
    # THEN an [unknown] frame saying so, and an incomplete stack
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]"), (0, "[unknown]")]
    assert stats == counters_of(reached_root=0, java_reached_root=0,
                                unknown_frames={"interpreter frame without frame pointer": 1})


# ---- native frames ------------------------------------------------------------------------------------
def test_native_frames_with_frame_pointers_reach_the_thread_entry() -> None:
    # GIVEN libjvm code (frame pointers kept) in a runtime call from JavaCalls::call_helper
    stack = Stack()
    stack.put(HELPER_FP, 0).put(HELPER_FP + WORD, native("thread_native_entry", 0x30))
    work_fp = SP + 0x40
    stack.put(work_fp, HELPER_FP).put(work_fp + WORD, native("JavaCalls::call_helper", 0x40))
    # WHEN sampled in SharedRuntime::runtime_work with rbp = its frame
    frames, stats = unwound(sample(stack, ip=native("SharedRuntime::runtime_work"), bp=work_fp))
    # THEN the rbp chain names each caller (looked up at return address - 1) down to the root
    assert frames == [(native("SharedRuntime::runtime_work"), "SharedRuntime::runtime_work"),
                      (native("JavaCalls::call_helper", 0x40), "JavaCalls::call_helper"),
                      (native("thread_native_entry", 0x30), "thread_native_entry")]
    assert stats == counters_of()


def test_native_epilogue_whose_rbp_slot_was_popped_keeps_rbp(monkeypatch) -> None:
    # GIVEN libjvm's runtime_work sampled after its `leave`, before its `ret`: GCC's CFI there says
    # "CFA = rsp + 8, caller's rbp saved at CFA - 16", a slot below sp (popped: not in the stack copy)
    monkeypatch.setitem(CFI_RULES, "SharedRuntime::runtime_work", cfi.Rule(cfi.CFA_RSP, 8, -16))
    stack = Stack()
    stack.put(HELPER_FP, 0).put(HELPER_FP + WORD, native("thread_native_entry", 0x30))
    stack.put(SP, native("JavaCalls::call_helper", 0x40))
    # WHEN sampled there, rbp already restored to call_helper's frame
    frames, stats = unwound(sample(stack, ip=native("SharedRuntime::runtime_work"), bp=HELPER_FP))
    # THEN the CFI step finds the return address at [sp] and keeps rbp (the caller's): the walk goes on by
    # call_helper's frame pointer down to the root
    assert frames == [(native("SharedRuntime::runtime_work"), "SharedRuntime::runtime_work"),
                      (native("JavaCalls::call_helper", 0x40), "JavaCalls::call_helper"),
                      (native("thread_native_entry", 0x30), "thread_native_entry")]
    assert stats == counters_of()


def test_uprobe_single_step_slot_returns_to_the_probed_functions_caller() -> None:
    # GIVEN a sample in the debug trap of a uprobe's single-step (pyprof's own probes on libjvm): the user
    # pc is in the uprobe's out-of-line page (no file), the probed function's `push rbp` just ran; rbp is
    # still call_helper's frame, whose [rbp+8] is call_helper's own caller
    stack = Stack()
    stack.put(SP, HELPER_FP).put(SP + WORD, native("JavaCalls::call_helper", 0x40))
    stack.put(HELPER_FP, 0).put(HELPER_FP + WORD, native("thread_native_entry", 0x30))
    u, _ = unwinder()
    u.kernel = KernelSymbols([0xFFFF_FFFF_8100_0000], ["asm_exc_debug"])
    xol = 0x7FFF_FFFF_E000       # the [uprobes] page
    # WHEN unwound
    frames = described(u.unwind(dataclasses.replace(sample(stack, ip=xol, bp=HELPER_FP),
                                                    kernel_ips=(0xFFFF_FFFF_8100_0010,))))
    # THEN the slot is named, not unknown, and its caller is the probed function's: call_helper, at [sp+8]
    assert frames == [(0xFFFF_FFFF_8100_0010, "asm_exc_debug"), (xol, "[uprobe single-step]"),
                      (native("JavaCalls::call_helper", 0x40), "JavaCalls::call_helper"),
                      (native("thread_native_entry", 0x30), "thread_native_entry")]
    assert u.stats.unknown_total == 0 and u.stats.reached_root == 1


@pytest.mark.parametrize("past_int3", [0, 1], ids=["while-handlers-run", "on-trap-entry"])
def test_uprobe_breakpoint_at_a_function_entry_names_the_probed_function(past_int3, monkeypatch) -> None:
    # GIVEN a sample while the kernel handles the int3 of a uprobe on runtime_work's first byte (pyprof's
    # own probes on libjvm): the user pc is the breakpoint's address + 1 on entry to the trap, and the
    # breakpoint's address itself while the probe's handlers (pyprof's BPF) run; the function's entry
    # has not run, so its CFA is rsp + 8 and rbp is still the caller's
    monkeypatch.setitem(CFI_RULES, "SharedRuntime::runtime_work", cfi.Rule(cfi.CFA_RSP, 8, 0))
    stack = Stack()
    stack.put(SP, native("JavaCalls::call_helper", 0x40))
    stack.put(HELPER_FP, 0).put(HELPER_FP + WORD, native("thread_native_entry", 0x30))
    u, _ = unwinder()
    u.kernel = KernelSymbols([0xFFFF_FFFF_8100_0000], ["asm_exc_int3"])
    entry = native("SharedRuntime::runtime_work", 0) + past_int3
    # WHEN unwound
    frames = described(u.unwind(dataclasses.replace(sample(stack, ip=entry, bp=HELPER_FP),
                                                    kernel_ips=(0xFFFF_FFFF_8100_0010,))))
    # THEN the probed function is named (not `libjvm.so+0x...` of the byte before it) and its caller is
    # the return address at [sp]
    assert frames == [(0xFFFF_FFFF_8100_0010, "asm_exc_int3"), (entry, "SharedRuntime::runtime_work"),
                      (native("JavaCalls::call_helper", 0x40), "JavaCalls::call_helper"),
                      (native("thread_native_entry", 0x30), "thread_native_entry")]
    assert u.stats.unknown_total == 0 and u.stats.reached_root == 1


def jni_stack() -> tuple[Stack, tuple[int, int, int], list[tuple[int, str]]]:
    """C2 `hot` (called by C1 `caller`, called from the call stub) called a native method whose JNI code has
    no frame pointers. The JavaThread's anchor recorded hot's frame when it left Java: last_Java_sp =
    hot's sp, last_Java_pc = 0 (HotSpot leaves it 0 for compiled code: the pc is the word below sp)."""
    stack = Stack()
    anchor_sp = SP + 0x200
    stack.put(anchor_sp - WORD, at(HOT, 0xA0))
    caller_sp = compiled_frame(stack, anchor_sp, HOT, at(CALLER, 0x120), saved_rbp=0)
    compiled_frame(stack, caller_sp, CALLER, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    bottom = java_entry(stack)
    java = [(at(HOT, 0xA0), "pyproftest.Synth.hot [C2]"), (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]"),
            *bottom]
    return stack, (anchor_sp, 0, 0x1234), java


def test_native_code_without_frame_pointers_resumes_at_the_java_frame_anchor() -> None:
    # GIVEN a sample in JNI code whose rbp is not a frame pointer (a small integer)
    stack, anchor, java = jni_stack()
    # WHEN unwound with the thread's anchor
    frames, stats = unwound(sample(stack, ip=native("checksum_no_fp"), bp=0x1F, anchor=anchor))
    # THEN after the native leaf the walk continues at the last Java frame, down to the thread's entry
    assert frames == [(native("checksum_no_fp"), "checksum_no_fp"), *java]
    assert stats == counters_of(anchor_used=1)


def test_without_the_anchor_the_same_stack_stops_at_the_native_leaf() -> None:
    # GIVEN the same sample without an anchor (not a Java thread's, or the anchor was not readable)
    stack, _, _ = jni_stack()
    frames, stats = unwound(sample(stack, ip=native("checksum_no_fp"), bp=0x1F))
    # THEN only the leaf, an incomplete stack (still a Java thread's sample)
    assert frames == [(native("checksum_no_fp"), "checksum_no_fp")]
    assert stats == counters_of(reached_root=0, java_reached_root=0)


def test_frame_pointer_chain_into_garbage_prefers_the_anchor() -> None:
    # GIVEN JNI code whose rbp looks like a frame pointer but leads to a "return address" that is neither
    # code-cache nor native code
    stack, anchor, java = jni_stack()
    bogus_fp = SP + 0x60
    stack.put(bogus_fp, SP + 0x80).put(bogus_fp + WORD, 0x1234_5678)
    frames, stats = unwound(sample(stack, ip=native("checksum_no_fp"), bp=bogus_fp, anchor=anchor))
    # THEN the anchor wins over the frame-pointer step
    assert frames == [(native("checksum_no_fp"), "checksum_no_fp"), *java]
    assert stats == counters_of(anchor_used=1)


def test_anchor_passed_by_frame_pointers_is_not_jumped_back_to() -> None:
    # (was a strict xfail: the walk held the anchor it had passed and jumped back down to it, 'stack went
    # backwards', in 3 samples of the first JitZoo recording; the unwinder now drops an anchor it is above)
    # GIVEN libjvm code called from C2 `hot` (the VM keeps rbp: the frame-pointer step reaches hot), and
    # the anchor HotSpot set when hot called into the VM, a word above hot's sp
    stack = Stack()
    runtime_fp = SP + 0x40
    stack.put(runtime_fp, 0).put(runtime_fp + WORD, at(HOT, 0xA0))
    hot_sp = runtime_fp + 2 * WORD
    compiled_frame(stack, hot_sp, HOT, CALL_STUB_RETURN, saved_rbp=ENTRY_FP)
    bottom = java_entry(stack)
    # WHEN unwound
    frames, stats = unwound(sample(stack, ip=native("SharedRuntime::runtime_work"), bp=runtime_fp,
                                   anchor=(hot_sp + WORD, 0, 0)))
    # THEN the frame-pointer walk is complete; the anchor below it is not gone back to
    assert frames == [(native("SharedRuntime::runtime_work"), "SharedRuntime::runtime_work"),
                      (at(HOT, 0xA0), "pyproftest.Synth.hot [C2]"), *bottom]
    assert stats == counters_of()


def test_anchor_farther_than_any_thread_stack_is_ignored() -> None:
    # GIVEN an anchor more than MAX_STACK_SPAN above sp (garbage, or another thread's)
    stack, _, _ = jni_stack()
    far = (SP + MAX_STACK_SPAN + 0x1000, 0, 0)
    frames, stats = unwound(sample(stack, ip=native("checksum_no_fp"), bp=0x1F, anchor=far))
    # THEN it is not used
    assert frames == [(native("checksum_no_fp"), "checksum_no_fp")]
    assert stats == counters_of(reached_root=0, java_reached_root=0)


# ---- the caps -----------------------------------------------------------------------------------------
def fp_chain_stack(frames: int, step: int = 0x20) -> Stack:
    """`frames` native frames of JavaCalls::call_helper linked by rbp from SP + 0x10, `step` bytes apart:
    a chain that never ends."""
    stack = Stack(size=(frames + 2) * step)
    for i in range(frames):
        fp = SP + 0x10 + i * step
        stack.put(fp, fp + step).put(fp + WORD, native("JavaCalls::call_helper", 0x40))
    return stack


def test_depth_limit_ends_an_endless_chain_marked_truncated() -> None:
    # GIVEN a frame-pointer chain longer than MAX_DEPTH
    stack = fp_chain_stack(MAX_DEPTH + 50)
    u, _ = unwinder()
    # WHEN unwound
    frames = described(u.unwind(sample(stack, ip=native("SharedRuntime::runtime_work"), bp=SP + 0x10)))
    # THEN MAX_DEPTH frames, then the [truncated] mark at the root end (counted as a truncated stack)
    helper = (native("JavaCalls::call_helper", 0x40), "JavaCalls::call_helper")
    assert frames == [(native("SharedRuntime::runtime_work"), "SharedRuntime::runtime_work"),
                      *[helper] * (MAX_DEPTH - 1), (0, "[truncated]")]
    assert stats_of(u.stats) == counters(frames=len(frames), reached_root=0, java_reached_root=0)
    assert u.stats.truncated_stacks == 1


def test_reads_beyond_the_copied_stack_are_bounded() -> None:
    # GIVEN a 300-frame rbp chain, one frame per page, of which the sample copied only the first 64 bytes;
    # the rest is in the thread's live stack
    stack = fp_chain_stack(300, step=LIVE_CHUNK)
    u, memory = unwinder(live_stack=stack)
    before = memory.reads
    # WHEN unwound
    frames = described(u.unwind(sample(stack, ip=native("SharedRuntime::runtime_work"), bp=SP + 0x10,
                                       copied=64)))
    # THEN one read checked that the live stack still holds the copy's end, then exactly LIVE_READ_LIMIT
    # pages were read live (all counted), one caller each, and the walk stopped there, marked truncated:
    # the leaf, one caller from the copy, LIVE_READ_LIMIT callers from live pages, [truncated]
    helper = (native("JavaCalls::call_helper", 0x40), "JavaCalls::call_helper")
    assert memory.reads - before == 1 + LIVE_READ_LIMIT
    assert frames == [(native("SharedRuntime::runtime_work"), "SharedRuntime::runtime_work"),
                      *[helper] * (1 + LIVE_READ_LIMIT), (0, "[truncated]")]
    assert stats_of(u.stats) == counters(frames=len(frames), reached_root=0, java_reached_root=0,
                                         live_reads=1 + LIVE_READ_LIMIT)
    assert u.stats.truncated_stacks == 1


def test_live_stack_whose_frames_changed_since_the_sample_is_not_used() -> None:
    # GIVEN the same chain, but the thread has run on: returned from the frame at the copy's end and
    # called something else there (a new return address where the walk read call_helper's)
    stack = fp_chain_stack(300, step=LIVE_CHUNK)
    live = fp_chain_stack(300, step=LIVE_CHUNK).put(SP + 0x18, native("SharedRuntime::runtime_work", 0x30))
    u, memory = unwinder(live_stack=live)
    # WHEN unwound from a 64-byte copy
    frames = described(u.unwind(sample(stack, ip=native("SharedRuntime::runtime_work"), bp=SP + 0x10,
                                       copied=64)))
    # THEN no live page is joined: the frames of the copy, then [truncated]
    assert frames == [(native("SharedRuntime::runtime_work"), "SharedRuntime::runtime_work"),
                      (native("JavaCalls::call_helper", 0x40), "JavaCalls::call_helper"), (0, "[truncated]")]
    assert (u.stats.live_reads, u.stats.live_refused, u.stats.truncated_stacks) == (1, 1, 1)


def test_live_stack_whose_locals_changed_but_not_its_frame_links_is_used() -> None:
    # GIVEN the same chain, the thread still running deeper than the copy's end: a local near the copy's
    # end changed (the strict comparison of the copy's tail fails), the frame slots the walk read did not
    stack = fp_chain_stack(300, step=LIVE_CHUNK)
    live = fp_chain_stack(300, step=LIVE_CHUNK).put(SP + 0x30, 0x5EED)
    u, memory = unwinder(live_stack=live)
    # WHEN unwound from a 64-byte copy
    frames = described(u.unwind(sample(stack, ip=native("SharedRuntime::runtime_work"), bp=SP + 0x10,
                                       copied=64)))
    # THEN the live stack is used (up to the read budget), nothing refused
    assert len(frames) == 2 + LIVE_READ_LIMIT + 1 and frames[-1] == (0, "[truncated]")
    assert (u.stats.live_refused, u.stats.truncated_stacks) == (0, 1)


def test_rbp_below_sp_ends_the_walk() -> None:
    # GIVEN C2 `hot` <- C1 `caller` <- the call stub, whose saved rbp points below the stack pointer
    stack = Stack()
    caller_sp = compiled_frame(stack, SP, HOT, at(CALLER, 0x120), saved_rbp=0)
    compiled_frame(stack, caller_sp, CALLER, CALL_STUB_RETURN, saved_rbp=SP + 0x10)
    # WHEN unwound
    frames, stats = unwound(sample(stack, ip=at(HOT, 0x80)))
    # THEN the call stub's rbp step is refused and the walk stops there, incomplete
    assert frames == [(at(HOT, 0x80), "pyproftest.Synth.hot [C2]"),
                      (at(CALLER, 0x120), "pyproftest.Synth.caller [C1]"),
                      (CALL_STUB_RETURN, "[StubRoutines (initial stubs)]")]
    assert stats == counters_of(reached_root=0, java_reached_root=0)


def test_anchor_below_the_sampled_sp_is_ignored() -> None:
    # GIVEN libjvm code at the top (sp = SP + 0x30) whose rbp is garbage, and a stale anchor whose sp lies
    # below the sampled sp: resuming there would walk back down the stack. (The unwinder never takes such
    # an anchor, nor one the walk has passed - next test -, so the only step that can still go "backwards"
    # is a frame larger than MAX_FRAME_BYTES: test_frame_larger_than_a_mebibyte_is_refused.)
    stack = Stack()
    stack.put(SP + 0x8, at(HOT, 0x60))
    # WHEN unwound
    frames, stats = unwound(sample(stack, ip=native("SharedRuntime::runtime_work"), bp=0x1F, sp=SP + 0x30,
                                   anchor=(SP + 0x10, 0, 0)))
    # THEN the anchor is not used: the native leaf alone, an incomplete stack
    assert frames == [(native("SharedRuntime::runtime_work"), "SharedRuntime::runtime_work")]
    assert stats == counters_of(reached_root=0, java_reached_root=0)


def test_anchor_below_a_caller_frame_is_dropped() -> None:
    # GIVEN a stub with a frame size returning into libjvm code whose rbp is garbage, and a stale anchor
    # whose sp lies inside the stub's frame (below the libjvm frame's sp: the walk is already past it)
    # (a stub: a compiled Java frame's caller is never native code, see the next test)
    stack = Stack()
    compiled_frame(stack, SP, RUNTIME_STUB, native("SharedRuntime::runtime_work"), saved_rbp=0x1F)
    stack.put(SP, at(HOT, 0x60))
    # WHEN unwound
    frames, stats = unwound(sample(stack, ip=RUNTIME_STUB.code_begin + 0x10, anchor=(SP + 0x8, 0, 0)))
    # THEN the anchor is not taken: the walk ends at the libjvm frame, incomplete
    assert frames == [(RUNTIME_STUB.code_begin + 0x10, "[_new_array_Java]"),
                      (native("SharedRuntime::runtime_work"), "SharedRuntime::runtime_work")]
    assert stats == counters_of(reached_root=0, java_reached_root=0)


@pytest.mark.parametrize("top", [True, False], ids=["top", "deeper"])
def test_compiled_frame_never_returns_into_native_code(top: bool) -> None:
    # GIVEN C2 `hot` whose return address slot holds a libc/libjvm return address (a stale word: native
    # code calls Java only through the call stub), and no other plausible return address near sp
    stack = Stack()
    hot_sp = SP
    if not top:
        hot_sp = compiled_frame(stack, SP, CALLER, at(HOT, 0x90), saved_rbp=0)
    compiled_frame(stack, hot_sp, HOT, native("SharedRuntime::runtime_work"), saved_rbp=0x1F)
    # WHEN unwound
    frames, stats = unwound(sample(stack, ip=at(CALLER if not top else HOT, 0x80)))
    # THEN hot is not joined to the native code: the walk ends there, incomplete, with no made-up caller
    assert native("SharedRuntime::runtime_work") not in [address for address, _name in frames]
    assert frames[-2 if not top else -1][1] == "pyproftest.Synth.hot [C2]"
    if top:
        assert stats == counters_of(reached_root=0, java_reached_root=0)
    else:
        assert frames[-1][1] == "[unknown]"
        assert stats == counters_of(reached_root=0, java_reached_root=0,
                                    unknown_frames={"return address is no call site": 1})


def test_frame_larger_than_a_mebibyte_is_refused() -> None:
    # GIVEN a RuntimeStub whose frame size says 2 MiB (garbage), with a plausible return address there
    # (in the sample's copy, so that the step is not refused earlier for want of live memory)
    huge = dataclasses.replace(RUNTIME_STUB, frame_size=(2 << 20) // WORD)
    stack = Stack(size=WORD * huge.frame_size)
    stack.put(SP + WORD * huge.frame_size - WORD, at(HOT, 0x90))
    u, _ = unwinder(blobs=(huge, HOT))
    # WHEN unwound
    frames = u.unwind(sample(stack, ip=huge.code_begin + 0x10))
    # THEN the step is refused as the stack going backwards (a frame larger than MAX_FRAME_BYTES)
    assert described(frames) == [(huge.code_begin + 0x10, "[_new_array_Java]"), (0, "[unknown]")]
    assert stats_of(u.stats) == counters(frames=2, reached_root=0, java_reached_root=0,
                                         unknown_frames={"stack went backwards": 1})


def test_sample_without_user_registers_is_one_unknown_frame() -> None:
    # GIVEN a sample of an exiting thread: no user registers (sp 0)
    u, _ = unwinder()
    s = dataclasses.replace(sample(Stack(), ip=0), sp=0, stack=b"")
    # WHEN unwound  THEN one counted unknown frame
    assert described(u.unwind(s)) == [(0, "[unknown]")]
    assert stats_of(u.stats) == counters(frames=1, reached_root=0, java_samples=0, java_reached_root=0,
                                         unknown_frames={"no user registers": 1})
