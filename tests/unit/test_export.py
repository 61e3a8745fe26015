"""Delivery (pyprof.export): what is sent to Pyroscope and to an OTLP receiver, decoded with the protobuf
definitions, and how each server answer (200, 400, 429, 500, slow, refused) is handled."""

from __future__ import annotations

import base64
import gzip
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2

from pyprof.errors import UsageError
from pyprof.export import (
    Backoff,
    DeliveryQueue,
    Endpoint,
    OtlpSink,
    Outcome,
    PyroscopeSink,
    load_credentials,
)
from pyprof.export.credentials import Credentials
from pyprof.export.proto import push_pb2
from pyprof.model import display_name
from pyprof.output.pprof import encode, read_pprof
from pyprof.output.proto import profile_pb2
from pyprof.store.labels import WindowLabels
from tests.conftest import ROOT, require
from tests.unit.receiver import Answer, Receiver, wait_until
from tests.unit.windows import COPY, HOT, PERIOD_NS, T0, WINDOW_NS, window

LABELS = WindowLabels("orders", 4242, "ab" * 32, "21.0.8+9-LTS", "host-a")
FAST = Backoff(initial_s=0.02, factor=2.0, max_s=0.1, jitter=0.0)
PROMETHEUS_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def pprof_of(i: int = 0) -> bytes:
    return encode(window(T0 + i * WINDOW_NS, hot=30 + i, copy=10))


def queue(sink, **kw) -> DeliveryQueue:
    q = DeliveryQueue(sink, backoff=kw.pop("backoff", FAST), **kw)
    q.start()
    return q


def pushed(received) -> push_pb2.PushRequest:
    return push_pb2.PushRequest.FromString(received.body)


# ---- Pyroscope ----------------------------------------------------------------------------------------

def test_pyroscope_push_is_a_connect_call_with_labels_and_the_pprof(tmp_path: Path) -> None:
    creds_file = tmp_path / "creds"
    creds_file.write_text("# Grafana Cloud\nusername=123456\npassword=glc_secret\ntenant=team-a\n")
    with Receiver() as server:
        endpoint = Endpoint(server.url + "/", load_credentials(str(creds_file), "PYPROF_PUSH"))
        q = queue(PyroscopeSink(endpoint))
        q.submit(LABELS, pprof_of())
        assert wait_until(lambda: q.counters.sent == 1)
        q.close()
    [request] = server.requests
    assert request.path == "/push.v1.PusherService/Push"
    assert request.headers["content-type"] == "application/proto"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"123456:glc_secret").decode()
    assert request.headers["x-scope-orgid"] == "team-a"
    body = pushed(request)
    [series] = body.series
    labels = [(label.name, label.value) for label in series.labels]
    assert labels == [("__name__", "process_cpu"), ("container_id", "ab" * 32), ("host", "host-a"),
                      ("jdk", "21.0.8+9-LTS"), ("pid", "4242"), ("service_name", "orders")]
    # what Pyroscope validates: Prometheus-like names, no duplicates
    assert all(PROMETHEUS_LABEL.fullmatch(name) for name, _ in labels)
    assert len({name for name, _ in labels}) == len(labels)
    [sample] = series.samples
    uuid.UUID(sample.ID)
    profile = read_pprof(sample.raw_profile)
    assert profile.counts == {HOT: 30, COPY: 10} and profile.period_ns == PERIOD_NS
    # what Pyroscope validates in the pprof: sample type names without '-', no location/function id 0
    pb = profile_pb2.Profile.FromString(gzip.decompress(sample.raw_profile))
    assert all("-" not in pb.string_table[t.type] for t in pb.sample_type)
    assert all(loc.id for loc in pb.location) and all(f.id for f in pb.function)
    assert all(line.function_id for loc in pb.location for line in loc.line)


