"""OpenTelemetry profiles (OTLP, `profiles/v1development` of opentelemetry-proto 1.10, as the PyPI package
`opentelemetry-proto` 1.45 ships it) over HTTP: `POST {base}/v1development/profiles`.

One request per window: one ResourceProfiles whose resource attributes name the JVM (`service.name`,
`process.pid`, `container.id`, `process.runtime.version`, `host.name`), one scope `pyprof`, and one
Profile per sample type, as the profiles data model has it (a Profile holds one sample type): cpu's
`samples/count` (period type `cpu/nanoseconds`, period 1e9/rate; its cpu time is samples x period), and
for the other events of a `daemon -e` window both of the event's types: wall `wall_samples/count` and
`wall/nanoseconds` (period type `wall/nanoseconds`, the same period: what an on-CPU sample is worth),
alloc `alloc_objects/count` and `alloc_space/bytes`, lock `contentions/count` and `delay/nanoseconds`
(these two without a period: every record has its own weight). Strings, mappings,
functions, locations, stacks and attributes live in the request's shared dictionary, each table with the
zero value at index 0 as the spec asks. A Location's lines are innermost first (the last is the caller
the others were inlined into), a Stack's locations leaf first, as in pprof. Sample attributes:
`thread.name`, `thread.id` and the window's sample labels; lost samples and unknown frames are profile
attributes `pyprof.lost_samples` / `pyprof.unknown_frames`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from pyprof import __version__
from pyprof.errors import UsageError
from pyprof.export.http import Endpoint, Outcome, PostResult
from pyprof.model import (
    EVENT_SAMPLE_TYPES,
    LogicalFrame,
    Mapping,
    PhysicalFrame,
    ProfileData,
    SampleType,
    StackKey,
    display_name,
)
from pyprof.store.labels import WindowLabels

EXPORT_PATH = "/v1development/profiles"
CONTENT_TYPE = "application/x-protobuf"
# The period of an event's Profiles: what one sample of the cpu-clock is worth (cpu, and wall's on-CPU
# samples); alloc and lock records each carry their own weight, so they have none.
PERIOD_TYPES = {"cpu": SampleType("cpu", "nanoseconds"), "wall": SampleType("wall", "nanoseconds")}


def _modules() -> tuple[Any, Any, Any, Any]:
    try:
        from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.profiles.v1development import profiles_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
    except ImportError as e:
        raise UsageError("OTLP export needs the opentelemetry-proto package (pip install "
                         "'opentelemetry-proto>=1.45')") from e
    return profiles_service_pb2, profiles_pb2, common_pb2, resource_pb2


def resource_attributes(labels: WindowLabels) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [("service.name", labels.service_name or "unknown_service"),
                                    ("process.pid", labels.pid)]
    if labels.container_id:
        pairs.append(("container.id", labels.container_id))
    if labels.jdk:
        pairs.append(("process.runtime.name", "HotSpot"))
        pairs.append(("process.runtime.version", labels.jdk))
    if labels.host:
        pairs.append(("host.name", labels.host))
    return pairs


class _Dictionary:
    """The request's ProfilesDictionary, filled as frames are met; every table starts with its zero value."""

    def __init__(self, profiles_pb2: Any, common_pb2: Any) -> None:
        self.pb = profiles_pb2.ProfilesDictionary()
        self.common = common_pb2
        self.pb.string_table.append("")
        for table in (self.pb.mapping_table, self.pb.location_table, self.pb.function_table,
                      self.pb.link_table, self.pb.stack_table, self.pb.attribute_table):
            table.add()
        self._strings: dict[str, int] = {"": 0}
        self._mappings: dict[Mapping, int] = {}
        self._functions: dict[tuple[str, str, str], int] = {}
        self._locations: dict[PhysicalFrame, int] = {}
        self._stacks: dict[tuple[int, ...], int] = {}
        self._attributes: dict[tuple[str, Any], int] = {}

    def string(self, text: str) -> int:
        index = self._strings.get(text)
        if index is None:
            index = self._strings[text] = len(self.pb.string_table)
            self.pb.string_table.append(text.encode("utf-8", "replace").decode("utf-8"))
        return index

    def attribute(self, key: str, value: Any) -> int:
        index = self._attributes.get((key, value))
        if index is None:
            index = self._attributes[(key, value)] = len(self.pb.attribute_table)
            entry = self.pb.attribute_table.add(key_strindex=self.string(key))
            _set_any(entry.value, value)
        return index

    def stack(self, frames: tuple[PhysicalFrame, ...]) -> int:
        locations = tuple(self._location(frame) for frame in frames)
        index = self._stacks.get(locations)
        if index is None:
            index = self._stacks[locations] = len(self.pb.stack_table)
            self.pb.stack_table.add(location_indices=locations)
        return index

    def _location(self, frame: PhysicalFrame) -> int:
        index = self._locations.get(frame)
        if index is None:
            index = self._locations[frame] = len(self.pb.location_table)
            location = self.pb.location_table.add(address=frame.address,
                                                  mapping_index=self._mapping(frame.mapping))
            for logical in frame.frames:   # innermost first; the last line is the caller
                location.lines.add(function_index=self._function(logical), line=max(logical.line, 0))
        return index

    def _mapping(self, mapping: Optional[Mapping]) -> int:
        if mapping is None:
            return 0
        index = self._mappings.get(mapping)
        if index is None:
            index = self._mappings[mapping] = len(self.pb.mapping_table)
            self.pb.mapping_table.add(memory_start=mapping.start, memory_limit=mapping.limit,
                                      file_offset=mapping.offset,
                                      filename_strindex=self.string(mapping.filename))
        return index

    def _function(self, logical: LogicalFrame) -> int:
        key = (display_name(logical), logical.system_name or logical.name, logical.filename)
        index = self._functions.get(key)
        if index is None:
            index = self._functions[key] = len(self.pb.function_table)
            self.pb.function_table.add(name_strindex=self.string(key[0]),
                                       system_name_strindex=self.string(key[1]),
                                       filename_strindex=self.string(key[2]))
        return index


