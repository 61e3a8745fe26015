"""pprof (profile.proto, gzip-compressed): the writer, and a reader for pyprof's and other tools' files.

What the writer puts in, and why:
- two sample types per event: CPU's `samples/count` and `cpu/nanoseconds` ([n, n * period]), wall's
  `wall_samples/count` and `wall/nanoseconds`, ... (pyprof.model.EVENT_SAMPLE_TYPES). Several events
  (`-e cpu,wall`) share one file: their types follow each other in the order asked for, a stack's
  sample carries every type's value (0 where that event has none), and the default type is the first
  event's second (`cpu` for a CPU profile, as before);
- every native library as a Mapping flagged as already symbolized, so `go tool pprof` never tries (and
  warns about failing) to re-symbolize it from files that may not exist on the reading machine;
- one Location per machine frame, with one Line per logical frame (innermost first, pprof's order for
  inlining), so a C2 frame with inlined callees is one address and several functions;
- JIT code, the interpreter and the kernel have no file: their Locations have no mapping (mapping_id
  0). `go tool pprof` only ever symbolizes Locations through their mapping, so these are left alone and
  cause no warning (checked with go 1.19's pprof and upstream's symbolizer); a synthetic "[jit]" mapping
  would only add a fake address range and could become the profile's "main binary" in pprof's header;
- `thread` / `tid` labels on every sample (plus `virtual_thread` while one is mounted, JDK 21+); lost
  samples and unknown frames as parseable comments.

The output is deterministic: samples are sorted, ids follow that order, and the gzip header has no time.
"""

from __future__ import annotations

import gzip
import os
import re
from typing import Optional, Sequence, Union

from pyprof.errors import UsageError
from pyprof.model import (
    EVENT_SAMPLE_TYPES,
    FrameKind,
    LogicalFrame,
    Mapping,
    PhysicalFrame,
    ProfileData,
    SampleType,
    StackKey,
    display_name,
    split_display_name,
)
from pyprof.output.proto import profile_pb2

KERNEL_START = 0xFFFF_8000_0000_0000   # x86_64: every kernel address is above the canonical hole
KERNEL_MAPPING = "[kernel.kallsyms]"    # perf's name for the kernel (pprof allows a suffix: "..._text")
_GZIP_MAGIC = b"\x1f\x8b"
_COUNTER_COMMENT = re.compile(r"(lost_samples|unknown_frames)=(\d+)")
# async-profiler's frame-type annotations (`--cstack`, `-a`), and perf's kernel marker
_MARKERS: dict[str, FrameKind] = {
    "_[j]": FrameKind.C2, "_[1]": FrameKind.C1, "_[0]": FrameKind.INTERPRETED, "_[i]": FrameKind.INLINED,
    "_[k]": FrameKind.KERNEL, " [k]": FrameKind.KERNEL,
}
_THREAD_LABELS = ("thread", "thread_name", "thread name")
_TID_LABELS = ("tid", "thread_id", "thread id")


# ---- writing ---------------------------------------------------------------------------------------

class _Strings:
    """The string table: index 0 is "", every string stored once."""

    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.table)
            self.table.append(_valid_utf8(text))
        return index


