"""The unwinder on stacks recorded from real JVMs (JDK 21: tests/java Phases and JitZoo), replayed without
root, BPF or a JVM (tests/unit/data/unwind_fixture.py says what a recording holds and how to re-record).

Each test takes recorded samples of one kind (compiled, interpreted, stubs, native with and without frame
pointers, inlining, OSR, deoptimized callers, kernel) and unwinds them on a fresh Unwinder; the expected
frames come from the Java sources (method names, `// LINE:` markers, the text of call lines), not from the
unwinder; the counters (UnwindStats) are asserted exactly. The first test also pins every recorded
sample to what the live unwinder gave at recording time (but those in KNOWN_WRONG, which have strict-xfail
tests of the right answer instead): a change to the unwinder that changes any of them shows up here, and
is either a regression or a fix (then re-record).
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import pytest

from pyprof.model import FrameKind, PhysicalFrame, display_name
from pyprof.sampling.events import java_part
from pyprof.sampling.unwind import UnwindStats, _Walk
from tests.integration.test_recursion import ALLOWED_CALLERS as RECURSION_CALLERS
from tests.integration.test_workloads import java_source, marker_line
from tests.unit.data.unwind_fixture import (
    RecordedSample,
    Recording,
    fixture_path,
    load,
    replay_unwinder,
    stats_of,
)

PHASES_OF = {jdk: load(fixture_path("Phases", jdk)) for jdk in (17, 21, 25)}
PHASES = PHASES_OF[21]
ZOO = load(fixture_path("JitZoo", 21))
RECURSION_OF = {jdk: load(fixture_path("Recursion", jdk)) for jdk in (11, 21, 25)}
RECORDINGS = {"phases-jdk17": PHASES_OF[17], "phases-jdk21": PHASES, "phases-jdk25": PHASES_OF[25],
              "jitzoo-jdk21": ZOO, **{f"recursion-jdk{jdk}": rec for jdk, rec in RECURSION_OF.items()}}
CALL_STUB_BLOB = {17: "[StubRoutines (1)]", 21: "[StubRoutines (initial stubs)]",
                  25: "[StubRoutines (initialstubs)]"}

# A Java thread started by the JVM, below its run() method: the call stub, then libjvm's frame-pointer chain
JAVA_THREAD_NATIVE_BOTTOM = [
    "JavaCalls::call_helper(JavaValue*, methodHandle const&, JavaCallArguments*, JavaThread*)",
    "JavaCalls::call_virtual(JavaValue*, Handle, Klass*, Symbol*, Symbol*, JavaThread*)",
    "thread_entry(JavaThread*, JavaThread*)",
    "JavaThread::thread_main_inner()",
    "Thread::call_run()",
    "thread_native_entry(Thread*)",
]
JAVA_THREAD_BOTTOM = [CALL_STUB_BLOB[21], *JAVA_THREAD_NATIVE_BOTTOM]
ZOO_THREAD = ["pyproftest.JitZoo.run [interp]", *JAVA_THREAD_BOTTOM]


def phases_thread(jdk: int) -> list[str]:
    """Phases' worker below runCycle: loop and run interpreted, Thread.run (JDK 21+: through runWith)."""
    thread = ["java.lang.Thread.run [interp]"] if jdk < 21 else ["java.lang.Thread.runWith [interp]",
                                                                 "java.lang.Thread.run [interp]"]
    return ["pyproftest.Phases.loop [interp]", "pyproftest.Phases.run [interp]", *thread, CALL_STUB_BLOB[jdk],
            *JAVA_THREAD_NATIVE_BOTTOM]



# Samples the unwinder gets wrong today, with the diagnosis; each has an xfail test of the right answer.
# (None today: the two of the first recordings - a C2 prologue without stack bang, a stale anchor - are
# fixed, and tested on those recordings, see V1 below.)
KNOWN_WRONG: dict[tuple[str, int], str] = {}

# The first recordings (format 1, made with the frame-pointer-only unwinder), kept for the samples it got
# wrong: they hold only the memory that unwinder read, so only those samples replay faithfully, and their
# pinned frames are that unwinder's (not replayed by test_recorded_sample_replays_to_what_the_live_...).
V1_PHASES = load(fixture_path("Phases", 21).with_name("unwind-phases-jdk21-v1.json.gz"))
V1_ZOO = load(fixture_path("JitZoo", 21).with_name("unwind-jitzoo-jdk21-v1.json.gz"))