def _set_any(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    else:
        target.string_value = str(value)


def to_request(window: Union[ProfileData, Sequence[ProfileData]], labels: WindowLabels) -> Any:
    """The window (one profile per event) as an ExportProfilesServiceRequest (a protobuf message)."""
    service_pb2, profiles_pb2, common_pb2, resource_pb2 = _modules()
    profiles = [window] if isinstance(window, ProfileData) else list(window)
    dictionary = _Dictionary(profiles_pb2, common_pb2)
    request = service_pb2.ExportProfilesServiceRequest()
    resource_profiles = request.resource_profiles.add()
    for key, value in resource_attributes(labels):
        _set_any(resource_profiles.resource.attributes.add(key=key).value, value)
    scope = resource_profiles.scope_profiles.add()
    scope.scope.name = "pyprof"
    scope.scope.version = __version__
    for profile in profiles:
        for sample_type, weighted in _exported_types(profile):
            _add_profile(scope, dictionary, profile, sample_type, weighted)
    request.dictionary.CopyFrom(dictionary.pb)
    return request


def _exported_types(profile: ProfileData) -> list[tuple[SampleType, bool]]:
    """(sample type, whether its values are the weights) of the Profiles one event becomes: cpu's count
    alone (its nanoseconds are count x period), both types of the others."""
    count_type, weight_type = EVENT_SAMPLE_TYPES[profile.event]
    if profile.event == "cpu":
        return [(count_type, False)]
    return [(count_type, False), (weight_type, True)]


def _add_profile(scope: Any, dictionary: _Dictionary, profile: ProfileData, sample_type: SampleType,
                 weighted: bool) -> None:
    out = scope.profiles.add(time_unix_nano=profile.start_time_ns, duration_nano=profile.duration_ns)
    out.sample_type.type_strindex = dictionary.string(sample_type.type)
    out.sample_type.unit_strindex = dictionary.string(sample_type.unit)
    period_type = PERIOD_TYPES.get(profile.event)
    if period_type is not None:
        out.period_type.type_strindex = dictionary.string(period_type.type)
        out.period_type.unit_strindex = dictionary.string(period_type.unit)
        out.period = profile.period_ns
    out.attribute_indices.extend([dictionary.attribute("pyprof.lost_samples", profile.lost_samples),
                                  dictionary.attribute("pyprof.unknown_frames", profile.unknown_frames)])
    for key in sorted(profile.counts, key=_order):
        value = profile.weight(key) if weighted else profile.counts[key]
        out.samples.add(stack_index=dictionary.stack(key.frames), values=[value],
                        attribute_indices=_sample_attributes(dictionary, key))


def _sample_attributes(dictionary: _Dictionary, key: StackKey) -> list[int]:
    indices = [dictionary.attribute("thread.name", key.thread_name)] if key.thread_name else []
    if key.tid:
        indices.append(dictionary.attribute("thread.id", key.tid))
    indices += [dictionary.attribute(name, value) for name, value in key.labels]
    return indices


def _order(key: StackKey) -> tuple:
    return key.thread_name, key.tid, tuple(frame.address for frame in key.frames), key.labels


def encode_request(window: Union[ProfileData, Sequence[ProfileData]], labels: WindowLabels) -> bytes:
    return to_request(window, labels).SerializeToString()


class OtlpSink:
    """Sends stored windows to one OTLP/HTTP receiver (an OpenTelemetry collector, Pyroscope, ...)."""

    name = "otlp"

    def __init__(self, endpoint: Endpoint) -> None:
        _modules()   # fail at start, not at the first window, when the package is missing
        self.endpoint = endpoint

    def send(self, labels: WindowLabels, pprof: bytes) -> PostResult:
        from pyprof.output.pprof import read_events

        result = self.endpoint.post(EXPORT_PATH, encode_request(read_events(pprof), labels), CONTENT_TYPE)
        if result.outcome is Outcome.SENT:
            return _partial_success(result)
        return result


def _partial_success(result: PostResult) -> PostResult:
    """A 200 whose body says the receiver rejected the profile counts as dropped."""
    service_pb2 = _modules()[0]
    try:
        response = service_pb2.ExportProfilesServiceResponse.FromString(result.body)
    except Exception:  # noqa: BLE001 - a receiver answering 200 with another body still accepted it
        return result
    rejected = response.partial_success.rejected_profiles
    if rejected:
        return PostResult(Outcome.DROP, result.status,
                          f"rejected {rejected} profile(s): {response.partial_success.error_message[:200]}")
    return result
