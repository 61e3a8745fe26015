"""Grafana Pyroscope push: `POST {base}/push.v1.PusherService/Push` (Connect, protobuf body).

One request per window: one series whose labels are `__name__=process_cpu`, `service_name` and the
window's other labels under plain names (`pid`, `container_id`, `jdk`, `host`: Pyroscope's writers
drop `__*` labels other than `__name__`), and one sample carrying the window's gzipped pprof as is.
"""

from __future__ import annotations

import re
import uuid
from typing import Optional

from pyprof.export.http import Endpoint, PostResult
from pyprof.export.proto import push_pb2
from pyprof.store.labels import WindowLabels

PUSH_PATH = "/push.v1.PusherService/Push"
CONTENT_TYPE = "application/proto"
PROFILE_NAME = "process_cpu"
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def series_labels(labels: WindowLabels) -> list[tuple[str, str]]:
    """The series' labels, sorted by name (as Pyroscope stores them), no empty value, no duplicate."""
    pairs = [("__name__", PROFILE_NAME), *labels.items()]
    if not labels.service_name:
        pairs.append(("service_name", "unspecified"))   # Pyroscope refuses an empty service_name
    return sorted((name, value) for name, value in pairs if _LABEL_NAME.fullmatch(name))


def encode_push(pprof: bytes, labels: WindowLabels, sample_id: Optional[str] = None) -> bytes:
    request = push_pb2.PushRequest()
    series = request.series.add()
    for name, value in series_labels(labels):
        series.labels.add(name=name, value=value)
    series.samples.add(raw_profile=pprof, ID=sample_id or str(uuid.uuid4()))
    return request.SerializeToString()


class PyroscopeSink:
    """Sends stored windows (their pprof bytes) to one Pyroscope server."""

    name = "pyroscope"

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def send(self, labels: WindowLabels, pprof: bytes) -> PostResult:
        return self.endpoint.post(PUSH_PATH, encode_push(pprof, labels), CONTENT_TYPE,
                                  {"Connect-Protocol-Version": "1"})