def _valid_utf8(text: str) -> str:
    """protobuf strings must be UTF-8: a Java thread name can hold a lone surrogate, a comm raw bytes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")


def _sample_order(key: StackKey) -> tuple:
    """Sort key making the output independent of the order samples were aggregated in."""
    return key.thread_name, key.tid, tuple(frame.address for frame in key.frames), key.labels


class _Encoder:
    def __init__(self, profiles: Sequence[ProfileData], tiers: bool) -> None:
        if not profiles or len({p.event for p in profiles}) != len(profiles):
            raise ValueError("one profile per event")
        self.profiles = tuple(profiles)
        self.profile = profiles[0]
        self.tiers = tiers
        self.pb = profile_pb2.Profile()
        self.s = _Strings()
        keys = set(self.profile.counts)
        for other in self.profiles[1:]:
            keys.update(other.counts)
        self.keys = sorted(keys, key=_sample_order)
        self.mapping_ids: dict[Mapping, int] = {}
        self.function_ids: dict[tuple[str, str, str], int] = {}
        self.location_ids: dict[PhysicalFrame, int] = {}
        # The profile keeps every frame alive while we encode, so id() is a stable key, and much cheaper
        # than hashing frames (stacks share frame objects: most lookups hit here).
        self.location_by_identity: dict[int, int] = {}

    def encode(self) -> bytes:
        self._header()
        self._mappings()
        for key in self.keys:
            self._sample(key, self._values(key))
        self._comments()
        self.pb.string_table.extend(self.s.table)
        # mtime=0: the same profile gives the same bytes
        return gzip.compress(self.pb.SerializeToString(), compresslevel=6, mtime=0)

    def _header(self) -> None:
        pb, s = self.pb, self.s
        for profile in self.profiles:
            for sample_type in profile.sample_types:
                pb.sample_type.add(type=s(sample_type.type), unit=s(sample_type.unit))
        # the period is the cpu-clock's (wall: what one on-CPU sample is worth), in the first type's terms
        first = self.profile.sample_types[1]
        pb.period_type.type = s(first.type)
        pb.period_type.unit = s(first.unit)
        pb.period = self.profile.period_ns
        pb.time_nanos = self.profile.start_time_ns
        pb.duration_nanos = self.profile.duration_ns
        pb.default_sample_type = s(first.type)

    def _values(self, key: StackKey) -> list[int]:
        values: list[int] = []
        for profile in self.profiles:
            count = profile.counts.get(key, 0)
            values += (count, profile.weight(key)) if count else (0, 0)
        return values

    def _mappings(self) -> None:
        """Every mapping some frame is in, sorted by address (ids do not depend on sample order)."""
        used = {frame.mapping for key in self.keys for frame in key.frames if frame.mapping is not None}
        for m in sorted(used, key=lambda m: (m.start, m.limit, m.offset, m.filename, m.build_id)):
            # Every frame we write is already symbolized: the has_* flags stop pprof from opening the
            # file (which warns when it is missing, or differs, on the machine reading the profile).
            self.mapping_ids[m] = len(self.pb.mapping) + 1
            self.pb.mapping.add(id=self.mapping_ids[m], memory_start=m.start, memory_limit=m.limit,
                                file_offset=m.offset, filename=self.s(m.filename),
                                build_id=self.s(m.build_id), has_functions=True, has_filenames=True,
                                has_line_numbers=True, has_inline_frames=True)

    def _sample(self, key: StackKey, values: list[int]) -> None:
        sample = self.pb.sample.add()
        known = self.location_by_identity
        sample.location_id.extend([known.get(id(frame)) or self._location(frame) for frame in key.frames])
        sample.value.extend(values)
        sample.label.add(key=self.s("thread"), str=self.s(key.thread_name))
        sample.label.add(key=self.s("tid"), num=key.tid)
        for name, value in key.labels:
            sample.label.add(key=self.s(name), str=self.s(value))

    def _location(self, frame: PhysicalFrame) -> int:
        location_id = self.location_ids.get(frame)   # an equal frame, as another object
        if location_id is None:
            location_id = self.location_ids[frame] = self._add_location(frame)
        self.location_by_identity[id(frame)] = location_id
        return location_id

    def _add_location(self, frame: PhysicalFrame) -> int:
        location_id = len(self.pb.location) + 1
        mapping_id = self.mapping_ids[frame.mapping] if frame.mapping is not None else 0
        location = self.pb.location.add(id=location_id, address=frame.address, mapping_id=mapping_id)
        for logical in frame.frames:   # innermost first, as pprof wants: the last Line is the caller
            location.line.add(function_id=self._function(logical), line=max(logical.line, 0))
        return location_id

    def _function(self, logical: LogicalFrame) -> int:
        name = display_name(logical, self.tiers)
        key = (name, logical.system_name or logical.name, logical.filename)
        function_id = self.function_ids.get(key)
        if function_id is None:
            function_id = self.function_ids[key] = len(self.pb.function) + 1
            self.pb.function.add(id=function_id, name=self.s(key[0]), system_name=self.s(key[1]),
                                 filename=self.s(key[2]))
        return function_id

    def _comments(self) -> None:
        p = self.profile
        texts = [*p.comments, f"lost_samples={p.lost_samples}", f"unknown_frames={p.unknown_frames}"]
        self.pb.comment.extend(self.s(text) for text in texts)


def encode(profile: ProfileData, tiers: bool = True) -> bytes:
    """The profile as gzip-compressed profile.proto."""
    return _Encoder((profile,), tiers).encode()


def encode_events(profiles: Sequence[ProfileData], tiers: bool = True) -> bytes:
    """Several events' profiles (one per event, sharing one stack space) as one pprof with their sample
    types side by side; the first profile's second type is the default."""
    return _Encoder(profiles, tiers).encode()


