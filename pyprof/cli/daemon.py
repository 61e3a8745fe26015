"""`pyprof daemon`: continuous profiling of every JVM on the host (containers included) to a local store,
and optionally to Pyroscope (push) and OpenTelemetry (OTLP/HTTP). Runs in the foreground (systemd and
container runtimes manage it); SIGTERM and SIGINT write the open windows and exit 0."""

from __future__ import annotations

from typing import Optional

import click

from pyprof.cli.common import (
    allow_unsafe_kernel_option,
    event_tuning,
    event_tuning_options,
    parse_events_option,
    require_privileges,
)
from pyprof.errors import UsageError

DEFAULT_OUT = "/var/lib/pyprof"


def _queue(kind: str, url: str, credentials_file: Optional[str], ca: Optional[str], log, store):
    from pyprof.export import (
        OTLP_PREFIX,
        PUSH_PREFIX,
        DeliveryQueue,
        Endpoint,
        OtlpSink,
        PyroscopeSink,
        load_credentials,
    )

    prefix = PUSH_PREFIX if kind == "push" else OTLP_PREFIX
    endpoint = Endpoint(url, load_credentials(credentials_file, prefix), ca_file=ca)
    sink = PyroscopeSink(endpoint) if kind == "push" else OtlpSink(endpoint)
    return DeliveryQueue(sink, log=log, on_settled=lambda window_id: store.mark_settled(sink.name, window_id))


def daemon_events(text: str) -> tuple[str, ...]:
    """`-e cpu,alloc` for the daemon: attach's events except offcpu (wall has it, by thread_state)."""
    from pyprof.daemon.host import DAEMON_EVENTS

    events = parse_events_option(text)
    for event in events:
        if event not in DAEMON_EVENTS:
            raise UsageError(f"-e {event}: the daemon profiles {', '.join(DAEMON_EVENTS)} "
                             "(off-CPU time is in wall, labelled thread_state)")
    return events


def _log_missing_optional(daemon_loop) -> None:
    """One line per optional capability the daemon runs without, and what it does instead."""
    from pyprof.procfs import capabilities

    for use in capabilities.USES:
        if not use.required and not capabilities.has(use.capability):
            daemon_loop.log("capability-missing", capability=use.capability, without=use.without)


@click.command("daemon")
@click.option("--out", "out", type=click.Path(file_okay=False), default=DEFAULT_OUT, show_default=True,
              help="the local store (created 0700): one pprof per JVM per window and an index")
@click.option("--interval", type=click.FloatRange(min=1.0), default=15.0, show_default=True,
              help="seconds per window")
@click.option("-r", "--rate", type=click.IntRange(1, 1000), default=49, show_default=True,
              help="samples per second per CPU")
@click.option("--pid", "pids", type=int, multiple=True, help="only these JVMs (repeat; default: all)")
@click.option("--match", default=None, metavar="REGEX", help="only JVMs whose command line matches")
@click.option("--exclude", default=None, metavar="REGEX", help="not the JVMs whose command line matches")
@click.option("--service", "services", multiple=True, metavar="REGEX=NAME",
              help="service_name NAME for JVMs whose command line matches REGEX (repeat; first match wins)")
@click.option("--retention", default="10GiB,7d", show_default=True, metavar="SIZE,AGE",
              help="delete the oldest windows beyond this total size and this age")
