"""The daemon's /metrics (pyprof.export.metrics), scraped over HTTP and parsed as Prometheus would."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyprof.errors import UsageError
from pyprof.export import DeliveryQueue, Endpoint, PyroscopeSink
from pyprof.export.metrics import DaemonMetrics, parse_listen_address
from pyprof.output.pprof import encode
from pyprof.store.labels import WindowLabels
from tests.unit.windows import window


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_are_served_on_localhost_and_follow_the_daemon() -> None:
    # GIVEN metrics with two windows recorded, 3 JVMs, and a delivery queue holding two windows
    metrics = DaemonMetrics()
    metrics.jvms_tracked.set(3)
    metrics.record_window(samples=700, lost_samples=5, unknown_frames=10, frames=1000)
    metrics.record_window(samples=300, lost_samples=0, unknown_frames=1, frames=100)
    with socket.socket() as probe:           # a port where nothing listens: the queue keeps its windows
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    queue = DeliveryQueue(PyroscopeSink(Endpoint(f"http://127.0.0.1:{dead}")))
    labels = WindowLabels("orders", 1)
    queue.submit(labels, encode(window()))
    queue.submit(labels, encode(window()))
    queue.counters.errors = 4
    queue.counters.rejected = 1
    metrics.watch_queue(queue)
    # WHEN it is served with only a port, and scraped
    server = metrics.serve(":0")
    try:
        assert server.host == "127.0.0.1"
        values = scrape(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.close()
    # THEN every figure is there with the daemon's values
    assert values[("pyprof_jvms_tracked", ())] == 3
    assert values[("pyprof_samples_total", ())] == 1000
    assert values[("pyprof_lost_samples_total", ())] == 5
    assert values[("pyprof_windows_written_total", ())] == 2
    assert values[("pyprof_unknown_frame_share", ())] == pytest.approx(0.01)
    assert values[("pyprof_push_queue_depth", (("backend", "pyroscope"),))] == 2
    assert values[("pyprof_push_errors_total", (("backend", "pyroscope"),))] == 4
    assert values[("pyprof_push_dropped_total", (("backend", "pyroscope"), ("reason", "rejected")))] == 1
    assert values[("pyprof_process_resident_memory_bytes", ())] > 10 * 1024 * 1024
    assert values[("pyprof_process_cpu_seconds_total", ())] > 0
    # AND the server is gone once closed
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


def test_listen_address_syntax() -> None:
    assert parse_listen_address("9464") == ("127.0.0.1", 9464)
    assert parse_listen_address(":9464") == ("127.0.0.1", 9464)
    assert parse_listen_address("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_listen_address("[::1]:9100") == ("::1", 9100)
    for bad in ("host:", "host:http", "1:70000"):
        with pytest.raises(UsageError, match="invalid --metrics address"):
            parse_listen_address(bad)


def test_a_busy_port_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UsageError, match="cannot listen on 127.0.0.1"):
            DaemonMetrics().serve(f"127.0.0.1:{taken.getsockname()[1]}")
