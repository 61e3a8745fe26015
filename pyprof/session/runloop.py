"""Running until stopped: the one loop behind attach, record, top, `codecache watch` and the agent commands.

A run ends for one of four reasons, all handled the same way by every command: its duration is over,
SIGINT (Ctrl-C) or SIGTERM arrived, the target exited, or the command's own step said so (`top`'s `q`).
Signals only set a flag: the loop ends at its next step, so the caller can still drain and write what it
has (a profile is never lost to a signal in the middle of a write).
"""

from __future__ import annotations

import signal
import time
from typing import Any, Callable, Optional

DURATION = "duration"
TARGET_EXITED = "target exited"
CHECK_INTERVAL_S = 0.25   # how often the target's liveness is looked at (a /proc read)


class StopSignals:
    """While active, SIGTERM and SIGINT set `reason` ("SIGTERM", "SIGINT") instead of killing us."""

    def __init__(self) -> None:
        self.reason = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def run_until_stopped(step: Callable[[], Optional[str]], stop: StopSignals, *,
                      duration: Optional[float] = None,
                      target_alive: Optional[Callable[[], bool]] = None,
                      on_check: Optional[Callable[[float], None]] = None) -> str:
    """Call `step` (which waits up to ~0.1-0.2 s for work) until the run ends; returns why it ended.

    `step` returns a reason to end (e.g. "q") or None. `target_alive` and `on_check` (given the seconds
    since the start; progress lines use it) are called every CHECK_INTERVAL_S, not on every step."""
    started = time.monotonic()
    deadline = None if duration is None else started + duration
    last_check = started
    while True:
        if stop.reason:
            return stop.reason
        if deadline is not None and time.monotonic() >= deadline:
            return DURATION
        why = step()
        if why:
            return why
        now = time.monotonic()
        if now - last_check >= CHECK_INTERVAL_S:
            last_check = now
            if target_alive is not None and not target_alive():
                return TARGET_EXITED
            if on_check is not None:
                on_check(now - started)
