"""The pprof writer and reader (pyprof.output.pprof) and the atomic file writing (pyprof.output).

The profile is built by hand so every number `go tool pprof` prints can be predicted: 100 samples of
10 ms, with leaves hash [inlined] 55, do_syscall_64 30, run [interp] 10, run [C2] 5.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from pyprof.errors import UsageError
from pyprof.model import FrameKind, LogicalFrame, Mapping, PhysicalFrame, ProfileData, StackKey
from pyprof.output import format_for_path, write_profile
from pyprof.output.pprof import encode, read_pprof
from pyprof.output.proto import profile_pb2

PERIOD_NS = 10_000_000
LIBC = Mapping(0x7F00_0000_0000, 0x7F00_0020_0000, 0x28000, "/usr/lib/x86_64-linux-gnu/libc.so.6", "c0ffee01")
LIBJVM = Mapping(0x7F10_0000_0000, 0x7F10_0100_0000, 0x0, "/usr/lib/jvm/java-17/lib/server/libjvm.so",
                 "ba5eba11")

HASH = LogicalFrame("java.util.HashMap.hash", FrameKind.INLINED,
                    "java.util.HashMap.hash(Ljava/lang/Object;)I", "HashMap.java", 338)
GET = LogicalFrame("java.util.HashMap.get", FrameKind.INLINED,
                   "java.util.HashMap.get(Ljava/lang/Object;)Ljava/lang/Object;", "HashMap.java", 556)
RUN_C2 = LogicalFrame("demo.Work.run", FrameKind.C2, "demo.Work.run()V", "Work.java", 42)
RUN_C2_OTHER_LINE = LogicalFrame("demo.Work.run", FrameKind.C2, "demo.Work.run()V", "Work.java", 45)
RUN_INTERP = LogicalFrame("demo.Work.run", FrameKind.INTERPRETED, "demo.Work.run()V", "Work.java", 40)
MAIN = LogicalFrame("demo.Main.main", FrameKind.INTERPRETED, "demo.Main.main([Ljava/lang/String;)V",
                    "Main.java", 7)
ARRAYCOPY = LogicalFrame("java.lang.System.arraycopy", FrameKind.NATIVE_METHOD,
                         "java.lang.System.arraycopy(Ljava/lang/Object;ILjava/lang/Object;II)V",
                         "System.java")
JVM_ARRAYCOPY = LogicalFrame("JVM_ArrayCopy", FrameKind.NATIVE, "JVM_ArrayCopy", LIBJVM.filename)
MEMCPY = LogicalFrame("memcpy", FrameKind.NATIVE, "memcpy", LIBC.filename)
SYSCALL = LogicalFrame("do_syscall_64", FrameKind.KERNEL)

C2_FRAME = PhysicalFrame(0x7F3E_348C_9080, (HASH, GET, RUN_C2))       # innermost first
C2_FRAME_2 = PhysicalFrame(0x7F3E_348C_9100, (RUN_C2_OTHER_LINE,))
INTERP_RUN = PhysicalFrame(0x7F3E_3000_2000, (RUN_INTERP,))
INTERP_MAIN = PhysicalFrame(0x7F3E_3000_1234, (MAIN,))
JNI_FRAME = PhysicalFrame(0x7F3E_3400_0040, (ARRAYCOPY,))
JVM_FRAME = PhysicalFrame(0x7F10_0012_3456, (JVM_ARRAYCOPY,), LIBJVM)
LIBC_FRAME = PhysicalFrame(0x7F00_0003_1234, (MEMCPY,), LIBC)
KERNEL_FRAME = PhysicalFrame(0xFFFF_FFFF_8100_1234, (SYSCALL,))

STACKS = [   # (leaf-first frames, thread, tid, count)
    ((C2_FRAME, INTERP_MAIN), "main", 100, 55),
    ((C2_FRAME_2, INTERP_MAIN), "main", 100, 5),
    ((KERNEL_FRAME, LIBC_FRAME, JVM_FRAME, JNI_FRAME, C2_FRAME, INTERP_MAIN), "worker-1", 101, 30),
    ((INTERP_RUN, INTERP_MAIN), "worker-1", 101, 10),
]
COMMENTS = ["pyprof 0.1.0", "JVM: OpenJDK 64-Bit Server VM 17.0.9"]


def make_profile(reverse: bool = False) -> ProfileData:
    profile = ProfileData(period_ns=PERIOD_NS, start_time_ns=1_700_000_000_000_000_000,
                          duration_ns=5_000_000_000, comments=list(COMMENTS), lost_samples=3,
                          unknown_frames=2)
    for frames, thread, tid, count in (reversed(STACKS) if reverse else STACKS):
        profile.add(StackKey(frames, thread, tid), count)
    return profile


def decode(data: bytes) -> profile_pb2.Profile:
    return profile_pb2.Profile.FromString(gzip.decompress(data))


class Pb:
    """Read access to a decoded profile by names instead of string indexes and ids."""

    def __init__(self, pb: profile_pb2.Profile) -> None:
        self.pb = pb
        self.s = list(pb.string_table)
        self.functions = {f.id: f for f in pb.function}
        self.locations = {loc.id: loc for loc in pb.location}

    def line_names(self, location: profile_pb2.Location) -> list[str]:
        return [self.s[self.functions[line.function_id].name] for line in location.line]

    def location_with(self, address: int) -> profile_pb2.Location:
        (location,) = [loc for loc in self.pb.location if loc.address == address]
        return location

    def labels(self, sample: profile_pb2.Sample) -> dict[str, object]:
        return {self.s[lb.key]: (self.s[lb.str] if lb.str else lb.num) for lb in sample.label}

    def leaf(self, sample: profile_pb2.Sample) -> str:
        return self.line_names(self.locations[sample.location_id[0]])[0]


# ---- the encoding, read back with profile_pb2 -----------------------------------------------------

def test_header_sample_types_and_period() -> None:
    # GIVEN a profile of 100 samples at a 10 ms period over 5 s
    # WHEN it is encoded
    pb = Pb(decode(encode(make_profile())))
    # THEN both sample types, the period and the times are pprof's CPU-profile conventions
    s = pb.s
    assert s[0] == ""
    assert len(set(s)) == len(s), "every string is stored once"
    types = [(s[t.type], s[t.unit]) for t in pb.pb.sample_type]
    assert types == [("samples", "count"), ("cpu", "nanoseconds")]
    assert (s[pb.pb.period_type.type], s[pb.pb.period_type.unit]) == ("cpu", "nanoseconds")
    assert pb.pb.period == PERIOD_NS
    assert pb.pb.duration_nanos == 5_000_000_000
    assert pb.pb.time_nanos == 1_700_000_000_000_000_000
    assert s[pb.pb.default_sample_type] == "cpu"
    assert [s[c] for c in pb.pb.comment] == [*COMMENTS, "lost_samples=3", "unknown_frames=2"]


def test_samples_values_and_labels() -> None:
    # GIVEN the profile
    # WHEN it is encoded
    pb = Pb(decode(encode(make_profile())))
    # THEN each stack is one sample with [count, count * period] and its thread's labels
    got = {(pb.leaf(sample), pb.labels(sample)["thread"], pb.labels(sample)["tid"]): list(sample.value)
           for sample in pb.pb.sample}
    assert got == {
        ("java.util.HashMap.hash [inlined]", "main", 100): [55, 55 * PERIOD_NS],
        ("demo.Work.run [C2]", "main", 100): [5, 5 * PERIOD_NS],
        ("do_syscall_64", "worker-1", 101): [30, 30 * PERIOD_NS],
        ("demo.Work.run [interp]", "worker-1", 101): [10, 10 * PERIOD_NS],
    }
    deep = [sample for sample in pb.pb.sample if len(sample.location_id) == 6]
    assert len(deep) == 1
    assert [pb.locations[i].address for i in deep[0].location_id] == [f.address for f in STACKS[2][0]]


def test_mappings_are_real_and_marked_symbolized() -> None:
    # GIVEN frames in libc and libjvm, and JIT, interpreter and kernel frames that have no file
    # WHEN encoded
    pb = Pb(decode(encode(make_profile())))
    # THEN the two libraries are mappings with their addresses, offsets and build ids, flagged as
    # symbolized so pprof never tries to open them
    got = [(pb.s[m.filename], m.memory_start, m.memory_limit, m.file_offset, pb.s[m.build_id])
           for m in pb.pb.mapping]
    assert got == [(m.filename, m.start, m.limit, m.offset, m.build_id) for m in (LIBC, LIBJVM)]
    assert all(m.has_functions and m.has_filenames and m.has_line_numbers for m in pb.pb.mapping)
    ids = {pb.s[m.filename]: m.id for m in pb.pb.mapping}
    assert pb.location_with(LIBC_FRAME.address).mapping_id == ids[LIBC.filename]
    assert pb.location_with(JVM_FRAME.address).mapping_id == ids[LIBJVM.filename]
    # AND file-less code has no mapping (go tool pprof leaves such locations alone)
    for frame in (C2_FRAME, INTERP_MAIN, JNI_FRAME, KERNEL_FRAME):
        assert pb.location_with(frame.address).mapping_id == 0


def test_one_location_per_machine_frame_with_inlined_lines_innermost_first() -> None:
    # GIVEN a C2 frame that inlined HashMap.get, which inlined HashMap.hash, used by two stacks
    # WHEN encoded
    pb = Pb(decode(encode(make_profile())))
    # THEN there is one Location per distinct machine frame
    assert len(pb.pb.location) == 8
    # AND the C2 frame's Location has one Line per Java method, innermost first, with line numbers
    location = pb.location_with(C2_FRAME.address)
    assert pb.line_names(location) == ["java.util.HashMap.hash [inlined]", "java.util.HashMap.get [inlined]",
                                       "demo.Work.run [C2]"]
    assert [line.line for line in location.line] == [338, 556, 42]
    # AND a frame without a known line has line 0
    assert [line.line for line in pb.location_with(LIBC_FRAME.address).line] == [0]


def test_functions_are_deduplicated_with_descriptor_and_source_file() -> None:
    # GIVEN demo.Work.run compiled by C2 at two pcs (lines 42 and 45) and also interpreted
    # WHEN encoded
    pb = Pb(decode(encode(make_profile())))
    # THEN each (name, system name, file) is one Function, the tier is part of the name
    keys = [(pb.s[f.name], pb.s[f.system_name], pb.s[f.filename]) for f in pb.pb.function]
    assert len(keys) == len(set(keys)) == 9
    assert keys.count(("demo.Work.run [C2]", "demo.Work.run()V", "Work.java")) == 1
    assert ("demo.Work.run [interp]", "demo.Work.run()V", "Work.java") in keys
    assert ("memcpy", "memcpy", LIBC.filename) in keys
    # a frame without a system name gets its name there (pprof shows system names in -raw)
    assert ("do_syscall_64", "do_syscall_64", "") in keys


def test_without_tiers_the_same_method_is_one_function() -> None:
    # GIVEN the profile
    # WHEN encoded with tiers off
    pb = Pb(decode(encode(make_profile(), tiers=False)))
    # THEN names have no suffix, and run (C2 and interpreted) is one Function
    names = [pb.s[f.name] for f in pb.pb.function]
    assert names.count("demo.Work.run") == 1
    assert not [name for name in names if name.endswith("]")]
    assert len(names) == 8


def test_output_is_deterministic() -> None:
    # GIVEN the same samples aggregated in two different orders
    # WHEN both are encoded
    first, second = encode(make_profile()), encode(make_profile(reverse=True))
    # THEN the bytes are identical (gzip header without a time, sorted samples)
    assert first == second
    assert encode(make_profile()) == first


# ---- go tool pprof --------------------------------------------------------------------------------

def go_pprof(path: Path, *args: str) -> str:
    """Run the real `go tool pprof`; fail on anything it prints on stderr."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("test environment incomplete: no `go` (run `make setup` as root)", pytrace=False)
    env = {**os.environ, "HOME": str(path.parent), "PPROF_TMPDIR": "/tmp"}
    done = subprocess.run([go, "tool", "pprof", *args, str(path)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    # Not just "no warning": pprof's symbolization complaints ("Local symbolization failed for ...")
    # contain neither "warning" nor "error", so nothing is allowed on stderr but -output's progress line.
    complaints = [line for line in done.stderr.splitlines() if not line.startswith("Generating report in ")]
    assert complaints == [], done.stderr
    return done.stdout


TOP_ROW = re.compile(r"^\s*(\S+)\s+([\d.]+)%\s+[\d.]+%\s+(\S+)\s+([\d.]+)%\s+(.+?)\s*$")


def top_rows(text: str) -> dict[str, tuple[str, str, str]]:
    """name -> (flat, flat%, cum%) from `go tool pprof -top`."""
    rows = {}
    for line in text.splitlines():
        m = TOP_ROW.match(line)
        if m:
            rows[m.group(5)] = (m.group(1), m.group(2), m.group(4))
    return rows


@pytest.fixture
def written(tmp_path: Path) -> Path:
    path = tmp_path / "cpu.pb.gz"
    write_profile(make_profile(), str(path), "pprof")
    return path


def test_go_pprof_top_reads_cpu_time_per_leaf(written: Path) -> None:
    # GIVEN the profile written to a file
    # WHEN `go tool pprof -top` reads it
    out = go_pprof(written, "-top", "-nodecount=20")
    # THEN it sees CPU time, 1 s in total over 5 s, and the flat share of every leaf
    assert "Type: cpu" in out
    assert "Duration: 5s, Total samples = 1000ms (20.00%)" in out
    rows = top_rows(out)
    assert rows["java.util.HashMap.hash [inlined] (inline)"] == ("550ms", "55.00", "85.00")
    assert rows["do_syscall_64"] == ("300ms", "30.00", "30.00")
    assert rows["demo.Work.run [interp]"] == ("100ms", "10.00", "10.00")
    assert rows["demo.Work.run [C2]"] == ("50ms", "5.00", "90.00")
    assert rows["demo.Main.main [interp]"] == ("0", "0", "100")


def test_go_pprof_top_by_sample_count(written: Path) -> None:
    # GIVEN the profile written to a file
    # WHEN pprof shows the samples/count values instead of the default cpu
    rows = top_rows(go_pprof(written, "-top", "-sample_index=samples"))
    # THEN the counts are the ones recorded
    assert rows["java.util.HashMap.hash [inlined] (inline)"][0] == "55"
    assert rows["do_syscall_64"][0] == "30"
    assert rows["memcpy"] == ("0", "0", "30.00")
    assert rows["java.lang.System.arraycopy [jni]"] == ("0", "0", "30.00")


def test_go_pprof_raw_shows_lines_mappings_and_labels(written: Path) -> None:
    # GIVEN the profile written to a file
    # WHEN `go tool pprof -raw` dumps it
    out = go_pprof(written, "-raw")
    # THEN the sample types, period, labels, inlined lines and mappings are what we wrote
    assert "samples/count cpu/nanoseconds[dflt]" in out
    assert "Period: 10000000" in out
    assert re.search(r"^\s+55\s+550000000: \d+ \d+\s*$", out, re.M)
    assert "thread:[worker-1]" in out and "tid:[101]" in out
    assert re.search(r"0x7f3e348c9080 java\.util\.HashMap\.hash \[inlined\] HashMap\.java:338 .*\n"
                     r"\s+java\.util\.HashMap\.get \[inlined\] HashMap\.java:556 .*\n"
                     r"\s+demo\.Work\.run \[C2\] Work\.java:42 ", out)
    assert re.search(r"0x7f0000000000/0x7f0000200000/0x28000 /usr/lib/x86_64-linux-gnu/libc\.so\.6 c0ffee01 "
                     r"\[FN\]\[FL\]\[LN\]\[IN\]", out)
    assert "Comment: lost_samples=3" in out


def test_go_pprof_tags_show_threads(written: Path) -> None:
    # GIVEN samples of two threads (main 60, worker-1 40)
    # WHEN `go tool pprof -tags` lists the labels
    out = go_pprof(written, "-tags")
    # THEN both labels carry the CPU time per thread
    assert re.search(r"600\.0ms \(60\.00%\): main\b", out)
    assert re.search(r"400\.0ms \(40\.00%\): worker-1\b", out)
    assert re.search(r"600\.0ms \(60\.00%\): 100\b", out)
    assert re.search(r"400\.0ms \(40\.00%\): 101\b", out)


# ---- reading back ---------------------------------------------------------------------------------

def summary(profile: ProfileData) -> dict[tuple, int]:
    """What a profile says, without the fields pprof cannot distinguish (an empty system name)."""
    return {
        (key.thread_name, key.tid, tuple(
            (f.address, f.mapping, tuple((lf.name, lf.kind, lf.filename, lf.line) for lf in f.frames))
            for f in key.frames)): count
        for key, count in profile.counts.items()
    }


def test_round_trip_keeps_stacks_threads_kinds_and_lines() -> None:
    # GIVEN the profile
    original = make_profile()
    # WHEN it is encoded and read back
    back = read_pprof(encode(original))
    # THEN stacks, counts, threads, tids, frame kinds, lines and mappings are the same
    assert summary(back) == summary(original)
    # AND so are the profile's totals and comments (the counters come back out of the comments)
    assert (back.period_ns, back.start_time_ns, back.duration_ns) == (PERIOD_NS, original.start_time_ns,
                                                                      original.duration_ns)
    assert back.comments == COMMENTS
    assert (back.lost_samples, back.unknown_frames) == (3, 2)
    # AND Java system names (descriptors) survive
    leaf = next(k for k in back.counts if k.frames[0].address == C2_FRAME.address).frames[0]
    assert leaf.frames[2].system_name == "demo.Work.run()V"


def test_reads_files_raw_proto_and_pprofs_own_encoding(written: Path, tmp_path: Path) -> None:
    # GIVEN the profile as a gzip file, as raw profile.proto, and as re-written by go tool pprof
    raw = tmp_path / "raw.pb"
    raw.write_bytes(gzip.decompress(written.read_bytes()))
    rewritten = tmp_path / "rewritten.pb.gz"
    go_pprof(written, "-proto", f"-output={rewritten}")
    expected = summary(make_profile())
    # WHEN each is read
    # THEN all say the same
    for path in (written, raw, rewritten):
        assert summary(read_pprof(str(path))) == expected, path


def test_reads_other_tools_frame_markers() -> None:
    # GIVEN a pprof from another tool: async-profiler-style `_[j]`/`_[k]` markers, a kernel address
    # without a marker, a library frame, an unsymbolized one and a string tid label
    pb = profile_pb2.Profile(string_table=["", "samples", "count", "a/B.c_[j]", "sys_read_[k]", "schedule",
                                           "strlen", "/lib/libc.so.6", "thread_id", "42", "[unknown]"])
    pb.sample_type.add(type=1, unit=2)
    pb.mapping.add(id=1, memory_start=0x1000, memory_limit=0x9000, file_offset=0x0, filename=7)
    for fid, name in ((1, 3), (2, 4), (3, 5), (4, 6), (5, 10)):
        pb.function.add(id=fid, name=name, system_name=name)
    pb.location.add(id=1, address=0x7000_0000).line.add(function_id=1, line=12)
    pb.location.add(id=2, address=0x1234).line.add(function_id=2)
    pb.location.add(id=3, address=0xFFFF_FFFF_8100_0000).line.add(function_id=3)
    pb.location.add(id=4, address=0x2000, mapping_id=1).line.add(function_id=4)
    pb.location.add(id=5, address=0x3000, mapping_id=1)
    pb.location.add(id=6, address=0).line.add(function_id=5)
    pb.sample.add(location_id=[2, 3, 4, 5, 6, 1], value=[7]).label.add(key=8, str=9)
    # WHEN read
    profile = read_pprof(pb.SerializeToString())
    # THEN kinds are recognised and markers stripped
    ((key, count),) = profile.counts.items()
    assert (count, key.tid, key.thread_name) == (7, 42, "")
    got = [(f.frames[0].name, f.frames[0].kind) for f in key.frames]
    assert got == [("sys_read", FrameKind.KERNEL), ("schedule", FrameKind.KERNEL),
                   ("strlen", FrameKind.NATIVE), ("libc.so.6+0x2000", FrameKind.NATIVE),
                   ("[unknown]", FrameKind.UNKNOWN), ("a/B.c", FrameKind.C2)]
    assert key.frames[2].mapping == Mapping(0x1000, 0x9000, 0, "/lib/libc.so.6", "")


def test_reading_garbage_is_a_usage_error(tmp_path: Path) -> None:
    # GIVEN a file that is not a profile, and a path that does not exist
    bad = tmp_path / "bad.pb.gz"
    bad.write_bytes(b"\x1f\x8bnot gzip at all")
    # WHEN read
    # THEN each is a one-line UsageError naming the file
    for path in (bad, tmp_path / "missing.pb.gz"):
        with pytest.raises(UsageError, match=re.escape(str(path))) as info:
            read_pprof(str(path))
        assert "\n" not in str(info.value)


# ---- format_for_path and atomic writing -----------------------------------------------------------

@pytest.mark.parametrize("path, fmt", [
    ("cpu.pb.gz", "pprof"), ("x/CPU.PPROF", "pprof"), ("a.pb", "pprof"), ("out.txt", "collapsed"),
    ("s.folded", "collapsed"), ("s.collapsed", "collapsed"), ("fg.html", "flamegraph"),
    ("run.speedscope.json", "speedscope"), ("run.json", None), ("cpu.gz", None), ("profile", None),
])
def test_format_for_path(path: str, fmt: str) -> None:
    # GIVEN a file name  WHEN its format is asked  THEN the extension decides
    assert format_for_path(path) == fmt


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_write_replaces_an_existing_file_on_success(tmp_path: Path, umask_022: None) -> None:
    # GIVEN an existing file
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(b"old")
    # WHEN a profile is written over it
    write_profile(make_profile(), str(path), "pprof")
    # THEN it holds the new profile, is world-readable (0644), and no temp file is left
    assert summary(read_pprof(str(path))) == summary(make_profile())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["cpu.pb.gz"]


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an existing file, and a disk that fails on fsync
    path = tmp_path / "cpu.pb.gz"
    path.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    # WHEN a profile is written over it
    with pytest.raises(UsageError, match="Input/output error") as info:
        write_profile(make_profile(), str(path), "pprof")
    # THEN the error is one line, the old file is untouched and the temp file is gone
    assert "\n" not in str(info.value)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["cpu.pb.gz"]


def test_unknown_format_writes_nothing(tmp_path: Path) -> None:
    # GIVEN a format write_profile does not produce
    path = tmp_path / "x.html"
    # WHEN asked for it  THEN UsageError, and no file at all
    with pytest.raises(UsageError, match="flamegraph"):
        write_profile(make_profile(), str(path), "flamegraph")
    assert os.listdir(tmp_path) == []


def test_unwritable_directory_is_a_usage_error_and_leaves_nothing(tmp_path: Path) -> None:
    # GIVEN a directory we may not write to (as root: a read-only directory and an unprivileged euid,
    # since root's capabilities would ignore the mode)
    directory = Path(tempfile.mkdtemp(prefix="pyprof-ro-"))
    try:
        directory.chmod(0o555)
        path = directory / "cpu.pb.gz"
        # WHEN the profile is written there
        with pytest.raises(UsageError) as info, _unprivileged():
            write_profile(make_profile(), str(path), "pprof")
        # THEN one clear line, and nothing (no temp file) in the directory
        assert str(info.value) == f"cannot write {path}: Permission denied"
        assert os.listdir(directory) == []
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


class _unprivileged:
    """Drop the effective uid to nobody while inside (only when root); the real uid brings it back."""

    def __enter__(self) -> None:
        self.was_root = os.geteuid() == 0
        if self.was_root:
            os.seteuid(65534)

    def __exit__(self, *exc: object) -> None:
        if self.was_root:
            os.seteuid(0)
