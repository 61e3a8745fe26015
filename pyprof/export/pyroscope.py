"""Grafana Pyroscope push: `POST {base}/push.v1.PusherService/Push` (Connect, protobuf body).

One request per window, one series per profile type in it. A series' labels are `__name__` (the
profile type's name, below), `service_name` and the window's other labels under plain names (`pid`,
`container_id`, `jdk`, `host`: Pyroscope's writers drop `__*` labels other than `__name__` and
`__delta__`); its one sample carries a gzipped pprof. A CPU-only window is sent as stored.

A window of several events (`daemon -e cpu,wall,alloc,lock`) is split into one pprof per event, named
as Pyroscope names the same profiles of a Java process (its JFR ingestion): cpu `process_cpu`
(samples, cpu), wall `wall` (wall_samples, wall), alloc `memory` (alloc_objects, alloc_space), lock
`mutex` for contended monitors and `block` for LockSupport.park (contentions, delay: the `lock` sample
label says which). memory, mutex and block also carry `__delta__=false`: their values are this
window's, not a running total from which the server should take differences (Go's heap and mutex
profiles are totals).
"""

from __future__ import annotations

import re
import uuid
from typing import Optional

from pyprof.export.http import Endpoint, PostResult
from pyprof.export.proto import push_pb2
from pyprof.model import ProfileData
from pyprof.store.labels import WindowLabels

PUSH_PATH = "/push.v1.PusherService/Push"
CONTENT_TYPE = "application/proto"
PROFILE_NAME = "process_cpu"
EVENT_PROFILE_NAMES = {"cpu": PROFILE_NAME, "wall": "wall", "alloc": "memory"}
LOCK_PROFILE_NAMES = {"monitor": "mutex", "park": "block"}   # by the lock sample label's value
DELTA_NAMES = frozenset({"memory", "mutex", "block"})   # told `__delta__=false`: already per window
LOCK_LABEL = "lock"     # pyprof.sampling.lock.LOCK_LABEL
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def series_labels(labels: WindowLabels, profile_name: str = PROFILE_NAME) -> list[tuple[str, str]]:
    """The series' labels, sorted by name (as Pyroscope stores them), no empty value, no duplicate."""
    pairs = [("__name__", profile_name), *labels.items()]
    if profile_name in DELTA_NAMES:
        pairs.append(("__delta__", "false"))
    if not labels.service_name:
        pairs.append(("service_name", "unspecified"))   # Pyroscope refuses an empty service_name
    return sorted((name, value) for name, value in pairs if _LABEL_NAME.fullmatch(name))


def split_profiles(pprof: bytes) -> list[tuple[str, bytes]]:
    """(profile type name, its pprof) for each profile type of a stored window; a CPU-only window is
    its stored bytes as they are."""
    from pyprof.output.pprof import encode, read_events

    events = read_events(pprof)
    if len(events) == 1 and events[0].event == "cpu":
        return [(PROFILE_NAME, pprof)]
    out: list[tuple[str, bytes]] = []
    for profile in events:
        if profile.event == "lock":
            out += [(name, encode(part)) for name, part in _lock_parts(profile) if part.counts]
        elif profile.event in EVENT_PROFILE_NAMES and profile.counts:
            out.append((EVENT_PROFILE_NAMES[profile.event], encode(profile)))
    return out


def _lock_parts(profile: ProfileData) -> list[tuple[str, ProfileData]]:
    """The lock profile as mutex (monitor waits) and block (parks), as Pyroscope's JFR ingestion has them."""
    from dataclasses import replace

    parts = {name: replace(profile, counts={}, weights={}) for name in LOCK_PROFILE_NAMES.values()}
    for key, count in profile.counts.items():
        kind = dict(key.labels).get(LOCK_LABEL, "monitor")
        parts[LOCK_PROFILE_NAMES.get(kind, "mutex")].add(key, count, profile.weights.get(key, 0))
    return list(parts.items())


def encode_push(pprof: bytes, labels: WindowLabels, sample_id: Optional[str] = None) -> bytes:
    """One PushRequest for the window: a series per profile type (one for a CPU-only window)."""
    request = push_pb2.PushRequest()
    for profile_name, data in split_profiles(pprof):
        series = request.series.add()
        for name, value in series_labels(labels, profile_name):
            series.labels.add(name=name, value=value)
        series.samples.add(raw_profile=data, ID=sample_id or str(uuid.uuid4()))
    return request.SerializeToString()


class PyroscopeSink:
    """Sends stored windows (their pprof bytes) to one Pyroscope server."""

    name = "pyroscope"

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def send(self, labels: WindowLabels, pprof: bytes) -> PostResult:
        return self.endpoint.post(PUSH_PATH, encode_push(pprof, labels), CONTENT_TYPE,
                                  {"Connect-Protocol-Version": "1"})
