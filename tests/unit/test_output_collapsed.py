"""Folded stacks (pyprof.output.collapsed): exact text for small hand-built profiles."""

from __future__ import annotations

from pathlib import Path

from pyprof.model import FrameKind, LogicalFrame, Mapping, PhysicalFrame, ProfileData, StackKey
from pyprof.output import write_profile
from pyprof.output.collapsed import render

LIBC = Mapping(0x7F00_0000_0000, 0x7F00_0020_0000, 0, "/usr/lib/x86_64-linux-gnu/libc.so.6")
HASH = LogicalFrame("java.util.HashMap.hash", FrameKind.INLINED, "", "HashMap.java", 338)
GET = LogicalFrame("java.util.HashMap.get", FrameKind.INLINED, "", "HashMap.java", 556)
RUN = LogicalFrame("demo.Work.run", FrameKind.C2, "", "Work.java", 42)
MAIN = LogicalFrame("demo.Main.main", FrameKind.INTERPRETED, "", "Main.java", 7)
ARRAYCOPY = LogicalFrame("java.lang.System.arraycopy", FrameKind.NATIVE_METHOD)
C1_LOOP = LogicalFrame("demo.Work.loop", FrameKind.C1, "", "Work.java", 12)
MEMCPY = LogicalFrame("memcpy", FrameKind.NATIVE, "memcpy", LIBC.filename)
SYSCALL = LogicalFrame("do_syscall_64", FrameKind.KERNEL)
STUB = LogicalFrame("[StubRoutines]", FrameKind.JVM_STUB)

C2_FRAME = PhysicalFrame(0x7F3E_348C_9080, (HASH, GET, RUN))   # innermost first
MAIN_FRAME = PhysicalFrame(0x7F3E_3000_1234, (MAIN,))


def small_profile() -> ProfileData:
    p = ProfileData()
    p.add(StackKey((C2_FRAME, MAIN_FRAME), "main", 100), 55)
    p.add(StackKey((PhysicalFrame(0xFFFF_FFFF_8100_1234, (SYSCALL,)),
                    PhysicalFrame(0x7F00_0003_1234, (MEMCPY,), LIBC),
                    PhysicalFrame(0x7F3E_3400_0040, (ARRAYCOPY,)),
                    PhysicalFrame(0x7F3E_3500_0000, (C1_LOOP,)), MAIN_FRAME), "worker-1", 101), 30)
    p.add(StackKey((PhysicalFrame(0x7F3E_3300_0000, (STUB,)), MAIN_FRAME), "worker-1", 101), 5)
    return p


def test_folded_text_with_tiers() -> None:
    # GIVEN a C2 frame with two inlined callees, C1, JNI, libc, kernel and stub frames on two threads
    # WHEN rendered as folded stacks
    text = render(small_profile())
    # THEN each stack is one sorted line, root (thread) first, inlining expanded outermost first,
    # every Java frame with its tier
    assert text == (
        "main;demo.Main.main [interp];demo.Work.run [C2];java.util.HashMap.get [inlined];"
        "java.util.HashMap.hash [inlined] 55\n"
        "worker-1;demo.Main.main [interp];[StubRoutines] 5\n"
        "worker-1;demo.Main.main [interp];demo.Work.loop [C1];java.lang.System.arraycopy [jni];"
        "memcpy;do_syscall_64 30\n"
    )


def test_folded_text_without_tiers_merges_what_only_the_tier_separated() -> None:
    # GIVEN the same method at the same place, once compiled by C1 and once by C2, in one thread
    p = ProfileData()
    for kind, count in ((FrameKind.C1, 3), (FrameKind.C2, 4)):
        run = PhysicalFrame(0x1000 + count, (LogicalFrame("demo.Work.run", kind),))
        p.add(StackKey((run, MAIN_FRAME), "main", 1), count)
    # WHEN rendered with and without tiers
    # THEN with tiers they are two lines, without tiers one line with the sum
    assert render(p) == ("main;demo.Main.main [interp];demo.Work.run [C1] 3\n"
                         "main;demo.Main.main [interp];demo.Work.run [C2] 4\n")
    assert render(p, tiers=False) == "main;demo.Main.main;demo.Work.run 7\n"


def test_separators_inside_names_are_replaced() -> None:
    # GIVEN a thread name and a frame name holding `;` and a newline
    frame = PhysicalFrame(0x10, (LogicalFrame("weird;name\nhere", FrameKind.NATIVE),))
    p = ProfileData()
    p.add(StackKey((frame,), "pool;1\r\n", 7), 2)
    # WHEN rendered
    # THEN the line still has exactly one frame per `;` and no line break inside
    assert render(p) == "pool:1  ;weird:name here 2\n"


def test_thread_frame_without_a_thread_name() -> None:
    # GIVEN a sample of an unnamed thread, one with neither name nor tid (as read from a Go profile),
    # and an empty profile
    p = ProfileData()
    p.add(StackKey((MAIN_FRAME,), "", 4242), 2)
    p.add(StackKey((MAIN_FRAME,), "", 0), 1)
    # WHEN rendered  THEN the unnamed thread is its tid, no thread at all is no root frame, and an empty
    # profile is empty text
    assert render(p) == "[tid=4242];demo.Main.main [interp] 2\ndemo.Main.main [interp] 1\n"
    assert render(ProfileData()) == ""


def test_write_profile_collapsed(tmp_path: Path) -> None:
    # GIVEN the small profile  WHEN written as a .txt file  THEN the file is the rendered text
    path = tmp_path / "stacks.txt"
    write_profile(small_profile(), str(path), "collapsed")
    assert path.read_text(encoding="utf-8") == render(small_profile())
