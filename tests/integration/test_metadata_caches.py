"""The metadata caches (pyprof.hotspot.method.MethodResolver) against real JVMs: kept across a GC that
unloads no class, dropped when classes are unloaded (a class of the same shape then reuses the unloaded
one's Method / ConstMethod / ConstantPool addresses, and must be named as itself), and dropped at every GC
when a class is redefined (or, where no count says when, at every GC while an agent may redefine classes).

Target: tests/java/src/pyproftest/CodeCacheChurn.java ("compile NAME" defines and compiles class
pyproftest.churn.NAME in a loader of its own; "unload" drops those loaders and runs System.gc() until
they are collected: with nothing to drop it is a full GC that unloads nothing).
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from pyprof.hotspot.codecache import CodeCache
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.method import GC_CHECK_INTERVAL, MethodInfo, MethodResolver
from tests.conftest import CLASSES, JavaProcess, start_java

pytestmark = [pytest.mark.jvm]

CHURN = "pyproftest.churn."
# JDWP asks for can_redefine_classes: JvmtiExport::_can_hotswap_or_post_breakpoint is then true
JDWP = "-agentlib:jdwp=transport=dt_socket,server=y,suspend=n,address=127.0.0.1:0"


def start_churn(version: int, *flags: str) -> JavaProcess:
    return start_java(version, "CodeCacheChurn", "4", "8", jvm_flags=flags, stdin=True)


def command(jp: JavaProcess, line: str, answer: str) -> str:
    assert jp.proc.stdin is not None
    jp.proc.stdin.write(line + "\n")
    jp.proc.stdin.flush()
    return jp.wait_for(answer, 60)


def method_pointers(jvm: HotSpotJvm, cls: str) -> set[int]:
    """The Method*s of the compiled methods of the classes named pyproftest.churn.<cls>... (a walk with
    its own resolver)."""
    snap = CodeCache(jvm, MethodResolver(jvm.reader, jvm.layout)).walk()
    found = {b.method_ptr for b in snap.blobs
             if b.is_nmethod and b.method_ptr and (b.method_name or "").startswith(f"{CHURN}{cls}")}
    assert found, f"no compiled method of {cls}"
    return found


def resolve_all(resolver: MethodResolver, pointers: set[int]) -> dict[int, MethodInfo]:
    return {p: resolver.resolve(p) for p in pointers}


def gc_count(jvm: HotSpotJvm) -> int:
    heap = jvm.reader.ptr(jvm.layout["Universe._collectedHeap"].address)
    counter = jvm.layout["CollectedHeap._total_collections"]
    return jvm.reader.uint(heap + counter.offset, counter.size)


def look(resolver: MethodResolver) -> None:
    """Let the resolver look at the JVM's counters now (they are looked at every GC_CHECK_INTERVAL)."""
    time.sleep(2 * GC_CHECK_INTERVAL)
    resolver.settled_at()


@pytest.mark.parametrize("version", [17, 25])
def test_a_gc_that_unloads_no_class_keeps_the_caches(version: int) -> None:
    # GIVEN a JVM whose resident methods are resolved (names, holders, symbols cached)
    jp = start_churn(version)
    try:
        jvm = HotSpotJvm.open(jp.pid)
        resolver = MethodResolver(jvm.reader, jvm.layout)
        assert resolver.watch.exact, "the unloaded-classes counter should be published"
        pointers = method_pointers(jvm, "Resident")
        before = resolve_all(resolver, pointers)
        look(resolver)
        gcs = gc_count(jvm)
        # WHEN a full GC runs that unloads nothing (no loader was dropped)
        command(jp, "unload", "unloaded ")
        assert gc_count(jvm) > gcs
        look(resolver)
        reads = jvm.memory.reads
        after = resolve_all(resolver, pointers)
        # THEN nothing was dropped: the same answers, one read per Method* (its ConstMethod*) and no names
        assert after == before
        assert resolver.generation == 0, resolver.watch.drops
        assert resolver.watch.gcs_kept >= 1
        assert jvm.memory.reads - reads <= len(pointers) + 1
        # AND an interpreted frame's validation holds for samples taken before that look
        assert resolver.settled_at() >= time.clock_gettime_ns(time.CLOCK_MONOTONIC) - 10**9
    finally:
        jp.stop()


