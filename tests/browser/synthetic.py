"""A big synthetic profile with the shape of a busy JVM service, for the flame graph's load-time test.

Deterministic (seeded). Threads run a handful of entry points; each stack is a random walk down a
layered call graph (interpreted, C1, C2 frames, inlining chains), under HotSpot's native thread
prefix, sometimes ending in libc or the kernel. Every stack is distinct, as in a long real profile.
"""

from __future__ import annotations

import random

from pyprof.model import FrameKind, LogicalFrame, Mapping, PhysicalFrame, ProfileData, StackKey

LIBJVM = Mapping(0x7F00_0000_0000, 0x7F00_0100_0000, 0, "/usr/lib/jvm/lib/server/libjvm.so")
LIBC = Mapping(0x7F10_0000_0000, 0x7F10_0020_0000, 0, "/usr/lib/x86_64-linux-gnu/libc.so.6")
THREAD_PREFIX = ("thread_native_entry(Thread*)", "Thread::call_run()", "JavaThread::thread_main_inner()",
                 "thread_entry(JavaThread*, JavaThread*)", "JavaCalls::call_helper(JavaValue*, ...)")
JAVA_KINDS = (FrameKind.C2, FrameKind.C2, FrameKind.C2, FrameKind.C1, FrameKind.INTERPRETED)


def _native(name: str, address: int, mapping: Mapping) -> PhysicalFrame:
    return PhysicalFrame(address, (LogicalFrame(name, FrameKind.NATIVE, filename=mapping.filename),), mapping)


def _java_frame(funcs, callee: tuple[int, int], inlined_caller, offset: int) -> PhysicalFrame:
    """A compiled or interpreted frame; with `inlined_caller`, the callee is inlined into it (one
    physical frame, two logical ones, innermost first)."""
    name, kind, address = funcs[callee[0]][callee[1]]
    if inlined_caller is None:
        logical = (LogicalFrame(name, kind, filename="X.java", line=10 + callee[1]),)
    else:
        caller = funcs[inlined_caller[0]][inlined_caller[1]][0]
        logical = (LogicalFrame(name, FrameKind.INLINED, filename="X.java", line=10 + callee[1]),
                   LogicalFrame(caller, FrameKind.C2, filename="X.java", line=5))
    return PhysicalFrame(address + offset, logical)


def synthetic_profile(stacks: int = 200_000, seed: int = 7, threads: int = 48, layers: int = 28,
                      per_layer: int = 220) -> ProfileData:
    rng = random.Random(seed)
    packages = [f"com.example.{p}" for p in ("http", "db", "cache", "json", "auth", "billing", "search",
                                              "report", "util", "io", "metrics", "queue")]
    # layered call graph: a function in layer L calls 2-4 functions of layer L+1 or L+2
    funcs: list[list[tuple[str, FrameKind, int]]] = []
    address = 0x7F20_0000_0000
    for layer in range(layers):
        row = []
        for i in range(per_layer):
            pkg = packages[(layer * 7 + i) % len(packages)]
            name = f"{pkg}.Class{layer:02d}x{i % 37}.method{i}"
            address += 0x400
            row.append((name, rng.choice(JAVA_KINDS), address))
        funcs.append(row)
    callees = {}
    for layer in range(layers - 1):
        for i in range(per_layer):
            targets = []
            for _ in range(rng.randint(2, 4)):
                next_layer = min(layers - 1, layer + rng.choice((1, 1, 1, 2)))
                targets.append((next_layer, rng.randrange(per_layer)))
            callees[(layer, i)] = targets
    prefix = tuple(_native(name, LIBJVM.start + 0x1000 * (k + 1), LIBJVM)
                   for k, name in enumerate(reversed(THREAD_PREFIX)))
    stub = PhysicalFrame(0x7F30_0000_1000, (LogicalFrame("[StubRoutines (1)]", FrameKind.JVM_STUB),))
    entries = [(0, rng.randrange(per_layer)) for _ in range(8)]
    profile = ProfileData(period_ns=10_101_010, duration_ns=600 * 10**9, start_time_ns=1_700_000_000 * 10**9)
    profile.comments.append("synthetic profile (tests/browser/synthetic.py)")
    seen: set = set()
    made: dict = {}   # physical frames are shared, as in a real profile (one object per location)
    thread_names = [f"worker-{t}" if t % 6 else f"http-nio-8080-exec-{t}" for t in range(threads)]
    while len(seen) < stacks:
        t = rng.randrange(threads)
        layer, i = entries[t % len(entries)]
        path = [(layer, i)]
        depth = rng.randint(8, layers - 1)
        while len(path) < depth and (layer, i) in callees:
            layer, i = rng.choice(callees[(layer, i)])
            path.append((layer, i))
        leaf_offset = rng.randrange(64)
        ending = rng.random()
        key_path = (t, tuple(path), leaf_offset, ending < 0.1, ending > 0.95)
        if key_path in seen:
            continue
        seen.add(key_path)
        frames: list[PhysicalFrame] = []
        if ending < 0.1:
            frames.append(_native("__memmove_avx_unaligned_erms", LIBC.start + 0x1000 + leaf_offset, LIBC))
        elif ending > 0.95:
            frames.append(PhysicalFrame(0xFFFF_FFFF_8100_0000 + leaf_offset,
                                        (LogicalFrame("copy_user_enhanced_fast_string", FrameKind.KERNEL),)))
        # leaf first; every third frame carries an inlined callee
        java = list(reversed(path))
        k = 0
        while k < len(java):
            offset = leaf_offset if not frames and k == 0 else 0
            inline = (funcs[java[k][0]][java[k][1]][1] is FrameKind.C2 and k + 1 < len(java) and k % 3 == 1)
            cache_key = (java[k], java[k + 1] if inline else None, offset)
            frame = made.get(cache_key)
            if frame is None:
                frame = made[cache_key] = _java_frame(funcs, java[k], java[k + 1] if inline else None, offset)
            frames.append(frame)
            k += 2 if inline else 1
        frames.append(stub)
        frames.extend(prefix)
        count = 1 + int(rng.paretovariate(1.5)) if rng.random() < 0.3 else 1
        profile.add(StackKey(tuple(frames), thread_names[t], 1000 + t), count)
    return profile