# ---- reading ---------------------------------------------------------------------------------------

def _load(source: Union[str, os.PathLike, bytes]) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "profile data"
    try:
        with open(source, "rb") as f:
            return f.read(), os.fspath(source)
    except OSError as e:
        raise UsageError(f"cannot read {os.fspath(source)}: {e.strerror}") from e


def _parse(data: bytes, what: str) -> profile_pb2.Profile:
    try:
        if data.startswith(_GZIP_MAGIC):
            data = gzip.decompress(data)
        return profile_pb2.Profile.FromString(data)
    except Exception as e:  # noqa: BLE001 - gzip, zlib and protobuf each raise their own errors
        raise UsageError(f"cannot read {what}: not a pprof profile ({e})") from e


def _strip_marker(name: str) -> tuple[str, Optional[FrameKind]]:
    for marker, kind in _MARKERS.items():
        if name.endswith(marker):
            return name[: -len(marker)], kind
    return name, None


def _kind_of(name: str, address: int, mapping_file: str) -> tuple[str, FrameKind]:
    """(plain name, kind) of a function read from any tool's pprof, best effort for other tools."""
    plain, kind, _osr = split_display_name(name)
    if kind is None:
        plain, kind = _strip_marker(name)
    if kind is not None:
        return plain, kind
    if address >= KERNEL_START or mapping_file.startswith(KERNEL_MAPPING):
        return name, FrameKind.KERNEL
    if mapping_file:
        return name, FrameKind.NATIVE
    if not name or name.startswith("[unknown"):
        return name or "[unknown]", FrameKind.UNKNOWN
    if name.startswith("[") and name.endswith("]"):
        return name, FrameKind.JVM_STUB   # pyprof names stubs "[StubRoutines]", "[Interpreter]", ...
    return name, FrameKind.NATIVE


