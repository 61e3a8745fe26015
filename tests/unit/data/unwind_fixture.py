"""Recorded stacks for the unwinder's unit tests: record once (root, BPF, a real JVM), replay anywhere.

A recording holds everything pyprof.sampling.unwind.Unwinder consumed while it unwound real samples of a
tests/java workload:
- the JVM's VMStructs (so the replay builds the very Layout the JVM published), its version;
- every byte the unwinder read from the target (stack words beyond the copy, Method/ConstMethod/constant
  pool/Symbol, nmethod headers, PcDescs, scopes, code bytes of the top frame) - merged regions;
- the code blobs its PC lookups returned (and which PCs found none), the native and kernel symbols it
  asked for, the DWARF CFI rules it asked for (packed, see pyprof.symbols.cfi.Rule), and which threads
  were Java threads;
- the raw eBPF samples (registers, the stack copy, the JavaThread anchor), each with the frames and the
  UnwindStats counters (PINNED_COUNTERS) the live unwinder gave it. Each sample is also unwound live
  without its anchor and without its kernel frames (variants(): what the tests replay), so the bytes
  those walks read are in the recording too.
Samples are picked per feature (features_of: frame kinds, the top frame's kind, library and workload
method), up to SAMPLES_PER_FEATURE each, rarest first. Format 2 adds the CFI rules; format-1 recordings
(the *-v1 files, made with the frame-pointer-only unwinder) still load, without rules.

Replay (load()) serves those bytes through tests.unit.test_hostile_memory.ReplayMemory - the same replay
the hostile-memory tests use - so no root, BPF or JVM is needed.

Record (as root, from the repository root; rewrites tests/unit/data/unwind-<workload>-jdk<N>.json.gz):
    .venv/bin/python -m tests.unit.data.unwind_fixture Phases 21
    .venv/bin/python -m tests.unit.data.unwind_fixture JitZoo 21
    .venv/bin/python -m tests.unit.data.unwind_fixture Phases 17   (and 25)
    .venv/bin/python -m tests.unit.data.unwind_fixture Recursion 25   (and 11, 21)
The Java samples whose stacks did not reach their root, for finding and testing what breaks a walk
(rewrites unwind-<workload>-jdk<N>-incomplete.json.gz; the workload's arguments follow its JDK):
    .venv/bin/python -m tests.unit.data.unwind_fixture --incomplete HttpServerLoad 17 4 4 900
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import gzip
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pyprof.errors import MemoryReadError
from pyprof.hotspot.codecache import BlobKind, CodeBlobInfo
from pyprof.hotspot.jvm import HotSpotJvm
from pyprof.hotspot.layout import JvmVersion, Layout
from pyprof.hotspot.method import MethodInfo, MethodResolver
from pyprof.hotspot.vmstructs import FieldEntry, TypeEntry, VMStructs
from pyprof.model import FrameKind, LogicalFrame, Mapping, PhysicalFrame
from pyprof.procfs.memory import Reader
from pyprof.sampling.sampler import RawSample
from pyprof.sampling.unwind import Unwinder, UnwindStats, epilogue_slot, is_stack_pop
from pyprof.symbols.cfi import CFA_RSP, Rule
from pyprof.symbols.kernel import KernelSymbols
from pyprof.symbols.native import NativeSymbol

DATA = Path(__file__).resolve().parent
FORMAT = 2      # 2: CFI rules recorded
SAMPLES_PER_FEATURE = 3
MAX_SAMPLES = 60
WORKLOAD_FLAGS = {"JitZoo": ("-XX:+UnlockDiagnosticVMOptions", "-XX:+DebugNonSafepoints")}
WORKLOAD_ARGS = {"Recursion": ("2",)}


def fixture_path(workload: str, jdk: int, kind: str = "") -> Path:
    """kind "incomplete": the recording of only the Java samples whose stacks did not reach their root."""
    return DATA / f"unwind-{workload.lower()}-jdk{jdk}{'-' + kind if kind else ''}.json.gz"


# ---- what a replay is made of -------------------------------------------------------------------------
@dataclass
class RecordedSample:
    raw: RawSample
    frames: tuple[PhysicalFrame, ...]     # what the live unwinder gave
    stats: dict[str, Any]                 # its UnwindStats for this sample alone (see stats_of)
    features: tuple[str, ...]


@dataclass
class Recording:
    workload: str
    jdk: int
    release: str
    vm: VMStructs
    regions: list[tuple[int, bytes]]
    blobs: list[CodeBlobInfo]
    lookups: dict[int, Optional[int]]                 # pc -> index into blobs (None: no blob)
    natives: dict[int, Optional[NativeSymbol]]
    rules: dict[int, tuple[bool, Optional[Rule]]]     # pc -> NativeSymbolizer.unwind_rule's answer
    kernel: dict[int, str]
    java_tids: frozenset[int]
    samples: list[RecordedSample]

    def jvm(self, memory) -> HotSpotJvm:
        """A HotSpotJvm over replayed memory: the recorded layout; nothing else of the process exists."""
        layout = Layout(self.vm, JvmVersion(self.jdk, self.release))
        return HotSpotJvm(pid=0, reader=Reader(memory), memory=None, libjvm_path="",  # type: ignore[arg-type]
                          libjvm_open_path="", libjvm_base=0, libjvm_entries=[], symbols=None,  # type: ignore[arg-type]
                          vm=self.vm, layout=layout)

    def lookup_blob(self, pc: int, _time_ns: int = 0) -> Optional[CodeBlobInfo]:
        """The recorded answer of the live code-cache map for `pc`."""
        if pc in self.lookups:
            index = self.lookups[pc]
            return None if index is None else self.blobs[index]
        by_address = sorted(self.blobs, key=lambda b: b.address)
        i = bisect.bisect_right([b.address for b in by_address], pc) - 1
        return by_address[i] if i >= 0 and by_address[i].contains(pc) else None

    def kernel_symbols(self) -> KernelSymbols:
        starts = sorted(self.kernel)
        return KernelSymbols(starts, [self.kernel[s] for s in starts])

    def by_feature(self, feature: str) -> list[RecordedSample]:
        return [s for s in self.samples if feature in s.features]


class RecordedThreads:
    """JavaThreads as the unwinder asks it: is this tid a Java thread (as of the last refresh)?"""

    def __init__(self, tids: frozenset[int]) -> None:
        self.tids = tids

    def is_java_thread(self, tid: int) -> bool:
        return tid in self.tids


class RecordedNatives:
    """NativeSymbolizer.symbolize() answers as recorded; a PC never asked during recording is None."""

    def __init__(self, answers: dict[int, Optional[NativeSymbol]],
                 rules: dict[int, tuple[bool, Optional[Rule]]]) -> None:
        self.answers = answers
        self.rules = rules

    def symbolize(self, pc: int) -> Optional[NativeSymbol]:
        return self.answers.get(pc)

    def unwind_rule(self, pc: int) -> tuple[bool, Optional[Rule]]:
        """The recorded CFI answer; a PC never asked during recording is unmapped."""
        return self.rules.get(pc, (False, None))


# The counters these recordings pin: the walk's outcome. The unwinder's newer counters of how each native
# frame was stepped (cfi_steps, fp_steps, stub_steps, ...) are tested where that stepping is
# (tests/unit/test_cfi.py, tests/integration/test_server_stacks.py), not pinned per recorded sample.
# (and unknown_frames, by reason)
PINNED_COUNTERS = ("samples", "frames", "reached_root", "java_samples", "java_reached_root", "live_reads",
                   "anchor_used", "deoptimized_frames")



def stats_of(stats: UnwindStats) -> dict[str, Any]:
    d: dict[str, Any] = {name: getattr(stats, name) for name in PINNED_COUNTERS}
    d["unknown_frames"] = dict(sorted(stats.unknown_frames.items()))
    return d


def code_features(raw: RawSample, rec: _Recorder) -> tuple[str, ...]:
    """Where the sample's top frame stands in its code, for the cases the unwinder decodes from the code
    bytes: "code:prologue" (an nmethod before frame_complete_offset), "code:entry-barrier" (the same,
    after `sub rsp`), "code:epilogue-<pop-rbp|poll|ret>" (where in its epilogue), "code:spill-push"
    (C2's `push [rsp]; pop [rsp+d]`), "code:subtype-check-stub" (C1's slow subtype check stub),
    "code:native-popped-rbp" (native code whose CFI puts the saved rbp below sp: after `leave`)."""
    out = []
    blob = rec.lookup_blob(raw.ip) if not raw.kernel_ips else None
    try:
        if blob is not None and blob.is_nmethod:
            code = rec.jvm.reader.bytes(raw.ip, 16)
            if blob.verified_entry < raw.ip < blob.code_begin + blob.frame_complete_offset:
                # JDK 21+'s nmethod entry barrier (`cmp dword [r15+d], imm; jne`): after `sub rsp`
                barrier = code[:3] == b"\x41\x81\x7f" or code[:2] == b"\x0f\x85"
                out.append("code:entry-barrier" if barrier else "code:prologue")
            elif epilogue_slot(code) is not None:
                at = {0x5D: "pop-rbp", 0xC3: "ret"}.get(code[0], "poll")
                out.append(f"code:epilogue-{at}")
            elif is_stack_pop(code):
                out.append("code:spill-push")
        elif blob is not None and "slow_subtype_check" in blob.name:
            out.append("code:subtype-check-stub")
        elif blob is None and not raw.kernel_ips:
            _mapped, rule = rec.unwind_rule(raw.ip)
            cfa = raw.sp + rule.cfa_offset if rule is not None and rule.kind == CFA_RSP else 0
            if rule is not None and rule.fp_offset and cfa and cfa + rule.fp_offset < raw.sp:
                out.append("code:native-popped-rbp")
    except MemoryReadError:
        pass
    return tuple(out)


def features_of(frames: tuple[PhysicalFrame, ...], stats: UnwindStats) -> tuple[str, ...]:
    """What a sample exercises, for picking samples and for tests to find them."""
    kinds = [f.frames[0].kind for f in frames]
    user = [k for k in kinds if k is not FrameKind.KERNEL]
    out = {k.value for f in frames for k in (lf.kind for lf in f.frames)}
    if user:
        out.add(f"top:{user[0].value}")
        top = next(f for f in frames if f.frames[0].kind is not FrameKind.KERNEL)
        if user[0] is FrameKind.NATIVE and top.mapping is not None:
            out.add(f"top-lib:{Path(top.mapping.filename).name}")    # e.g. zlib's deflate thread in libzip.so
        if top.frames[0].name.startswith("pyproftest."):
            # the workload's own code at the top, per method and kind: what the tests look for by name
            out.add(f"top-java:{top.frames[0].kind.value}:{top.frames[0].name}")
    if stats.anchor_used:
        out.add("anchor")
    if stats.deoptimized_frames:
        out.add("deoptimized")
    if stats.live_reads:
        out.add("live_reads")
    if stats.reached_root:
        out.add("root")
    if stats.java_samples and not stats.java_reached_root:
        out.add("incomplete")
    if any(f.frames[0].osr for f in frames):
        out.add("osr")
    if any(len(f.frames) > 1 for f in frames):
        out.add("inlining")
    return tuple(sorted(out))


# ---- encoding -----------------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _method_json(m: Optional[MethodInfo]) -> Optional[dict]:
    return dataclasses.asdict(m) if m is not None else None


def _blob_json(b: CodeBlobInfo) -> dict:
    d = {f.name: getattr(b, f.name) for f in dataclasses.fields(CodeBlobInfo)}
    d["kind"] = b.kind.value
    d["method"] = _method_json(b.method)
    return d


def _blob_from(d: dict) -> CodeBlobInfo:
    d = dict(d)
    d["kind"] = BlobKind(d["kind"])
    d["method"] = MethodInfo(**d["method"]) if d["method"] else None
    return CodeBlobInfo(**d)


def _frame_json(f: PhysicalFrame) -> list:
    logicals = [[lf.name, lf.kind.value, lf.system_name, lf.filename, lf.line, lf.osr] for lf in f.frames]
    return [f.address, logicals,
            dataclasses.asdict(f.mapping) if f.mapping else None]


def _frame_from(d: list) -> PhysicalFrame:
    address, logicals, mapping = d
    return PhysicalFrame(address, tuple(LogicalFrame(n, FrameKind(k), s, fn, line, osr)
                                        for n, k, s, fn, line, osr in logicals),
                         Mapping(**mapping) if mapping else None)


def _native_json(pc: int, n: Optional[NativeSymbol]) -> list:
    if n is None:
        return [pc, None]
    return [pc, [n.symbol, n.system_name, n.library, dataclasses.asdict(n.mapping)]]


def _raw_json(s: RawSample) -> dict:
    d = dataclasses.asdict(s)
    d["stack"] = _b64(s.stack)
    d["kernel_ips"] = list(s.kernel_ips)
    return d


def _raw_from(d: dict) -> RawSample:
    d = dict(d)
    d["stack"] = base64.b64decode(d["stack"])
    d["kernel_ips"] = tuple(d["kernel_ips"])
    return RawSample(**d)


def save(rec: Recording, path: Path) -> None:
    doc = {
        "format": FORMAT, "workload": rec.workload, "jdk": rec.jdk, "release": rec.release,
        "vmstructs": {
            "fields": [dataclasses.asdict(f) for f in rec.vm.fields.values()],
            "types": [dataclasses.asdict(t) for t in rec.vm.types.values()],
            "int_constants": rec.vm.int_constants, "long_constants": rec.vm.long_constants},
        "regions": [[a, _b64(d)] for a, d in rec.regions],
        "blobs": [_blob_json(b) for b in rec.blobs],
        "lookups": [[pc, i] for pc, i in sorted(rec.lookups.items())],
        "natives": [_native_json(pc, n) for pc, n in sorted(rec.natives.items())],
        "rules": [[pc, mapped, None if rule is None else rule.pack()]
                  for pc, (mapped, rule) in sorted(rec.rules.items())],
        "kernel": sorted(rec.kernel.items()),
        "java_tids": sorted(rec.java_tids),
        "samples": [{"raw": _raw_json(s.raw), "frames": [_frame_json(f) for f in s.frames], "stats": s.stats,
                     "features": list(s.features)} for s in rec.samples],
    }
    with gzip.open(path, "wt", compresslevel=9) as f:
        json.dump(doc, f, separators=(",", ":"))


def load(path: Path) -> Recording:
    with gzip.open(path, "rt") as f:
        doc = json.load(f)
    if doc["format"] not in (1, FORMAT):     # 1: no CFI rules (the replay steps native code by rbp)
        raise ValueError(f"{path}: recording format {doc['format']}, expected {FORMAT}")
    v = doc["vmstructs"]
    fields = [FieldEntry(**f) for f in v["fields"]]
    vm = VMStructs({(f.type_name, f.field_name): f for f in fields},
                   {t["name"]: TypeEntry(**t) for t in v["types"]}, v["int_constants"], v["long_constants"])
    natives = {pc: (None if n is None else NativeSymbol(n[0], n[1], n[2], Mapping(**n[3])))
               for pc, n in doc["natives"]}
    rules = {pc: (mapped, None if packed is None else Rule.unpack(packed))
             for pc, mapped, packed in doc.get("rules", ())}
    samples = [RecordedSample(_raw_from(s["raw"]), tuple(_frame_from(f) for f in s["frames"]), s["stats"],
                              tuple(s["features"])) for s in doc["samples"]]
    return Recording(doc["workload"], doc["jdk"], doc["release"], vm,
                     [(a, base64.b64decode(d)) for a, d in doc["regions"]],
                     [_blob_from(b) for b in doc["blobs"]], {pc: i for pc, i in doc["lookups"]}, natives,
                     rules,
                     {ip: name for ip, name in doc["kernel"]}, frozenset(doc["java_tids"]), samples)


def replay_unwinder(rec: Recording, memory=None) -> Unwinder:
    """A fresh Unwinder (empty caches, zero counters) over the recording."""
    from tests.unit.test_hostile_memory import ReplayMemory

    mem = memory if memory is not None else ReplayMemory(rec.regions)
    jvm = rec.jvm(mem)
    resolver = MethodResolver(jvm.reader, jvm.layout)
    return Unwinder(jvm, rec.lookup_blob, resolver, RecordedThreads(rec.java_tids),  # type: ignore[arg-type]
                    RecordedNatives(rec.natives, rec.rules), rec.kernel_symbols())


# ---- recording (root, BPF, a live JVM) ----------------------------------------------------------------
class _Recorder:
    """Wraps what the live unwinder consumes and keeps every answer."""

    def __init__(self, jvm: HotSpotJvm, natives, kernel) -> None:
        from pyprof.hotspot.codecache import CodeCache
        from tests.unit.test_hostile_memory import RecordingMemory

        self.memory = RecordingMemory(jvm.memory)
        self.jvm = dataclasses.replace(jvm, reader=Reader(self.memory))
        self.cache = CodeCache(jvm)            # PC lookups read the segment map directly: not recorded
        self.blobs: dict[tuple[int, int], int] = {}
        self.blob_list: list[CodeBlobInfo] = []
        self.lookups: dict[int, Optional[int]] = {}
        self.native_answers: dict[int, Optional[NativeSymbol]] = {}
        self.rule_answers: dict[int, tuple[bool, Optional[Rule]]] = {}
        self.kernel_answers: dict[int, str] = {}
        self._natives, self._kernel = natives, kernel

    def lookup_blob(self, pc: int, _time_ns: int = 0) -> Optional[CodeBlobInfo]:
        if pc in self.lookups:
            i = self.lookups[pc]
            return None if i is None else self.blob_list[i]
        try:
            blob = self.cache.blob_at(pc)
        except MemoryReadError:
            blob = None
        if blob is None:
            self.lookups[pc] = None
            return None
        key = (blob.address, blob.compile_id)
        if key not in self.blobs:
            self.blobs[key] = len(self.blob_list)
            self.blob_list.append(blob)
        self.lookups[pc] = self.blobs[key]
        return blob

    def symbolize(self, pc: int) -> Optional[NativeSymbol]:
        if pc not in self.native_answers:
            self.native_answers[pc] = self._natives.symbolize(pc)
        return self.native_answers[pc]

    def unwind_rule(self, pc: int) -> tuple[bool, Optional[Rule]]:
        if pc not in self.rule_answers:
            self.rule_answers[pc] = self._natives.unwind_rule(pc)
        return self.rule_answers[pc]

    def lookup(self, ip: int) -> Optional[str]:
        name = self._kernel.lookup(ip)
        if name is not None:
            self.kernel_answers[ip] = name
        return name


def variants(raw: RawSample) -> list[RawSample]:
    """What the tests also replay of a sample: without its anchor, without its kernel frames. The recorder
    unwinds these too (on a second unwinder, its counters unused) so that the bytes they read are kept."""
    out = []
    if raw.anchor_sp:
        out.append(dataclasses.replace(raw, anchor_sp=0, anchor_pc=0, anchor_fp=0))
    if raw.kernel_ips:
        out.append(dataclasses.replace(raw, kernel_ips=()))
    return out


def _pick(samples: list[RecordedSample]) -> list[RecordedSample]:
    """Up to SAMPLES_PER_FEATURE samples of every feature seen, rarest features first."""
    counts = Counter(f for s in samples for f in s.features)
    chosen: list[RecordedSample] = []
    for feature, _n in sorted(counts.items(), key=lambda kv: kv[1]):
        have = sum(feature in s.features for s in chosen)
        for s in samples:
            if have >= SAMPLES_PER_FEATURE or len(chosen) >= MAX_SAMPLES:
                break
            if feature in s.features and s not in chosen:
                chosen.append(s)
                have += 1
    return chosen


def record(workload: str, jdk: int, seconds: float = 60.0, rate_hz: int = 499, enough: int = 3000,
           args: tuple[str, ...] = (), only_incomplete: bool = False) -> Recording:
    """Samples of the workload (started with `args`) picked per feature, or with `only_incomplete` every
    Java sample whose stack did not reach its root (up to MAX_SAMPLES), for as long as `seconds`."""
    from pyprof.hotspot.threads import JavaThreads
    from pyprof.sampling.sampler import Sampler
    from pyprof.symbols.native import NativeSymbolizer
    from tests.conftest import start_java

    java = start_java(jdk, workload, *(args or WORKLOAD_ARGS.get(workload, ())),
                      jvm_flags=WORKLOAD_FLAGS.get(workload, ()))
    sampler = None
    try:
        time.sleep(1.0)   # past "ready": the steady state
        jvm = HotSpotJvm.open(java.pid)
        threads = JavaThreads(jvm)
        threads.refresh()
        rec = _Recorder(jvm, NativeSymbolizer(java.pid), KernelSymbols.load())
        unwinder = Unwinder(rec.jvm, rec.lookup_blob, MethodResolver(rec.jvm.reader, rec.jvm.layout), threads,
                            rec, rec)
        other = Unwinder(rec.jvm, rec.lookup_blob, MethodResolver(rec.jvm.reader, rec.jvm.layout), threads,
                         rec, rec)
        sampler = Sampler(java.pid, rate_hz=rate_hz)
        sampler.start()
        sampler.set_java_threads(threads.anchor_addresses())
        taken: list[RecordedSample] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(taken) < enough and not (
                only_incomplete and sum("incomplete" in s.features for s in taken) >= MAX_SAMPLES):
            for raw in sampler.poll(50):
                stats = unwinder.stats
                before = dataclasses.replace(stats, unknown_frames=Counter(stats.unknown_frames))
                frames = unwinder.unwind(raw)
                for variant in variants(raw):
                    other.unwind(variant)
                delta = _delta(unwinder.stats, before)
                features = tuple(sorted(features_of(frames, delta) + code_features(raw, rec)))
                taken.append(RecordedSample(raw, frames, stats_of(delta), features))
        chosen = [s for s in taken if "incomplete" in s.features][:MAX_SAMPLES] if only_incomplete \
            else _pick(taken)
        print(f"{len(taken)} samples, kept {len(chosen)}: "
              f"{dict(Counter(f for s in chosen for f in s.features))}", file=sys.stderr)
        java_tids = frozenset(s.raw.tid for s in chosen if threads.is_java_thread(s.raw.tid))
        return Recording(workload, jdk, jvm.release, jvm.vm, rec.memory.regions(), rec.blob_list,
                         rec.lookups, rec.native_answers, rec.rule_answers, rec.kernel_answers,
                         java_tids, chosen)
    finally:
        if sampler is not None:
            sampler.close()
        java.stop()


def _delta(after: UnwindStats, before: UnwindStats) -> UnwindStats:
    out = UnwindStats()
    for name in PINNED_COUNTERS:
        setattr(out, name, getattr(after, name) - getattr(before, name))
    out.unknown_frames = after.unknown_frames - before.unknown_frames
    return out


def verify(rec: Recording) -> list[RecordedSample]:
    """Samples whose replay (a fresh unwinder each) differs from what the live unwinder gave."""
    bad = []
    for s in rec.samples:
        u = replay_unwinder(rec)
        if u.unwind(s.raw) != s.frames or stats_of(u.stats) != s.stats:
            bad.append(s)
    return bad


def _needed_regions(rec: Recording) -> list[tuple[int, bytes]]:
    """Only the bytes the kept samples need: their replay, each on a fresh unwinder, re-recorded."""
    from tests.unit.test_hostile_memory import RecordingMemory, ReplayMemory

    needed = RecordingMemory(ReplayMemory(rec.regions))
    for s in rec.samples:
        for raw in (s.raw, *variants(s.raw)):
            replay_unwinder(rec, needed).unwind(raw)
    return needed.regions()


def main(argv: list[str]) -> int:
    only_incomplete = "--incomplete" in argv
    argv = [a for a in argv if a != "--incomplete"]
    workload, jdk, args = argv[0], int(argv[1]), tuple(argv[2:])
    rec = record(workload, jdk, args=args, only_incomplete=only_incomplete,
                 seconds=120 if only_incomplete else 60, enough=1 << 30 if only_incomplete else 3000)
    bad = verify(rec)
    if bad:
        print(f"{len(bad)} samples replay differently; dropped", file=sys.stderr)
        rec.samples = [s for s in rec.samples if s not in bad]
    rec.regions = _needed_regions(rec)
    path = fixture_path(workload, jdk, "incomplete" if only_incomplete else "")
    save(rec, path)
    again = load(path)
    assert not verify(again), "a saved recording must replay exactly"
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(again.samples)} samples, "
          f"{sum(len(d) for _, d in again.regions)} bytes of memory)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