@cache
def line_of(workload: str, text: str) -> int:
    """The 1-based line of the only line of the workload's source containing `text`."""
    found = [n for n, line in enumerate(java_source(workload).read_text().splitlines(), 1) if text in line]
    assert len(found) == 1, (workload, text, found)
    return found[0]


def replayed(rec: Recording, s: RecordedSample, **changes) -> tuple[tuple[PhysicalFrame, ...], dict]:
    """Unwind one recorded sample (its raw fields changed by `changes`) on a fresh unwinder."""
    u = replay_unwinder(rec)
    frames = u.unwind(dataclasses.replace(s.raw, **changes))
    return frames, stats_of(u.stats)


def names(frames: tuple[PhysicalFrame, ...], kernel: bool = False) -> list[str]:
    return [" | ".join(display_name(lf) for lf in f.frames) for f in frames
            if kernel or f.frames[0].kind is not FrameKind.KERNEL]


def user_frames(frames: tuple[PhysicalFrame, ...]) -> list[PhysicalFrame]:
    """The frames below the kernel's (a sample may have been taken in the kernel)."""
    return [f for f in frames if f.frames[0].kind is not FrameKind.KERNEL]


def lines(frames: tuple[PhysicalFrame, ...]) -> list[int]:
    return [f.frames[0].line for f in frames if f.frames[0].kind is not FrameKind.KERNEL]


def counters(frames: tuple[PhysicalFrame, ...], **changed) -> dict:
    """One sample's UnwindStats: a Java thread's complete stack, unless `changed`."""
    unknown = changed.pop("unknown_frames", {})
    stats = UnwindStats(samples=1, frames=len(frames), reached_root=1, java_samples=1, java_reached_root=1)
    for k, v in changed.items():
        setattr(stats, k, v)
    stats.unknown_frames.update(unknown)
    return stats_of(stats)


def samples(rec: Recording, feature: str, leaf: str = "") -> list[RecordedSample]:
    """Recorded samples with `feature` whose first user frame's name starts with `leaf`; at least one."""
    key = f"{rec.workload.lower()}-jdk{rec.jdk}"
    found = [s for i, s in enumerate(rec.samples) if feature in s.features
             and (key, i) not in KNOWN_WRONG and names(s.frames)[0].startswith(leaf)]
    assert found, f"the {rec.workload} recording has no {feature} sample in {leaf or 'any function'}"
    return found


# ---- every recorded sample ----------------------------------------------------------------------------
ALL = [pytest.param(rec, i, id=f"{key}-{i}")
       for key, rec in RECORDINGS.items() for i in range(len(rec.samples)) if (key, i) not in KNOWN_WRONG]


@pytest.mark.parametrize("rec, index", ALL)
def test_recorded_sample_replays_to_what_the_live_unwinder_gave(rec: Recording, index: int) -> None:
    # GIVEN a sample of a real JVM and the frames and counters the live unwinder gave it
    s = rec.samples[index]
    # WHEN replayed on a fresh unwinder (empty caches: nothing carried over from other samples)
    frames, stats = replayed(rec, s)
    # THEN the very same frames (addresses, names, kinds, lines, mappings) and counters
    assert frames == s.frames
    assert stats == s.stats


def test_recordings_cover_every_kind_of_frame() -> None:
    # GIVEN both recordings  THEN together they hold every kind of frame this file tests
    features = {f for rec in RECORDINGS.values() for s in rec.samples for f in s.features}
    assert {"c1", "c2", "interpreted", "top:interpreted", "inlining", "osr", "stub", "top:stub", "jni",
            "native", "kernel", "anchor", "deoptimized", "root"} <= features, features


def test_interpreter_calling_into_the_vm_reaches_the_thread_entry() -> None:
    # (was a strict xfail: the walk followed rbp through the VM and Java frames past the anchor, then
    # jumped back down to it from JavaCalls::call_helper: 'stack went backwards', an incomplete stack)
    for i in (0, 1, 2):
        # GIVEN a sample in the VM called from interpreted Victim code (a compilation-policy event)
        s = V1_ZOO.samples[i]
        assert any(n.startswith("InterpreterRuntime::frequency_counter_overflow(") for n in names(s.frames))
        assert s.stats["unknown_frames"] == {"stack went backwards": 1}      # what the first unwinder gave
        frames, stats = replayed(V1_ZOO, s)
        # THEN the stack is complete down to the thread's entry, with nothing unknown
        assert names(frames)[-len(ZOO_THREAD):] == ZOO_THREAD
        assert stats == counters(frames, anchor_used=stats["anchor_used"])