class _Decoder:
    def __init__(self, pb: profile_pb2.Profile) -> None:
        self.pb = pb
        self.strings = list(pb.string_table)
        self.mappings = {m.id: m for m in pb.mapping}
        self.functions = {f.id: f for f in pb.function}
        self.locations = {loc.id: loc for loc in pb.location}
        self.frames: dict[int, PhysicalFrame] = {}
        self.model_mappings: dict[int, Optional[Mapping]] = {}

    def _s(self, index: int) -> str:
        """A string-table entry; a bad index (a broken writer) reads as ""."""
        return self.strings[index] if 0 <= index < len(self.strings) else ""

    def decode(self, sample_type: Optional[str] = None) -> ProfileData:
        """The profile's samples; `sample_type` (a type's name: "wall", "alloc_space") picks the value
        the profile's counts hold, else the first count-like type (a CPU profile's sample count)."""
        profile = ProfileData()
        self._header(profile)
        if sample_type is not None:
            return self._decode_type(profile, sample_type)
        count_index, ns_index = self._value_indexes()
        for sample in self.pb.sample:
            count = self._count(sample, count_index, ns_index, profile.period_ns)
            if count > 0:
                profile.add(self._key(sample), count)
        return profile

    def sample_type_names(self) -> list[str]:
        return [self._s(vt.type) for vt in self.pb.sample_type]

    def _decode_type(self, profile: ProfileData, sample_type: str) -> ProfileData:
        """counts = the values of `sample_type`; event and weights from pyprof's events when the type is
        one of theirs (weights: the event's second value, so a re-written profile keeps it)."""
        names = self.sample_type_names()
        if sample_type not in names:
            raise UsageError(f"no sample type {sample_type!r} in this profile (types: {', '.join(names)})")
        index = names.index(sample_type)
        weight_index = self._typed_header(profile, index)
        for sample in self.pb.sample:
            self._add_typed(profile, sample, index, weight_index, None)
        return profile

    def decode_types(self) -> list[tuple[SampleType, ProfileData]]:
        """One ProfileData per sample type (counts = its values), the stacks decoded once for all."""
        plans: list[tuple[int, Optional[int], ProfileData]] = []
        out: list[tuple[SampleType, ProfileData]] = []
        for index, vt in enumerate(self.pb.sample_type):
            profile = ProfileData()
            self._header(profile)
            plans.append((index, self._typed_header(profile, index), profile))
            out.append((SampleType(self._s(vt.type), self._s(vt.unit)), profile))
        for sample in self.pb.sample:
            key: list[StackKey] = []   # made for the first type that has a value
            for index, weight_index, profile in plans:
                self._add_typed(profile, sample, index, weight_index, key)
        return out

    def _typed_header(self, profile: ProfileData, index: int) -> Optional[int]:
        """Set `counted` and the event of a profile of sample type `index`; the index of the event's
        weight type (None when the type is no pyprof event's)."""
        names = self.sample_type_names()
        sample_type = names[index]
        profile.counted = f"{sample_type}/{self._s(self.pb.sample_type[index].unit)}"
        for event, types in EVENT_SAMPLE_TYPES.items():
            if sample_type in (types[0].type, types[1].type) and types[1].type in names:
                profile.event = event
                if sample_type == types[0].type == "samples":
                    profile.counted = ""   # CPU samples: views say samples and CPU seconds, as without a type
                return names.index(types[1].type)
        return None

    def _add_typed(self, profile: ProfileData, sample: profile_pb2.Sample, index: int,
                   weight_index: Optional[int], key: Optional[list[StackKey]]) -> None:
        values = sample.value
        value = values[index] if index < len(values) else 0
        if value <= 0:
            return
        has_weight = weight_index is not None and weight_index < len(values)
        weight = values[weight_index] if has_weight and profile.event != "cpu" else 0
        if key is None:
            profile.add(self._key(sample), value, weight)
            return
        if not key:
            key.append(self._key(sample))
        profile.add(key[0], value, weight)

    def _header(self, profile: ProfileData) -> None:
        pb = self.pb
        if pb.period > 0 and self._s(pb.period_type.unit) == "nanoseconds":
            profile.period_ns = pb.period
        profile.start_time_ns = pb.time_nanos
        profile.duration_ns = pb.duration_nanos
        for index in pb.comment:
            text = self._s(index)
            counter = _COUNTER_COMMENT.fullmatch(text)
            if counter is None:
                profile.comments.append(text)
            else:
                setattr(profile, counter.group(1), int(counter.group(2)))

    def _value_indexes(self) -> tuple[Optional[int], Optional[int]]:
        """Where the sample count is, and where CPU time in ns is (either may be missing)."""
        count_index = ns_index = None
        for i, vt in enumerate(self.pb.sample_type):
            unit = self._s(vt.unit)
            if unit == "count" and count_index is None:
                count_index = i
            elif unit == "nanoseconds" and ns_index is None:
                ns_index = i
        return count_index, ns_index

    @staticmethod
    def _count(sample: profile_pb2.Sample, count_index: Optional[int], ns_index: Optional[int],
               period_ns: int) -> int:
        values = sample.value
        if count_index is not None and count_index < len(values):
            return values[count_index]
        if ns_index is not None and ns_index < len(values) and period_ns > 0:
            return round(values[ns_index] / period_ns)
        return values[0] if values else 0

    def _key(self, sample: profile_pb2.Sample) -> StackKey:
        thread_name, tid = "", 0
        others: list[tuple[str, str]] = []
        for label in sample.label:
            key = self._s(label.key)
            if key in _THREAD_LABELS and label.str:
                thread_name = self._s(label.str)
            elif key in _TID_LABELS:
                tid = self._number(label, tid)
            elif label.str:
                others.append((key, self._s(label.str)))
        frames = tuple(self._frame(location_id) for location_id in sample.location_id)
        return StackKey(frames, thread_name, tid, tuple(sorted(others)))

    def _number(self, label: profile_pb2.Label, default: int) -> int:
        """A numeric label's value; some tools write numbers as string labels."""
        if label.num:
            return label.num
        text = self._s(label.str)
        return int(text) if text.isdigit() else default

    def _frame(self, location_id: int) -> PhysicalFrame:
        frame = self.frames.get(location_id)
        if frame is None:
            frame = self.frames[location_id] = self._build_frame(location_id)
        return frame

    def _build_frame(self, location_id: int) -> PhysicalFrame:
        location = self.locations.get(location_id)
        if location is None:
            return PhysicalFrame(0, (LogicalFrame("[unknown]", FrameKind.UNKNOWN),))
        pb_mapping = self.mappings.get(location.mapping_id)
        mapping_file = self._s(pb_mapping.filename) if pb_mapping is not None else ""
        logical = tuple(self._logical(line, location.address, mapping_file) for line in location.line)
        if not logical:
            logical = (self._unsymbolized(location.address, pb_mapping),)
        return PhysicalFrame(location.address, logical, self._mapping(location.mapping_id))

    def _logical(self, line: profile_pb2.Line, address: int, mapping_file: str) -> LogicalFrame:
        function = self.functions.get(line.function_id)
        if function is None:
            return LogicalFrame("[unknown]", FrameKind.UNKNOWN, line=max(line.line, 0))
        name, kind = _kind_of(self._s(function.name), address, mapping_file)
        osr = split_display_name(self._s(function.name))[2]
        return LogicalFrame(name, kind, self._s(function.system_name), self._s(function.filename),
                            max(line.line, 0), osr)

    def _unsymbolized(self, address: int, pb_mapping: Optional[profile_pb2.Mapping]) -> LogicalFrame:
        """A Location without Lines (an unsymbolized profile): `library+0xFILE_OFFSET`, or its address."""
        if address >= KERNEL_START:
            return LogicalFrame(f"[kernel 0x{address:x}]", FrameKind.KERNEL)
        if pb_mapping is None or not self._s(pb_mapping.filename):
            return LogicalFrame(f"[unknown 0x{address:x}]", FrameKind.UNKNOWN)
        library = self._s(pb_mapping.filename)
        offset = address - pb_mapping.memory_start + pb_mapping.file_offset
        return LogicalFrame(f"{library.rsplit('/', 1)[-1]}+0x{offset:x}", FrameKind.NATIVE, "", library)

    def _mapping(self, mapping_id: int) -> Optional[Mapping]:
        if mapping_id not in self.model_mappings:
            m = self.mappings.get(mapping_id)
            filename = self._s(m.filename) if m is not None else ""
            self.model_mappings[mapping_id] = (
                None if m is None or filename.startswith(KERNEL_MAPPING)
                else Mapping(m.memory_start, m.memory_limit, m.file_offset, filename, self._s(m.build_id)))
        return self.model_mappings[mapping_id]


