"""The HotSpot differences VMStructs does not describe: tables keyed by JDK version or by libjvm symbol.

Only `pyprof.hotspot.layout.Layout` reads these tables; everything else asks the Layout. Where the
running JVM can tell (a field, a constant, a symbol), the Layout asks it first and these tables only
name the candidates; the version number decides only the nmethod state names and the compressed-stream
flavour, which nothing in the JVM publishes. See docs/hotspot-versions.md.
"""

from __future__ import annotations

import enum
from typing import Optional


class BlobKind(str, enum.Enum):
    NMETHOD = "nmethod"
    INTERPRETER = "interpreter"
    ADAPTER = "adapter"
    RUNTIME_STUB = "runtime_stub"
    VTABLE = "vtable"
    BUFFER = "buffer"
    STUBS = "stub_routines"
    DEOPTIMIZATION = "deoptimization"
    SAFEPOINT = "safepoint"
    EXCEPTION = "exception"
    UNCOMMON_TRAP = "uncommon_trap"
    UPCALL = "upcall"
    METHOD_HANDLES = "method_handles"
    OTHER = "other"


# JDK <= 22: CodeBlob is polymorphic; its C++ class (found by the blob's vtable pointer, `_ZTV<class>`)
# gives the kind. OptimizedEntryBlob is 17's name of 21's UpcallStub.
BLOB_CLASS_KINDS = {
    "nmethod": BlobKind.NMETHOD,
    "BufferBlob": BlobKind.BUFFER,
    "AdapterBlob": BlobKind.ADAPTER,
    "VtableBlob": BlobKind.VTABLE,
    "MethodHandlesAdapterBlob": BlobKind.METHOD_HANDLES,
    "RuntimeStub": BlobKind.RUNTIME_STUB,
    "DeoptimizationBlob": BlobKind.DEOPTIMIZATION,
    "SafepointBlob": BlobKind.SAFEPOINT,
    "ExceptionBlob": BlobKind.EXCEPTION,
    "UncommonTrapBlob": BlobKind.UNCOMMON_TRAP,
    "OptimizedEntryBlob": BlobKind.UPCALL,
    "UpcallStub": BlobKind.UPCALL,
}
# JDK 23+: CodeBlob::_kind, whose values VMIntConstants publishes as CodeBlobKind::<name>.
BLOB_KIND_CONSTANTS = {
    "Nmethod": BlobKind.NMETHOD, "Buffer": BlobKind.BUFFER, "Adapter": BlobKind.ADAPTER,
    "Vtable": BlobKind.VTABLE, "MHAdapter": BlobKind.METHOD_HANDLES, "RuntimeStub": BlobKind.RUNTIME_STUB,
    "Deoptimization": BlobKind.DEOPTIMIZATION, "Safepoint": BlobKind.SAFEPOINT,
    "Exception": BlobKind.EXCEPTION, "UncommonTrap": BlobKind.UNCOMMON_TRAP, "Upcall": BlobKind.UPCALL,
}
# Every JDK: CodeBlob::_name of the nmethods (compiled Java methods and native wrappers).
NMETHOD_NAMES = ("nmethod", "native nmethod")


def nmethod_states(major: int) -> dict[int, str]:
    """nmethod::_state values: not published in VMStructs (code/{compiledMethod,nmethod}.hpp).

    11: zombie 3, unloaded 4; 12-19 swapped them (checked on 17; 12-16 untested); 20 removed the sweeper,
    and with it zombie and unloaded; 23 removed not_used (not entrant became 1). Unknown (0): the newest.
    """
    if 0 < major <= 11:
        return {0: "in_use", 1: "not_used", 2: "not_entrant", 3: "zombie", 4: "unloaded"}
    if 0 < major < 20:
        return {0: "in_use", 1: "not_used", 2: "not_entrant", 3: "unloaded", 4: "zombie"}
    if 0 < major < 23:
        return {0: "in_use", 1: "not_used", 2: "not_entrant"}
    return {0: "in_use", 1: "not_entrant"}


DEAD_STATE_NAMES = ("zombie", "unloaded")   # no longer code: `jcmd Compiler.codelist` skips them


def unsigned5_excludes_zero(major: int) -> Optional[bool]:
    """The compressed-stream flavour (debug info, line tables): JDK 20 moved to UNSIGNED5 with X = 1
    (no zero byte); before, L = 192 with zero allowed. None: unknown version, so unknown flavour."""
    if major <= 0:
        return None
    return major >= 20


