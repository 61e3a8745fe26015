"""Synthetic profile windows for the store and exporter tests: known stacks, known counts."""

from __future__ import annotations

from pyprof.model import FrameKind, LogicalFrame, Mapping, PhysicalFrame, ProfileData, StackKey

PERIOD_NS = 20_408_163          # 49 Hz, the daemon's default rate
T0 = 1_764_471_000 * 1_000_000_000   # 2025-11-30T02:50:00Z
WINDOW_NS = 15 * 1_000_000_000
LIBC = Mapping(0x7F00_0000_0000, 0x7F00_0020_0000, 0x28000, "/usr/lib/x86_64-linux-gnu/libc.so.6", "c0ffee01")

MAIN = LogicalFrame("demo.Main.main", FrameKind.INTERPRETED, "demo.Main.main([Ljava/lang/String;)V",
                    "Main.java", 7)
WORK = LogicalFrame("demo.Work.run", FrameKind.C2, "demo.Work.run()V", "Work.java", 42)
HASH = LogicalFrame("java.util.HashMap.hash", FrameKind.INLINED,
                    "java.util.HashMap.hash(Ljava/lang/Object;)I", "HashMap.java", 338)
MEMCPY = LogicalFrame("memcpy", FrameKind.NATIVE, "memcpy", LIBC.filename)

MAIN_F = PhysicalFrame(0x7F3E_0000_1000, (MAIN,))
WORK_F = PhysicalFrame(0x7F3E_348C_9080, (HASH, WORK))          # HashMap.hash inlined into run
MEMCPY_F = PhysicalFrame(0x7F00_0003_0040, (MEMCPY,), LIBC)

HOT = StackKey((WORK_F, MAIN_F), "worker-1", 101)
COPY = StackKey((MEMCPY_F, WORK_F, MAIN_F), "worker-2", 102, (("span", "checkout"),))


def window(start_ns: int = T0, hot: int = 30, copy: int = 10, *, lost: int = 0, unknown: int = 0,
           period_ns: int = PERIOD_NS) -> ProfileData:
    profile = ProfileData(period_ns=period_ns, start_time_ns=start_ns, duration_ns=WINDOW_NS,
                          lost_samples=lost, unknown_frames=unknown)
    if hot:
        profile.add(HOT, hot)
    if copy:
        profile.add(COPY, copy)
    return profile