def read_pprof(source: Union[str, os.PathLike, bytes], sample_type: Optional[str] = None) -> ProfileData:
    """A ProfileData from a pprof file (gzip-compressed or raw profile.proto) or its bytes; its counts
    are the values of `sample_type` (`pyprof report --type wall`), by default the first count type."""
    data, what = _load(source)
    return _Decoder(_parse(data, what)).decode(sample_type)


def read_pprof_types(source: Union[str, os.PathLike, bytes]) -> list[tuple[SampleType, ProfileData]]:
    """Every sample type of a pprof file, each as a ProfileData whose counts are that type's values."""
    data, what = _load(source)
    return _Decoder(_parse(data, what)).decode_types()


def read_sample_types(source: Union[str, os.PathLike, bytes]) -> list[str]:
    """The names of a pprof file's sample types, in order ("samples", "cpu", "wall_samples", ...)."""
    data, what = _load(source)
    return _Decoder(_parse(data, what)).sample_type_names()


def read_events(source: Union[str, os.PathLike, bytes]) -> list[ProfileData]:
    """One ProfileData per pyprof event whose two sample types the file has (a `-e cpu,alloc` profile or
    daemon window: [cpu, alloc]), in the file's order; counts the event's first type, weights its second.
    A file without any event's pair (another tool's) is one profile read as read_pprof reads it."""
    data, what = _load(source)
    pb = _parse(data, what)
    names = [pb.string_table[t.type] if 0 <= t.type < len(pb.string_table) else "" for t in pb.sample_type]
    found = []
    for event, (count_type, weight_type) in EVENT_SAMPLE_TYPES.items():
        if count_type.type in names and weight_type.type in names:
            found.append((names.index(count_type.type), event, count_type.type))
    decoder = _Decoder(pb)   # one for every event: its frames are decoded once
    if not found:
        return [decoder.decode()]
    out = []
    for _index, event, count_type_name in sorted(found):
        profile = decoder.decode(count_type_name)
        profile.event = event
        out.append(profile)
    return out
