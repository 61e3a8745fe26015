"""bcc's compile of a BPF program, run in a short-lived child process.

`import bcc` maps LLVM and clang (~65 MiB) and the compile grows LLVM's heap by ~60 MiB more, none of
which a process gets back: a pyprof that compiled on a cache miss used to stay at ~200 MiB for its whole
life (a daemon started on a new host or after an upgrade: for days). So pyprof.kernel.bpf_loader runs the
compile here, in `python -m pyprof.kernel.bpf_compiler`, and loads what it sends back the way it loads a
cache entry (pyprof.kernel.bpf_direct), without ever importing bcc itself.

Protocol: the request (JSON: text, flags, key) on stdin; the cache entry's bytes (bpf_cache.CacheEntry)
on stdout and exit 0; exit UNCACHEABLE when bcc compiled a module that cannot be replayed from an entry;
any other exit is a failure whose line is on stderr. On anything but exit 0 the parent compiles in its own
process as before, so every error a user can see still comes from one place (bpf_loader._compile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from pyprof.kernel import bpf_cache

UNCACHEABLE = 3
COMPILE_TIMEOUT_S = 300.0      # clang in a slow (emulated) guest takes tens of seconds, not minutes
MAX_ENTRY_BYTES = bpf_cache.MAX_ENTRY_BYTES
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent.parent)


class CompileApart:
    """The outcome of one compile in a child: the entry, or why there is none."""

    def __init__(self, entry: Optional[bpf_cache.CacheEntry], reason: str, stderr: str) -> None:
        self.entry = entry
        self.reason = reason      # "" when entry is set; "uncacheable", or the child's failure
        self.stderr = stderr      # what clang printed (warnings), to pass on when the entry is used


def compile_in_child(text: str, flags: Sequence[str], key: str, environment: dict[str, str]) -> CompileApart:
    """Compile `text` with `flags` in a child process; its entry (checked against `key`), or a reason."""
    env = dict(os.environ)
    env.update(environment)
    # the child must import this very pyprof, installed or run from a source tree
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH", "")) if p)
    request = json.dumps({"text": text, "flags": list(flags), "key": key})
    try:
        done = subprocess.run([sys.executable, "-m", "pyprof.kernel.bpf_compiler"], input=request.encode(),
                              capture_output=True, env=env, timeout=COMPILE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return CompileApart(None, f"compiler process: {e}", "")
    stderr = done.stderr.decode(errors="replace")
    if done.returncode == UNCACHEABLE:
        return CompileApart(None, "uncacheable", stderr)
    if done.returncode != 0 or len(done.stdout) > MAX_ENTRY_BYTES:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {done.returncode}"
        return CompileApart(None, last, stderr)
    try:
        return CompileApart(bpf_cache.CacheEntry.from_bytes(done.stdout, key), "", stderr)
    except (ValueError, KeyError, TypeError) as e:
        return CompileApart(None, f"compiler process sent an unusable entry ({e})", stderr)


def main() -> int:
    from pyprof.kernel.bpf_loader import _compile, _entry_of, close_bpf

    request = json.loads(sys.stdin.buffer.read(MAX_ENTRY_BYTES))
    text, flags, key = request["text"], list(request["flags"]), request["key"]
    bpf = _compile(text=text, cflags=flags)
    try:
        entry = _entry_of(bpf, text, key)
    finally:
        close_bpf(bpf)
    if entry is None:
        return UNCACHEABLE
    sys.stdout.buffer.write(entry.to_bytes())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - one line for the parent, which then compiles itself
        print(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        sys.exit(1)
