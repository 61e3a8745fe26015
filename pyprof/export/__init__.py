"""Delivery of the daemon's windows to backends: Pyroscope push and OTLP/HTTP, behind a bounded queue
with retries, credentials from a file or the environment."""

from pyprof.export.credentials import OTLP_PREFIX, PUSH_PREFIX, Credentials, load_credentials
from pyprof.export.delivery import Backoff, DeliveryCounters, DeliveryQueue
from pyprof.export.http import Endpoint, Outcome, PostResult
from pyprof.export.otlp import OtlpSink
from pyprof.export.pyroscope import PyroscopeSink

__all__ = ["OTLP_PREFIX", "PUSH_PREFIX", "Backoff", "Credentials", "DeliveryCounters", "DeliveryQueue",
           "Endpoint", "OtlpSink", "Outcome", "PostResult", "PyroscopeSink", "load_credentials"]
