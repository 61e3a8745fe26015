"""Folded stacks (Brendan Gregg's collapsed format), the input of flamegraph.pl, speedscope, inferno...

One line per distinct stack: frames root first, `;`-separated, then a space and the sample count.
- The root frame is the thread's name, as with async-profiler's `--threads`, so a flame graph splits by
  thread first (`[tid=N]` for a thread without a name; no root frame when the profile has no thread
  information at all, e.g. one read from a Go pprof file).
- A compiled frame's inlining chain is expanded into one frame per Java method.
- Names carry the JIT tier (`java.util.HashMap.get [C2]`) unless `tiers` is off.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

from pyprof.model import PhysicalFrame, ProfileData, StackKey, display_name

# `;` separates frames and a newline ends the line, so neither may appear inside a frame name.
_UNSAFE = str.maketrans({";": ":", "\n": " ", "\r": " "})


def thread_frame(key: StackKey) -> Optional[str]:
    """The synthetic root frame for the sample's thread, None when the sample names no thread."""
    if key.thread_name:
        return key.thread_name
    return f"[tid={key.tid}]" if key.tid else None


def stack_line(key: StackKey, tiers: bool = True, cache: Optional[dict[int, str]] = None) -> str:
    """The frames of one stack, root first, without the count.

    `cache` maps id(PhysicalFrame) to its rendered text; pass one dict for a whole profile (whose frames
    stay alive meanwhile): stacks share frame objects, and rendering each only once is most of the cost.
    """
    if cache is None:
        cache = {}
    root = thread_frame(key)
    parts = [root.translate(_UNSAFE)] if root is not None else []
    for physical in reversed(key.frames):          # key.frames is leaf first
        text = cache.get(id(physical))
        if text is None:
            text = cache[id(physical)] = _physical_text(physical, tiers)
        parts.append(text)
    return ";".join(parts)


def _physical_text(physical: PhysicalFrame, tiers: bool) -> str:
    # an inlining chain is innermost first; root-first output wants the caller first
    return ";".join(display_name(logical, tiers).translate(_UNSAFE) for logical in reversed(physical.frames))


def render(profile: ProfileData, tiers: bool = True) -> str:
    """The whole profile as folded text, lines sorted (the usual order for diffing and for tools)."""
    # Stacks that differ only in what the format drops (addresses, line numbers, tiers) become one line.
    lines: Counter[str] = Counter()
    cache: dict[int, str] = {}
    for key, count in profile.counts.items():
        if count > 0:
            lines[stack_line(key, tiers, cache)] += count
    return "".join(f"{line} {count}\n" for line, count in sorted(lines.items()))