@click.option("--push", "push_url", default=None, metavar="URL", help="also push every window to Pyroscope")
@click.option("--push-credentials", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Pyroscope credentials file (else PYPROF_PUSH_USERNAME/_PASSWORD/_TOKEN/_TENANT)")
@click.option("--otlp", "otlp_url", default=None, metavar="URL",
              help="also export every window over OTLP/HTTP")
@click.option("--otlp-credentials", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="OTLP credentials file (else PYPROF_OTLP_USERNAME/_PASSWORD/_TOKEN/_TENANT)")
@click.option("--ca", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="CA bundle for https (default: the system's)")
@click.option("--metrics", "metrics_address", default=None, metavar="HOST:PORT",
              help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST defaults to 127.0.0.1)")
@click.option("--stack-bytes", type=click.IntRange(1024, 65536), default=32768, show_default=True,
              help="bytes of user stack copied per sample")
@click.option("-e", "--event", "events_text", default="cpu", show_default=True, metavar="EVENTS",
              help="what to profile in every JVM, comma-separated: cpu, wall (on-CPU + off-CPU time per "
                   "thread), alloc (allocated bytes and objects by class), lock (contended monitors and "
                   "parking); a window holds every event's sample types (the first is the default)")
@event_tuning_options
@allow_unsafe_kernel_option
def daemon(out: str, interval: float, rate: int, pids: tuple[int, ...], match: Optional[str],
           exclude: Optional[str], services: tuple[str, ...], retention: str, push_url: Optional[str],
           push_credentials: Optional[str], otlp_url: Optional[str], otlp_credentials: Optional[str],
           ca: Optional[str], metrics_address: Optional[str], stack_bytes: int, events_text: str,
           wall_interval: Optional[float], alloc_interval: int, lock_threshold: float, force: bool) -> None:
    """Profile every JVM on this host, continuously, one window per JVM every --interval seconds."""
    from pyprof.daemon.host import HostProfiler
    from pyprof.daemon.run import Daemon
    from pyprof.daemon.sinks import StoreSink
    from pyprof.discovery.cmdline import Selection, ServiceRule
    from pyprof.discovery.scanner import JvmScanner
    from pyprof.sampling.programs import EventOptions
    from pyprof.session.runloop import StopSignals
    from pyprof.store.store import Retention, Store

    events = daemon_events(events_text)
    event_options = EventOptions(rate_hz=rate, **event_tuning(wall_interval, alloc_interval, lock_threshold))
    rules = tuple(ServiceRule.parse(text) for text in services)
    selection = Selection.parse(pids, match, exclude)
    retention_rule = Retention.parse(retention)
    require_privileges(host_wide=True)
    store = Store.open(out, retention_rule)
    host = HostProfiler(rate_hz=rate, stack_bytes=stack_bytes, force=force, events=events,
                        event_options=event_options)
    daemon_loop = Daemon(host, JvmScanner(selection, rules), [], interval_s=interval)
    queues = []
    for kind, url, creds in (("push", push_url, push_credentials), ("otlp", otlp_url, otlp_credentials)):
        if url:
            if not url.startswith(("http://", "https://")):
                raise UsageError(f"--{kind} {url}: expected an http:// or https:// URL")
            queues.append(_queue(kind, url, creds, ca,
                                 lambda line, kind=kind: daemon_loop.log(f"{kind}", message=line), store))
    _log_missing_optional(daemon_loop)
    store_sink = StoreSink(store, queues)
    daemon_loop.sinks.append(store_sink)
    resumed = store_sink.resume()
    if resumed:
        daemon_loop.log("push-resumed", windows=resumed, note="not delivered before the last stop")
    server = None
    if metrics_address:
        from pyprof.export.metrics import DaemonMetrics

        daemon_loop.metrics = DaemonMetrics()
        for queue in queues:
            daemon_loop.metrics.watch_queue(queue)
        server = daemon_loop.metrics.serve(metrics_address)
        daemon_loop.log("metrics", url=f"http://{server.host}:{server.port}/metrics")
    for queue in queues:
        queue.start()
    try:
        with StopSignals() as stop:
            why = daemon_loop.run(stop)
    finally:
        for queue in queues:
            unsent = queue.close()
            if unsent:
                daemon_loop.log("push-unsent", sink=queue.sink.name, windows=unsent, note="kept in the store")
        store.close()
        if server is not None:
            server.close()
    daemon_loop.log("exit", reason=why)


COMMANDS = [daemon]