# ---- compiled and interpreted -------------------------------------------------------------------------
@pytest.mark.parametrize("jdk", [17, 21, 25])
def test_compiled_frames_down_to_the_thread_entry(jdk: int) -> None:
    rec = PHASES_OF[jdk]
    for s in samples(rec, "top:c2", "pyproftest.Phases.phase"):
        phase = names(s.frames)[0].split(".")[-1].split(" ")[0]
        # GIVEN a sample in C2 code of phaseA or phaseB (a physical frame of its own: never inlined)
        # WHEN replayed
        frames, stats = replayed(rec, s)
        # THEN phaseX <- runCycle (C1 or C2) at the call line <- the interpreted loop and run <- Thread.run
        # <- the call stub <- libjvm down to thread_native_entry: complete, nothing unknown
        got = names(frames)
        assert got[0] == f"pyproftest.Phases.{phase} [C2]"
        assert got[1] in ("pyproftest.Phases.runCycle [C1]", "pyproftest.Phases.runCycle [C2]")
        assert got[2:] == phases_thread(jdk)
        got_lines = lines(frames)
        first, last = marker_line("Phases", f"{phase}-begin"), marker_line("Phases", f"{phase}-end")
        assert first <= got_lines[0] <= last
        assert got_lines[1:4] == [marker_line("Phases", f"call-{phase}"),
                                  line_of("Phases", "acc += runCycle("),
                                  line_of("Phases", "loop(shares, cycleNanos, until, true)")]
        assert stats == counters(frames)


def test_compiled_frame_sampled_at_its_verified_entry() -> None:
    # (was a strict xfail: C2's prologue without stack bang (`sub rsp; mov [rsp+N], rbp`) made
    # _prologue_slot say slot 1 at the verified entry, where the return address is at [sp])
    # GIVEN the recorded sample of phaseB at its first instruction (`sub rsp, 0x28`: nothing on the stack
    # but the return address into runCycle)
    s = V1_PHASES.samples[2]
    assert s.raw.ip == V1_PHASES.lookup_blob(s.raw.ip).verified_entry
    frames, stats = replayed(V1_PHASES, s)
    # THEN runCycle is its caller, and the stack is complete
    assert names(frames)[:2] == ["pyproftest.Phases.phaseB [C2]", "pyproftest.Phases.runCycle [C1]"]
    assert stats == counters(frames)


@pytest.mark.parametrize("jdk", [17, 21])
def test_interpreted_top_frame_takes_its_bcp_from_r13(jdk: int) -> None:
    rec = PHASES_OF[jdk]
    s = samples(rec, "top:interpreted", "pyproftest.Phases.loop [interp]")[0]
    # GIVEN a sample in the interpreter running Phases.loop: its live bcp is in r13
    frames, stats = replayed(rec, s)
    # THEN loop's line comes from r13, the callers' lines from the bcp slots of their frames
    assert names(frames) == phases_thread(jdk)
    loop_lines = range(line_of("Phases", "static long loop("), line_of("Phases", "loop(shares, 250_000L"))
    assert lines(frames)[0] in loop_lines
    assert lines(frames)[1] == line_of("Phases", "loop(shares, cycleNanos, until, true)")
    assert stats == counters(frames)
    # AND WHEN r13 holds no bcp (zero, or an address outside the method's bytecodes)
    for r13 in (0, s.raw.r13 + 0x100000):
        other, other_stats = replayed(rec, s, r13=r13)
        # THEN the same frames, the top one without a line
        assert names(other) == names(frames) and lines(other) == [0, *lines(frames)[1:]]
        assert other_stats == stats