def test_server_answers_decide_retry_or_drop() -> None:
    # GIVEN a server answering 500, 429 (Retry-After), a hang-up, then 200; then 400 for the next window
    script = [Answer(500, b"ingester unavailable"), Answer(429, headers=(("Retry-After", "0"),)),
              Answer(hang_up=True), Answer(200), Answer(400, b"invalid labels")]
    lines: list[str] = []
    with Receiver(script=script) as server:
        q = queue(PyroscopeSink(Endpoint(server.url)), log=lines.append)
        q.submit(LABELS, pprof_of(0))
        q.submit(LABELS, pprof_of(1))
        q.submit(LABELS, pprof_of(2))
        # THEN the first is retried until delivered, the second dropped and counted, the third sent
        assert wait_until(lambda: q.counters.sent == 2 and q.counters.rejected == 1)
        q.close()
    c = q.counters
    assert (c.submitted, c.sent, c.rejected, c.retries, c.errors, c.dropped_overflow) == (3, 2, 1, 3, 4, 0)
    bodies = [pushed(r).series[0].samples[0].raw_profile for r in server.requests]
    assert [read_pprof(b).counts[HOT] for b in bodies] == [30, 30, 30, 30, 31, 32]
    # AND the log has one line per event: the failure, the recovery, the rejection (not one per retry)
    assert len(lines) == 3, lines
    assert "push failed (HTTP 500: ingester unavailable)" in lines[0]
    assert "recovered after 3 failed attempt(s)" in lines[1]
    assert "rejected, dropped: HTTP 400: invalid labels" in lines[2]


def test_slow_server_times_out_and_is_retried() -> None:
    with Receiver(script=[Answer(delay_s=1.0)]) as server:
        q = queue(PyroscopeSink(Endpoint(server.url, timeout_s=0.3)))
        q.submit(LABELS, pprof_of())
        assert wait_until(lambda: q.counters.sent == 1)
        q.close()
    assert q.counters.retries == 1 and len(server.requests) == 2


def test_backend_down_then_back_loses_nothing_within_the_bound() -> None:
    # GIVEN a port where nothing listens (connection refused)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    q = queue(PyroscopeSink(Endpoint(f"http://127.0.0.1:{port}")), max_items=50)
    # WHEN 30 windows are produced while it is down (submit never waits for the network)
    for i in range(30):
        q.submit(LABELS, pprof_of(i))
    assert wait_until(lambda: q.counters.retries >= 3)
    assert q.depth == 30 and q.counters.sent == 0
    # AND the backend comes back on that port
    with Receiver(port=port) as server:
        assert wait_until(lambda: q.counters.sent == 30, timeout_s=20)
        q.close()
    # THEN every window arrived, once, in order
    hot = [read_pprof(pushed(r).series[0].samples[0].raw_profile).counts[HOT] for r in server.requests]
    assert hot == [30 + i for i in range(30)]
    assert q.counters.lost == 0


def test_queue_over_its_bound_drops_the_oldest_and_counts_them() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    q = DeliveryQueue(PyroscopeSink(Endpoint(f"http://127.0.0.1:{port}")), max_items=5, backoff=FAST)
    for i in range(8):   # not started: nothing leaves the queue
        q.submit(LABELS, pprof_of(i))
    assert q.depth == 5 and q.counters.dropped_overflow == 3 and q.counters.lost == 3
    size = len(pprof_of(0))
    q2 = DeliveryQueue(PyroscopeSink(Endpoint(f"http://127.0.0.1:{port}")), max_bytes=3 * size + 10)
    for _ in range(6):
        q2.submit(LABELS, pprof_of(0))
    assert q2.depth == 3 and q2.counters.dropped_overflow == 3


# ---- OTLP ---------------------------------------------------------------------------------------------

def _attrs(dictionary, indices) -> dict:
    out = {}
    for i in indices:
        kv = dictionary.attribute_table[i]
        value = kv.value
        out[dictionary.string_table[kv.key_strindex]] = getattr(value, value.WhichOneof("value"))
    return out


