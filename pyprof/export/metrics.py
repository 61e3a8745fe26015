"""The daemon's own health at `/metrics` (Prometheus text format, prometheus_client).

    pyprof_jvms_tracked                      JVMs being profiled now
    pyprof_samples_total                     samples written into windows
    pyprof_lost_samples_total                samples the kernel dropped (ring buffer full)
    pyprof_lost_records_total{event}         the same, per event (cpu, wall, alloc, lock)
    pyprof_event_samples_total{event}        samples of each event written into windows (count values:
                                             samples, wall_samples, alloc_objects, contentions)
    pyprof_unknown_frame_share               share of frames nobody could name, in the last window (0-1)
    pyprof_windows_written_total             windows written to the store
    pyprof_push_sent_total{backend}          windows a backend accepted
    pyprof_push_errors_total{backend}        failed attempts (retried or rejected)
    pyprof_push_dropped_total{backend,reason} windows given up: rejected (4xx) or overflow (queue bound)
    pyprof_push_queue_depth{backend}         windows waiting for a backend
    pyprof_process_cpu_seconds_total         pyprof's own CPU time
    pyprof_process_resident_memory_bytes     pyprof's own RSS

The delivery figures are read from the queues when scraped (no second set of counters to keep in
step). The server listens on 127.0.0.1 unless an address says otherwise: profiles are not secret here,
but the port is nobody else's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pyprof.errors import UsageError
from pyprof.export.delivery import DeliveryQueue

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464


def parse_listen_address(text: str) -> tuple[str, int]:
    """`PORT`, `:PORT`, `HOST:PORT` or `[IPV6]:PORT`; the host defaults to 127.0.0.1, port 0 is any."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or DEFAULT_HOST
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number < 65536:   # 0: any free port (tests)
        raise UsageError(f"invalid --metrics address {text!r}: expected HOST:PORT, "
                         f"e.g. 127.0.0.1:{DEFAULT_PORT}")
    return host, number


class _QueueCollector(Collector):
    def __init__(self) -> None:
        self.queues: list[DeliveryQueue] = []

    def collect(self) -> Iterator[object]:
        sent = CounterMetricFamily("pyprof_push_sent", "windows a backend accepted", labels=["backend"])
        errors = CounterMetricFamily("pyprof_push_errors", "failed push attempts (retried or rejected)",
                                     labels=["backend"])
        dropped = CounterMetricFamily("pyprof_push_dropped", "windows given up: rejected by the backend "
                                      "(4xx) or dropped at the queue's bound", labels=["backend", "reason"])
        depth = GaugeMetricFamily("pyprof_push_queue_depth", "windows waiting for a backend",
                                  labels=["backend"])
        for queue in self.queues:
            name, c = queue.sink.name, queue.counters
            sent.add_metric([name], c.sent)
            errors.add_metric([name], c.errors)
            dropped.add_metric([name, "rejected"], c.rejected)
            dropped.add_metric([name, "overflow"], c.dropped_overflow)
            depth.add_metric([name], queue.depth)
        yield from (sent, errors, dropped, depth)


@dataclass
class MetricsServer:
    host: str
    port: int
    _server: object

    def close(self) -> None:
        self._server.shutdown()        # type: ignore[attr-defined]
        self._server.server_close()    # type: ignore[attr-defined]


class DaemonMetrics:
    """What the daemon updates; its own registry (nothing from other libraries' default one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jvms_tracked = Gauge("pyprof_jvms_tracked", "JVMs being profiled now", registry=r)
        self.samples = Counter("pyprof_samples", "samples written into windows", registry=r)
        self.lost_samples = Counter("pyprof_lost_samples", "samples the kernel dropped", registry=r)
        self.lost_records = Counter("pyprof_lost_records", "records the kernel dropped (ring buffer full), "
                                    "per event", labelnames=["event"], registry=r)
        self.event_samples = Counter("pyprof_event_samples", "samples of each event written into windows",
                                     labelnames=["event"], registry=r)
        self.unknown_frame_share = Gauge("pyprof_unknown_frame_share",
                                         "share of frames nobody could name, in the last window", registry=r)
        self.windows_written = Counter("pyprof_windows_written", "windows written to the store", registry=r)
        self._queues = _QueueCollector()
        r.register(self._queues)
        ProcessCollector(namespace="pyprof", registry=r)   # pyprof_process_cpu_seconds_total, _rss...

    def record_window(self, samples: int, lost_samples: int, unknown_frames: int, frames: int) -> None:
        """One window written: its samples, the samples lost during it, its unknown and total frames."""
        self.windows_written.inc()
        self.samples.inc(samples)
        self.lost_samples.inc(lost_samples)
        self.unknown_frame_share.set(unknown_frames / frames if frames else 0.0)

    def watch_queue(self, queue: DeliveryQueue) -> None:
        self._queues.queues.append(queue)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, address: Optional[str] = None) -> MetricsServer:
        """Serve /metrics in a background thread at `address` (default 127.0.0.1:9464)."""
        from prometheus_client import start_http_server

        host, port = parse_listen_address(address or f"{DEFAULT_HOST}:{DEFAULT_PORT}")
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} for --metrics: {e.strerror or e}") from e
        return MetricsServer(host, server.server_address[1], server)