def test_interpreted_frames_deeper_in_the_stack_take_their_bcp_from_the_frame() -> None:
    # GIVEN a sample in JitZoo$Victim.work interpreted (just deoptimized or not compiled yet)
    s = samples(ZOO, "top:interpreted", "pyproftest.JitZoo$Victim.work [interp]")
    s = [x for x in s if lines(x.frames)[0]][0]
    frames, stats = replayed(ZOO, s)
    # THEN work <- callFor <- deoptLoop (at one of its callFor lines) <- run, each at its line
    assert names(frames) == ["pyproftest.JitZoo$Victim.work [interp]", "pyproftest.JitZoo.callFor [interp]",
                             "pyproftest.JitZoo.deoptLoop [interp]", *ZOO_THREAD]
    got = lines(frames)
    assert got[0] in (marker_line("JitZoo", "victim-call"), marker_line("JitZoo", "victim-call") - 1)
    assert got[1] == line_of("JitZoo", "s += k.work(data, 0);")
    assert got[2] in (line_of("JitZoo", "callFor(k, data, 150_000_000L)"),
                      line_of("JitZoo", "callFor(k, data, 100_000_000L)"))
    assert got[3] == line_of("JitZoo", "deoptLoop(started);")
    assert stats == counters(frames)


# ---- inlining, OSR, stubs -----------------------------------------------------------------------------
def test_inlining_chain_of_a_compiled_frame_with_the_lines_of_each_method() -> None:
    s = samples(ZOO, "top:inlined", "pyproftest.JitZoo.lambda$lambdaLoop$2 [inlined]")[0]
    # GIVEN C2 code of ArrayList.forEach into which the forEach lambda was inlined (-XX:+DebugNonSafepoints)
    frames, stats = replayed(ZOO, s)
    # THEN one physical frame holds the chain, innermost first, each with its own kind and line
    leaf = user_frames(frames)[0].frames
    assert [display_name(lf) for lf in leaf[::2]] == ["pyproftest.JitZoo.lambda$lambdaLoop$2 [inlined]",
                                                      "java.util.ArrayList.forEach [C2]"]
    assert leaf[1].name.startswith("pyproftest.JitZoo$$Lambda/0x") and leaf[1].kind is FrameKind.INLINED
    body = range(marker_line("JitZoo", "lambdas-foreach") + 1, marker_line("JitZoo", "lambda-foreach") + 2)
    assert leaf[0].line in body
    # AND below it lambdaLoop (interpreted, or its OSR nmethod) at the forEach line, then run
    assert names(frames)[1] in ("pyproftest.JitZoo.lambdaLoop [interp]",
                                "pyproftest.JitZoo.lambdaLoop [C1 OSR]",
                                "pyproftest.JitZoo.lambdaLoop [C2 OSR]")
    assert names(frames)[2:] == ZOO_THREAD
    assert lines(frames)[1:3] == [marker_line("JitZoo", "lambdas-foreach"),
                                  line_of("JitZoo", "lambdaLoop(started);")]
    assert stats == counters(frames)


def test_osr_nmethod_is_marked_and_called_from_the_interpreter() -> None:
    for s in samples(ZOO, "osr", "pyproftest.JitZoo.osrLoop"):
        # GIVEN a sample in osrLoop's OSR nmethod
        frames, stats = replayed(ZOO, s)
        # THEN it is the leaf, compiled and OSR, at a line of its loop, called by run
        assert names(frames) == ["pyproftest.JitZoo.osrLoop [C2 OSR]", *ZOO_THREAD]
        assert user_frames(frames)[0].frames[0].osr
        loop_begin = line_of("JitZoo", "for (long i = 0; ; i++)")
        loop_end = marker_line("JitZoo", "osr-publish")
        assert loop_begin <= lines(frames)[0] <= loop_end
        assert lines(frames)[1] == line_of("JitZoo", "osrLoop();")
        assert stats == counters(frames)


def test_stub_routine_at_the_top_then_its_compiled_caller() -> None:
    for s in samples(ZOO, "top:stub", "[StubRoutines (initial stubs)]"):
        # GIVEN a sample in the CRC32 intrinsic's stub (no frame of its own), called from C2 code
        frames, stats = replayed(ZOO, s)
        # THEN the stub, then crcLoop's OSR nmethod with CRC32.update inlined, at the update line
        assert names(frames) == [
            "[StubRoutines (initial stubs)]",
            "java.util.zip.CRC32.updateBytes [inlined] | java.util.zip.CRC32.update [inlined] | "
            "pyproftest.JitZoo.crcLoop [C2 OSR]", *ZOO_THREAD]
        assert frames[1].frames[-1].line == marker_line("JitZoo", "crc-update")
        assert stats == counters(frames)


