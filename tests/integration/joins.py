"""Checks of unwound Java stacks against the callers a workload's source allows (a wrong join: a frame
placed under a method that never calls it)."""

from __future__ import annotations

from collections import Counter

from pyprof.model import FrameKind, StackKey

JAVA_KINDS = (FrameKind.INTERPRETED, FrameKind.C1, FrameKind.C2, FrameKind.INLINED, FrameKind.NATIVE_METHOD)


def java_names(key: StackKey) -> list[str]:
    """The Java methods of a stack, leaf first (inlined frames included)."""
    return [lf.name for pf in key.frames for lf in pf.frames if lf.kind in JAVA_KINDS]


def wrong_callers(samples: dict[StackKey, int], allowed: dict[str, set[str]]) -> Counter:
    """`callee <- caller` -> samples, for every adjacent pair whose caller the source does not allow."""
    bad: Counter = Counter()
    for key, n in samples.items():
        names = java_names(key)
        for callee, caller in zip(names, names[1:]):
            if callee in allowed and caller not in allowed[callee]:
                bad[f"{callee} <- {caller}"] += n
    return bad