@pytest.mark.parametrize("version", [11, 17, 21, 25])
def test_unloading_drops_the_caches_and_a_class_in_reused_metaspace_is_named_as_itself(version: int) -> None:
    # GIVEN a resolver that named the methods of class GoneA
    jp = start_churn(version)
    try:
        jvm = HotSpotJvm.open(jp.pid)
        resolver = MethodResolver(jvm.reader, jvm.layout)
        assert resolver.watch.exact
        command(jp, "compile GoneA", "compiled GoneA ")
        first = method_pointers(jvm, "GoneA")
        assert {m.holder for m in resolve_all(resolver, first).values()} == {f"{CHURN}GoneA"}
        look(resolver)
        # WHEN GoneA is unloaded
        done = command(jp, "unload", "unloaded ")
        assert done.endswith("collected=true"), done
        look(resolver)
        # THEN the caches were dropped, and no sample is told they still hold
        assert resolver.generation == 1, resolver.watch.drops
        assert resolver.watch.drops.get("classes unloaded") == 1
        # AND once the next class of the same shape is compiled (in GoneA's metaspace), its methods are
        # named as its own
        command(jp, "compile GoneB", "compiled GoneB ")
        second = method_pointers(jvm, "GoneB")
        named = resolve_all(resolver, second)
        assert {m.holder for m in named.values()} == {f"{CHURN}GoneB"}, (len(first & second), named)
        # AND later the caches are dropped once more (after the purge that may follow the unloading)
        time.sleep(1.1)
        look(resolver)
        assert resolver.watch.drops.get("settled") == 1
    finally:
        jp.stop()


@pytest.mark.parametrize("version", [17, 25])
def test_without_perf_data_every_gc_drops_the_caches(version: int) -> None:
    # GIVEN a JVM without perf data (-XX:-UsePerfData: no count of unloaded classes), its resident
    # methods resolved
    jp = start_churn(version, "-XX:-UsePerfData")
    try:
        jvm = HotSpotJvm.open(jp.pid)
        resolver = MethodResolver(jvm.reader, jvm.layout)
        assert not resolver.watch.exact
        resolve_all(resolver, method_pointers(jvm, "Resident"))
        look(resolver)
        # WHEN a GC runs that unloads nothing
        command(jp, "unload", "unloaded ")
        look(resolver)
        # THEN the caches were dropped anyway: nothing says whether that GC unloaded classes
        assert resolver.generation >= 1
        assert resolver.watch.drops.get("GC", 0) >= 1
        assert resolver.settled_at() == 0
    finally:
        jp.stop()


@pytest.mark.parametrize("version", [17, 25])
def test_a_class_redefinition_drops_the_caches(version: int) -> None:
    # GIVEN a JVM with JDWP, its resident methods resolved, and a GC that kept the caches
    jp = start_churn(version, JDWP)
    try:
        port = int(jp.lines[0].rsplit(":", 1)[1]) if jp.lines and "Listening" in jp.lines[0] else 0
        assert port, jp.lines[:3]
        jvm = HotSpotJvm.open(jp.pid)
        resolver = MethodResolver(jvm.reader, jvm.layout)
        resolve_all(resolver, method_pointers(jvm, "Resident"))
        look(resolver)
        command(jp, "unload", "unloaded ")
        look(resolver)
        assert resolver.generation == 0, resolver.watch.drops
        # WHEN a debugger redefines a class (with its own bytes: a redefinition all the same)
        main = (CLASSES / "pyproftest" / "CodeCacheChurn.class").read_bytes()
        jdwp_redefine(port, "Lpyproftest/CodeCacheChurn;", main)
        look(resolver)
        # THEN the caches were dropped
        assert resolver.watch.drops.get("classes redefined") == 1, resolver.watch.drops
        assert resolver.generation == 1
    finally:
        jp.stop()


def jdwp_redefine(port: int, signature: str, classfile: bytes) -> None:
    """VirtualMachine.RedefineClasses of one loaded class over JDWP (the protocol a debugger speaks)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"JDWP-Handshake")
        assert _recv(sock, 14) == b"JDWP-Handshake"
        sizes = struct.unpack(">5i", _jdwp(sock, 1, 7, b""))          # IDSizes
        ref_size = sizes[3]
        sig = signature.encode()
        found = _jdwp(sock, 1, 2, struct.pack(">i", len(sig)) + sig)    # ClassesBySignature
        assert struct.unpack_from(">i", found)[0] == 1, found
        ref = found[5:5 + ref_size]
        _jdwp(sock, 1, 18, struct.pack(">i", 1) + ref + struct.pack(">i", len(classfile)) + classfile)


def _jdwp(sock: socket.socket, command_set: int, command: int, data: bytes) -> bytes:
    sock.sendall(struct.pack(">iiBBB", 11 + len(data), 1, 0, command_set, command) + data)
    length, _id, _flags, error = struct.unpack(">iiBH", _recv(sock, 11))
    assert error == 0, f"JDWP error {error} for command {command_set}/{command}"
    return _recv(sock, length - 11)


def _recv(sock: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = sock.recv(size - len(out))
        assert chunk, "JDWP connection closed"
        out += chunk
    return out