# ---- native frames ------------------------------------------------------------------------------------
@pytest.mark.parametrize("jdk", [17, 21, 25])
def test_jni_code_without_frame_pointers_resumes_at_the_anchor(jdk: int) -> None:
    rec = PHASES_OF[jdk]
    for s in samples(rec, "anchor", "Java_pyproftest_Phases_nativePhase"):
        # GIVEN a sample in libphases.so (-O2, no frame pointers) under the native method nativePhase
        frames, stats = replayed(rec, s)
        # THEN the JNI function, then (from the JavaThread's anchor) the native method and its callers
        assert names(frames)[:2] == ["Java_pyproftest_Phases_nativePhase",
                                     "pyproftest.Phases.nativePhase [jni]"]
        assert names(frames)[2] in ("pyproftest.Phases.runCycle [C1]", "pyproftest.Phases.runCycle [C2]")
        assert names(frames)[3:] == phases_thread(jdk)
        assert lines(frames)[2] == marker_line("Phases", "call-native")
        leaf = next(f for f in frames if f.frames[0].kind is not FrameKind.KERNEL)
        assert leaf.mapping is not None and leaf.mapping.filename.endswith("/libphases.so")
        assert stats == counters(frames, anchor_used=1)
        # AND WHEN the same sample comes without the anchor
        alone, alone_stats = replayed(rec, s, anchor_sp=0, anchor_pc=0, anchor_fp=0)
        # THEN the JNI function's CFI (libphases.so has .eh_frame) leads to the same callers: the anchor is
        # not needed (the recorder unwound this variant too, so its reads are in the recording)
        assert names(alone) == names(frames)
        assert alone_stats == counters(alone)


def logical_names(frames: tuple[PhysicalFrame, ...]) -> list[str]:
    """Every logical frame's plain name (no tier), inlined or not: what does not depend on the JIT."""
    return [lf.name for f in frames for lf in f.frames if lf.kind is not FrameKind.KERNEL]


def test_native_library_frames_then_the_java_native_method() -> None:
    for s in samples(ZOO, "anchor"):
        if "pyproftest.JitZoo.deflateLoop" not in logical_names(s.frames):
            continue
        # GIVEN a sample of the "deflate" thread in zlib (bundled in libzip.so) under the native method
        frames, stats = replayed(ZOO, s)
        got = logical_names(frames)
        jni = got.index("Java_java_util_zip_Deflater_deflateBytesBytes")
        # THEN zlib's own frames, the JNI entry, the native method (from the anchor), then Java down to run
        native = [f for f in frames if f.frames[0].kind is not FrameKind.KERNEL][:jni + 1]
        libraries = [Path(f.mapping.filename).name if f.mapping is not None else "" for f in native]
        # (zlib's leaf may be a libc function it called, e.g. memcpy, unwound by its CFI)
        first_zlib = libraries.index("libzip.so")
        assert set(libraries[:first_zlib]) <= {"libc.so.6"} and set(libraries[first_zlib:]) == {"libzip.so"}
        assert got[jni + 1:] == ["java.util.zip.Deflater.deflateBytesBytes", "java.util.zip.Deflater.deflate",
                                 "java.util.zip.Deflater.deflate", "pyproftest.JitZoo.deflateLoop",
                                 "pyproftest.JitZoo.run", *JAVA_THREAD_BOTTOM]
        deflate_loop = next(lf for f in frames for lf in f.frames if lf.name.endswith(".JitZoo.deflateLoop"))
        assert deflate_loop.line == marker_line("JitZoo", "deflate-call")
        assert stats == counters(frames, anchor_used=1)
        return
    pytest.fail("the JitZoo recording has no sample of the deflate thread in zlib")


