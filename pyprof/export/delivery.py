"""Delivery of windows to one backend, off the sampling path.

The daemon calls `submit()` once per window: it only appends to a bounded in-memory queue and never
waits on the network. A worker thread sends the oldest window first; a retryable failure (5xx, 429,
refused connection, timeout) keeps it at the head and waits with exponential backoff (jittered, capped,
`Retry-After` honoured), so windows go out in order once the backend is back; a rejection (other 4xx)
drops that window and counts it. When the queue is over its bound (items or bytes) the oldest window is
dropped and counted: within the bound nothing is lost however long the backend is down (the defaults
hold well over 10 minutes of windows of 20 JVMs; the store keeps every window anyway).

Log lines are per event, not per retry: the first failure of an outage, and the recovery.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from pyprof.export.http import Outcome, PostResult
from pyprof.store.labels import WindowLabels

DEFAULT_MAX_ITEMS = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class Sink(Protocol):
    name: str

    def send(self, labels: WindowLabels, pprof: bytes) -> PostResult: ...


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0
    jitter: float = 0.2      # +-20 %: many daemons restarted together do not retry in step

    def delay(self, failures: int, retry_after_s: Optional[float] = None) -> float:
        base = min(self.initial_s * self.factor ** max(failures - 1, 0), self.max_s)
        base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(base, retry_after_s or 0.0)


@dataclass
class DeliveryCounters:
    submitted: int = 0
    sent: int = 0
    rejected: int = 0          # dropped on the backend's word (4xx)
    dropped_overflow: int = 0  # dropped because the queue was over its bound
    retries: int = 0           # failed attempts that were retried
    errors: int = 0            # every failed attempt: rejected + retried

    @property
    def lost(self) -> int:
        return self.rejected + self.dropped_overflow


@dataclass(frozen=True)
class _Item:
    labels: WindowLabels
    pprof: bytes
    token: Optional[int]     # the store's window id, handed back to on_settled


class DeliveryQueue:
    """A bounded queue and the one thread that empties it into `sink`."""

    def __init__(self, sink: Sink, *, max_items: int = DEFAULT_MAX_ITEMS, max_bytes: int = DEFAULT_MAX_BYTES,
                 backoff: Backoff = Backoff(), log: Callable[[str], None] = lambda line: None,
                 on_settled: Optional[Callable[[int], None]] = None) -> None:
        self.sink = sink
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.backoff = backoff
        self.log = log
        self.on_settled = on_settled    # e.g. store.mark_settled: delivery resumes there after a restart
        self.counters = DeliveryCounters()
        self._items: collections.deque[_Item] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._failures = 0           # consecutive failed attempts of the head item
        self._sending = False        # the worker holds the head item (overflow must not drop it)
        self._thread: Optional[threading.Thread] = None

    # ---- the daemon's side (never blocks on the network) ------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"pyprof-{self.sink.name}", daemon=True)
        self._thread.start()

    def submit(self, labels: WindowLabels, pprof: bytes, token: Optional[int] = None) -> None:
        """Queue one window (never blocks); `token` (the store's window id) goes to on_settled once the
        window was sent or given up."""
        with self._cond:
            self._items.append(_Item(labels, pprof, token))
            self._bytes += len(pprof)
            self.counters.submitted += 1
            self._enforce_bound()
            self._cond.notify()

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._items)

    def close(self, flush_timeout_s: float = 5.0) -> int:
        """Stop the worker after at most `flush_timeout_s` of trying to empty the queue; returns how many
        windows were left unsent (the store still has them)."""
        deadline = time.monotonic() + flush_timeout_s
        with self._cond:
            while self._items and self._thread is not None and time.monotonic() < deadline \
                    and self._failures == 0:
                self._cond.wait(min(0.1, max(deadline - time.monotonic(), 0)))
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(deadline - time.monotonic(), 0) + self.sink_timeout())
        return self.depth

    def sink_timeout(self) -> float:
        endpoint = getattr(self.sink, "endpoint", None)
        return float(getattr(endpoint, "timeout_s", 10.0)) + 1.0

    def _enforce_bound(self) -> None:
        # Never the head while it is being sent: the worker pops it itself (its identity is kept).
        while len(self._items) > 1 and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
            dropped = self._items[1] if self._sending else self._items[0]
            self._items.remove(dropped)
            self._bytes -= len(dropped.pprof)
            self.counters.dropped_overflow += 1
            if self.counters.dropped_overflow == 1 or self.counters.dropped_overflow % 100 == 0:
                self.log(f"{self.sink.name}: queue over its bound, dropped the oldest window "
                         f"({self.counters.dropped_overflow} so far)")

    # ---- the worker ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item = self._items[0]
                self._sending = True
            try:
                result = self.sink.send(item.labels, item.pprof)
            except Exception as e:  # noqa: BLE001 - an encoder bug must not kill delivery for good
                result = PostResult(Outcome.DROP, 0, f"internal error: {type(e).__name__}: {e}")
            delay = self._settle(item, result)
            if not delay and item.token is not None and self.on_settled is not None:
                self._report_settled(item.token)
            if delay:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, timeout=delay)

    def _report_settled(self, token: int) -> None:
        assert self.on_settled is not None
        try:
            self.on_settled(token)
        except Exception as e:  # noqa: BLE001 - a full disk must not stop delivery; the mark only lags
            self.log(f"{self.sink.name}: cannot record delivery progress: {type(e).__name__}: {e}")

    def _settle(self, item: _Item, result: PostResult) -> float:
        """Update the queue and counters for one attempt; the time to wait before the next one."""
        with self._cond:
            self._sending = False
            if result.outcome is Outcome.RETRY:
                self._failures += 1
                self.counters.retries += 1
                self.counters.errors += 1
                if self._failures == 1:
                    self.log(f"{self.sink.name}: push failed ({result.detail}); retrying with backoff, "
                             f"{len(self._items)} window(s) queued")
                return self.backoff.delay(self._failures, result.retry_after_s)
            if self._items and self._items[0] is item:
                self._items.popleft()
                self._bytes -= len(item.pprof)
            if result.outcome is Outcome.DROP:
                self.counters.rejected += 1
                self.counters.errors += 1
                self.log(f"{self.sink.name}: window of {item.labels.service_name} (pid {item.labels.pid}) "
                         f"rejected, dropped: {result.detail}")
            else:
                self.counters.sent += 1
                if self._failures:
                    self.log(f"{self.sink.name}: push recovered after {self._failures} failed attempt(s)")
            self._failures = 0
            self._cond.notify_all()
            return 0.0