# The CollectedHeap subclass of each GC, named as the -XX:+Use<GC>GC flag names the GC (register_nmethod
# lives there). Serial's heap was GenCollectedHeap until JDK 23 renamed it SerialHeap; CMS (JDK <= 13)
# has CMSHeap, whose register_nmethod is GenCollectedHeap's.
GC_HEAP_CLASSES = {
    "G1": ("G1CollectedHeap",),
    "Parallel": ("ParallelScavengeHeap",),
    "Serial": ("SerialHeap", "GenCollectedHeap"),
    "ConcMarkSweep": ("CMSHeap", "GenCollectedHeap"),
    "Shenandoah": ("ShenandoahHeap",),
    "Z": ("ZCollectedHeap",),
    "Epsilon": ("EpsilonHeap",),
}
GC_FLAGS = tuple(f"Use{gc}GC" for gc in GC_HEAP_CLASSES)


def _mangle(cls: str, method: str, args: str) -> str:
    return f"_ZN{len(cls)}{cls}{len(method)}{method}E{args}"


def nmethod_probe_candidates(gc_name: str) -> dict[str, list[str]]:
    """event -> libjvm symbols (Itanium-mangled) that may carry it, for the GC `gc_name` (all GCs when
    unknown). The Layout keeps those present in the libjvm, and their GCC `.part.0` clones."""
    classes: list[str] = []
    for names in (GC_HEAP_CLASSES[gc_name],) if gc_name in GC_HEAP_CLASSES else GC_HEAP_CLASSES.values():
        classes.extend(c for c in names if c not in classes)
    return {
        "register": [_mangle(c, "register_nmethod", "P7nmethod") for c in classes],
        "unregister": [_mangle(c, "unregister_nmethod", "P7nmethod") for c in classes],
        "free": ["_ZN9CodeCache4freeEP8CodeBlob"],                                # 11 .. 25
        "not_entrant": ["_ZN7nmethod16make_not_entrantEv",                       # 11 .. 21
                        "_ZN7nmethod16make_not_entrantENS_12ChangeReasonE"],     # 25
        "not_entrant_or_zombie": ["_ZN7nmethod26make_not_entrant_or_zombieEi"],  # 11 .. 19
    }


# Field offsets of Java classes HotSpot keeps in static ints of its java_lang_* classes (javaClasses.cpp):
# local .symtab symbols, renamed with a leading underscore after JDK 11.
JAVA_FIELD_OFFSET_SYMBOLS = {
    "thread_name": ("_ZN16java_lang_Thread12_name_offsetE",),
    "thread_tid": ("_ZN16java_lang_Thread11_tid_offsetE",),       # Thread.tid (getId()), a long
    "string_value": ("_ZN16java_lang_String13_value_offsetE",      # 17+
                     "_ZN16java_lang_String12value_offsetE"),      # 11
    "string_coder": ("_ZN16java_lang_String13_coder_offsetE",
                     "_ZN16java_lang_String12coder_offsetE"),
}


# `-e alloc` and `-e lock` (pyprof/sampling/alloc.py, lock.py): the libjvm functions their uprobes go on,
# program function -> candidates, the first one present wins. Local .symtab symbols, Itanium-mangled, so
# their parameter types are part of the name (Thread* on 11, JavaThread* and HeapWordImpl** on 17+).
EVENT_PROBE_SYMBOLS: dict[str, dict[str, tuple[str, ...]]] = {
    "alloc": {
        "on_alloc_in_new_tlab": (
            "_ZN11AllocTracer27send_allocation_in_new_tlabEP5KlassPP12HeapWordImplmmP10JavaThread",  # 17-25
            "_ZN11AllocTracer27send_allocation_in_new_tlabEP5KlassP8HeapWordmmP6Thread"),            # 11
        "on_alloc_outside_tlab": (
            "_ZN11AllocTracer28send_allocation_outside_tlabEP5KlassPP12HeapWordImplmP10JavaThread",  # 17-25
            "_ZN11AllocTracer28send_allocation_outside_tlabEP5KlassP8HeapWordmP6Thread"),            # 11
    },
    "lock": {
        # The contended part of a monitor entry. 24+: enter() spins, then calls enter_with_contention_mark
        # (which LightweightSynchronizer calls directly too); 11-21: enter() itself (its fast CAS and
        # recursion checks first: the threshold of lock.h drops those uncontended entries).
        "on_monitor_enter": (
            "_ZN13ObjectMonitor26enter_with_contention_markEP10JavaThreadR27ObjectMonitorContentionMark",
            "_ZN13ObjectMonitor5enterEP10JavaThread",   # 17-21
            "_ZN13ObjectMonitor5enterEP6Thread"),       # 11
        "on_park": ("_ZN6Parker4parkEbl",),             # Parker::park(bool isAbsolute, jlong time): 11-25
    },
}