def test_otlp_export_decodes_to_the_same_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYPROF_OTLP_TOKEN", "s3cr3t")
    answer = profiles_service_pb2.ExportProfilesServiceResponse().SerializeToString()
    with Receiver(default=Answer(200, answer)) as server:
        q = queue(OtlpSink(Endpoint(server.url, load_credentials(None, "PYPROF_OTLP"))))
        q.submit(LABELS, pprof_of())
        assert wait_until(lambda: q.counters.sent == 1)
        q.close()
    [request] = server.requests
    assert request.path == "/v1development/profiles"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["authorization"] == "Bearer s3cr3t"
    body = profiles_service_pb2.ExportProfilesServiceRequest.FromString(request.body)
    d = body.dictionary
    strings = d.string_table
    assert strings[0] == ""
    [rp] = body.resource_profiles
    resource = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in rp.resource.attributes}
    assert resource["service.name"] == "orders" and resource["process.pid"] == 4242
    assert resource["container.id"] == "ab" * 32 and resource["process.runtime.version"] == "21.0.8+9-LTS"
    [profile] = rp.scope_profiles[0].profiles
    assert (strings[profile.sample_type.type_strindex], strings[profile.sample_type.unit_strindex]) == \
        ("samples", "count")
    assert (strings[profile.period_type.type_strindex], strings[profile.period_type.unit_strindex],
            profile.period) == ("cpu", "nanoseconds", PERIOD_NS)
    assert (profile.time_unix_nano, profile.duration_nano) == (T0, WINDOW_NS)
    # every sample's stack, rebuilt from the dictionary, leaf first, inlined functions innermost first
    decoded = {}
    for sample in profile.samples:
        names = []
        for location_index in d.stack_table[sample.stack_index].location_indices:
            for line in d.location_table[location_index].lines:
                names.append(strings[d.function_table[line.function_index].name_strindex])
        attrs = _attrs(d, sample.attribute_indices)
        decoded[(tuple(names), attrs["thread.name"], attrs["thread.id"])] = sample.values[0]
    expected = {}
    for key, count in ((HOT, 30), (COPY, 10)):
        names = tuple(display_name(f) for frame in key.frames for f in frame.frames)
        expected[(names, key.thread_name, key.tid)] = count
    assert decoded == expected
    copy_sample = next(s for s in profile.samples if s.values[0] == 10)
    assert _attrs(d, copy_sample.attribute_indices)["span"] == "checkout"
    memcpy_location = d.location_table[d.stack_table[copy_sample.stack_index].location_indices[0]]
    assert strings[d.mapping_table[memcpy_location.mapping_index].filename_strindex].endswith("libc.so.6")
    for table in (d.mapping_table, d.location_table, d.function_table, d.link_table, d.stack_table,
                  d.attribute_table):
        assert table[0] == type(table[0])()     # index 0 of every table: the zero value


def test_otlp_partial_success_counts_as_rejected() -> None:
    answer = profiles_service_pb2.ExportProfilesServiceResponse()
    answer.partial_success.rejected_profiles = 1
    answer.partial_success.error_message = "too old"
    with Receiver(default=Answer(200, answer.SerializeToString())) as server:
        result = OtlpSink(Endpoint(server.url)).send(LABELS, pprof_of())
    assert result.outcome is Outcome.DROP and "too old" in result.detail


# ---- credentials and TLS ------------------------------------------------------------------------------