def test_kernel_frames_come_first_and_leave_the_user_frames_alone() -> None:
    for rec in RECORDINGS.values():
        for s in samples(rec, "kernel"):
            # GIVEN a sample taken in the kernel (the eBPF program's kernel stack, innermost first)
            frames, stats = replayed(rec, s)
            # THEN those frames lead, named from kallsyms (as recorded)
            kernel = frames[:len(s.raw.kernel_ips)]
            assert [f.address for f in kernel] == list(s.raw.kernel_ips)
            assert all(f.frames[0].kind is FrameKind.KERNEL and not f.frames[0].name.startswith("[kernel")
                       for f in kernel)
            # AND the user frames below are what the same sample gives without them
            user, user_stats = replayed(rec, s, kernel_ips=())
            assert frames[len(kernel):] == user
            assert stats["frames"] == user_stats["frames"] + len(kernel)


def test_libjvm_and_launcher_frames_by_frame_pointers_down_to_the_thread_entry() -> None:
    s = [x for x in PHASES.samples if names(x.frames)[-1:] == ["ThreadJavaMain"]][0]
    # GIVEN a sample of the launcher's main thread (Phases.main, called through JNI by the java launcher)
    frames, stats = replayed(PHASES, s)
    got = names(frames)
    stub = got.index("[StubRoutines (initial stubs)]")
    # THEN below the call stub, libjvm and libjli frames follow their saved rbp down to ThreadJavaMain
    assert got[stub - 1] == "pyproftest.Phases.main [interp]"
    assert got[stub:] == [
        "[StubRoutines (initial stubs)]",
        "JavaCalls::call_helper(JavaValue*, methodHandle const&, JavaCallArguments*, JavaThread*)",
        "jni_invoke_static(JNIEnv_*, JavaValue*, _jobject*, JNICallType, _jmethodID*, JNI_ArgumentPusher*, "
        "JavaThread*) [clone .constprop.1]",
        "jni_CallStaticVoidMethod", "JavaMain", "ThreadJavaMain"]
    assert frames[-1].mapping is not None and frames[-1].mapping.filename.endswith("/libjli.so")
    assert stats == counters(frames, anchor_used=stats["anchor_used"])


# ---- deoptimized callers ------------------------------------------------------------------------------
def test_frame_being_deoptimized_is_named_at_its_original_pc() -> None:
    for s in samples(ZOO, "deoptimized"):
        # GIVEN a sample with a compiled frame being deoptimized: its return address is its nmethod's deopt
        # handler, its original pc saved in the frame (JitZoo: Victim.workThenDeflate waiting for zlib
        # when Late was loaded, or a C1 frame of Victim.work unpacked by the deoptimization blob)
        frames, stats = replayed(ZOO, s)
        # THEN exactly one frame was unwound as deoptimized, and no frame stands at a deopt handler: each
        # compiled frame is at a pc inside its code, named with that pc's method and line
        assert stats == counters(frames, anchor_used=stats["anchor_used"], deoptimized_frames=1)
        for f in frames:
            blob = ZOO.lookup_blob(f.address)
            if blob is not None and blob.is_nmethod:
                assert f.address != blob.deopt_handler
                assert blob.code_begin <= f.address < blob.code_end
        got = names(frames)
        if "[DeoptimizationBlob]" in got:
            at = got.index("[DeoptimizationBlob]")
            assert got[at + 1] == "pyproftest.JitZoo$Victim.work [C1]"
            # (C1 deoptimizes Victim.work at its loop's back-edge: the `for` line, just above victim-call)
            assert lines(frames)[at + 1] == marker_line("JitZoo", "victim-call") - 1
        else:
            at = next(i for i, n in enumerate(got) if n.startswith("pyproftest.JitZoo$Victim.workThenDefl"))
            assert got[at] in ("pyproftest.JitZoo$Victim.workThenDeflate [C1]",
                               "pyproftest.JitZoo$Victim.workThenDeflate [C2]",
                               "pyproftest.JitZoo$Victim.workThenDeflate [C1 OSR]",
                               "pyproftest.JitZoo$Victim.workThenDeflate [C2 OSR]")
            assert lines(frames)[at] == marker_line("JitZoo", "victim-deflate")
            assert "java.util.zip.Deflater.deflateBytesBytes [jni]" in got[:at]
        assert got[-len(ZOO_THREAD):] == ZOO_THREAD