def test_credentials_come_from_a_file_or_the_environment_never_the_url(tmp_path: Path) -> None:
    env = {"PYPROF_PUSH_USERNAME": "u", "PYPROF_PUSH_PASSWORD": "p", "PYPROF_PUSH_TENANT": "t"}
    creds = load_credentials(None, "PYPROF_PUSH", env)
    assert creds == Credentials("u", "p", "", "t")
    assert "p" not in repr(creds).replace("tenant", "").replace("Credentials", "")
    both = tmp_path / "both"
    both.write_text("token=x\nusername=u\n")
    with pytest.raises(UsageError, match="not both"):
        load_credentials(str(both), "PYPROF_PUSH")
    bad = tmp_path / "bad"
    bad.write_text("password hunter2\n")
    with pytest.raises(UsageError, match="line 1") as e:
        load_credentials(str(bad), "PYPROF_PUSH")
    assert "hunter2" not in str(e.value)
    with pytest.raises(UsageError, match="credentials in the URL"):
        Endpoint("https://user:secret@pyroscope.example:4040")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    require(openssl is not None, "openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([str(openssl), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_trusts_the_system_bundle_or_only_the_given_ca(tmp_path: Path) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with Receiver(tls=tls) as server:
        # an unknown CA: the handshake fails, which is retried (the operator may fix the server)
        refused = PyroscopeSink(Endpoint(server.url)).send(LABELS, pprof_of())
        assert refused.outcome is Outcome.RETRY and "TLS" in refused.detail
        # --ca FILE: trusted
        ok = PyroscopeSink(Endpoint(server.url, ca_file=str(cert))).send(LABELS, pprof_of())
        assert ok.outcome is Outcome.SENT
    assert len(server.requests) == 1
    with pytest.raises(UsageError, match="cannot load CA file"):
        Endpoint("https://127.0.0.1:1", ca_file=str(tmp_path / "missing.pem"))


def test_redirects_are_not_followed() -> None:
    with Receiver(default=Answer(307, headers=(("Location", "http://127.0.0.1:1/elsewhere"),))) as server:
        result = PyroscopeSink(Endpoint(server.url)).send(LABELS, pprof_of())
    assert result.outcome is Outcome.DROP and result.status == 307


def test_push_pb2_is_what_protoc_makes_of_push_proto(tmp_path: Path) -> None:
    protoc = shutil.which("protoc")
    require(protoc is not None, "protoc (Debian protobuf-compiler) is needed to check generated code")
    proto_dir = ROOT / "pyprof" / "export" / "proto"
    shutil.copy(proto_dir / "push.proto", tmp_path)
    subprocess.run([str(protoc), "--python_out=.", "push.proto"], cwd=tmp_path, check=True, timeout=60)
    assert (tmp_path / "push_pb2.py").read_bytes() == (proto_dir / "push_pb2.py").read_bytes()


def test_delivery_resumes_after_a_restart_from_the_stores_mark(tmp_path) -> None:
    from pyprof.store import Store

    store = Store.open(tmp_path / "s")
    store.start_delivery("pyroscope")
    rows = [store.write_window(window(T0 + i * WINDOW_NS, hot=30 + i), LABELS) for i in range(5)]
    # GIVEN a daemon that delivered two windows, then stopped with three still queued (backend down)
    with Receiver() as server:
        q = queue(PyroscopeSink(Endpoint(server.url)),
                  on_settled=lambda i: store.mark_settled("pyroscope", i))
        for row in rows[:2]:
            q.submit(row.labels, store.read_bytes(row), row.id)
        assert wait_until(lambda: q.counters.sent == 2)
        q.close()
    assert [w.id for w in store.undelivered("pyroscope")] == [r.id for r in rows[2:]]
    store.close()
    # WHEN it restarts: THEN the windows not yet settled are the ones it queues again, in order
    with Store.open(tmp_path / "s") as again, Receiver() as server:
        q = queue(PyroscopeSink(Endpoint(server.url)),
                  on_settled=lambda i: again.mark_settled("pyroscope", i))
        for row in again.undelivered("pyroscope"):
            q.submit(row.labels, again.read_bytes(row), row.id)
        assert wait_until(lambda: q.counters.sent == 3)
        q.close()
        assert again.undelivered("pyroscope") == []
        assert again.undelivered("otlp") == []     # a backend never started gets nothing old
    hot = [read_pprof(pushed(r).series[0].samples[0].raw_profile).counts[HOT] for r in server.requests]
    assert hot == [32, 33, 34]