# ---- the top frame's code: prologues, epilogues, native epilogues (Recursion: fib inlined into itself) -
JAVA_KINDS = (FrameKind.INTERPRETED, FrameKind.C1, FrameKind.C2, FrameKind.INLINED, FrameKind.NATIVE_METHOD)
CODE_FEATURES = {
    # at `push rbp` / `sub rsp`; at `pop rbp`, the return poll (JDK 11: the polling page; 21: disp32; 25:
    # disp8), `ret`; native code after `leave` (its CFI's rbp slot below sp)
    11: ("code:prologue", "code:epilogue-pop-rbp", "code:epilogue-poll", "code:epilogue-ret",
         "code:native-popped-rbp"),
    # and JDK 21+'s nmethod entry barrier, after `sub rsp` but before frame_complete_offset
    21: ("code:prologue", "code:entry-barrier", "code:epilogue-pop-rbp", "code:epilogue-poll",
         "code:epilogue-ret", "code:native-popped-rbp"),
    25: ("code:prologue", "code:entry-barrier", "code:epilogue-pop-rbp", "code:epilogue-poll",
         "code:epilogue-ret", "code:native-popped-rbp"),
}


@pytest.mark.parametrize("jdk, feature", [(jdk, f) for jdk, fs in CODE_FEATURES.items() for f in fs])
def test_top_frame_laid_out_by_its_code_reaches_the_root_with_its_callers(jdk: int, feature: str) -> None:
    rec = RECURSION_OF[jdk]
    for s in samples(rec, feature):
        # GIVEN a sample whose top frame is where only its code bytes (or CFI) say where the return
        # address is (JDK 25 lost fib's caller there, or took a stale Deflater.end for it)
        frames, stats = replayed(rec, s)
        # THEN the stack reaches the thread's entry, nothing unknown ...
        assert stats == counters(frames, anchor_used=stats["anchor_used"]), (feature, names(frames))
        # ... each Java frame's caller is one the source allows, and run() is the outermost Java frame
        java = [lf.name for f in frames for lf in f.frames if lf.kind in JAVA_KINDS]
        assert java and java[-1] == "pyproftest.Recursion.run", names(frames)
        for callee, caller in zip(java, java[1:]):
            assert caller in RECURSION_CALLERS.get(callee, {caller}), (feature, callee, caller, names(frames))
        if feature != "code:native-popped-rbp":
            assert names(frames)[0].endswith("[C2]") or names(frames)[0].endswith("[C1]"), names(frames)


# ---- java_only: the walk begun at the anchor ----------------------------------------------------------
# samples whose anchor the unwinder uses (set, and above the sample's sp within the stack's span)
ANCHORED = [pytest.param(rec, i, id=f"{key}-{i}") for key, rec in RECORDINGS.items()
            for i, s in enumerate(rec.samples)
            if _Walk(s.raw).anchor is not None and (key, i) not in KNOWN_WRONG]


def test_recordings_have_anchored_samples_in_the_vm_and_in_native_code() -> None:
    tops = [user_frames(rec.samples[i].frames)[0] for rec, i in (p.values for p in ANCHORED)]
    in_libjvm = [f for f in tops if f.mapping is not None and "libjvm" in f.mapping.filename]
    assert len(ANCHORED) >= 40 and len(in_libjvm) >= 5, (len(ANCHORED), len(in_libjvm))


@pytest.mark.parametrize("rec, index", ANCHORED)
def test_walk_from_the_anchor_gives_the_java_part_of_the_full_walk(rec: Recording, index: int) -> None:
    # GIVEN a sample taken while the thread was in the VM or in native code (its anchor set)
    s = rec.samples[index]
    full = java_part(replay_unwinder(rec).unwind(s.raw))
    # WHEN it is unwound for an event that keeps only the Java part (alloc), on a fresh unwinder
    u = replay_unwinder(rec)
    anchored = u.unwind(s.raw, java_only=True)
    # THEN the walk began at the anchor (no kernel or VM frame walked) and gives the same Java part: the
    # same logical frames, at the same addresses but for the top interpreted frame, whose anchor pc is
    # the interpreter's own (where it left Java) rather than the return address below the VM's frame
    assert u.stats.anchor_starts == 1
    assert all(f.frames[0].kind is not FrameKind.KERNEL for f in anchored)
    assert java_part(anchored) == anchored
    assert [f.frames for f in anchored] == [f.frames for f in full]
    assert [f.address for f in anchored[1:]] == [f.address for f in full[1:]]
    if full[0].frames[0].kind is not FrameKind.INTERPRETED:
        assert anchored[0].address == full[0].address
