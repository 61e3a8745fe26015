"""The BPF sampler's records on this machine's kernel (root, BPF), below the session."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pyprof.sampling.sampler import Sampler
from pyprof.sampling.threadnames import ThreadNames

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]

BUSY_THREAD = """
import ctypes, threading, time
def spin():
    ctypes.CDLL(None).prctl(15, b"pyprof-spinner", 0, 0, 0)   # PR_SET_NAME
    end = time.time() + 30
    while time.time() < end:
        pass
threading.Thread(target=spin).start()
"""


def test_a_record_carries_the_threads_name_of_its_time_which_names_it_after_it_exits() -> None:
    # GIVEN a process whose busy thread names itself, sampled by the BPF sampler
    proc = subprocess.Popen([sys.executable, "-c", BUSY_THREAD])
    sampler = Sampler(proc.pid, rate_hz=199)
    try:
        sampler.start()
        samples = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(samples) < 50:
            samples += [s for s in sampler.poll(200) if s.comm.startswith(b"pyprof-spinner")]
    finally:
        sampler.close()
        proc.kill()
        proc.wait()
    # THEN its records carry the name the thread had when it ran (NUL-padded to 16 bytes)
    assert len(samples) >= 50, len(samples)
    assert all(len(s.comm) == 16 and s.comm.rstrip(b"\0") == b"pyprof-spinner" for s in samples)
    # AND once the thread is gone (and never named before), its samples are still named by it
    names = ThreadNames(proc.pid)
    assert names.name(samples[0].tid, samples[0].comm) == "pyprof-spinner"
    assert names.name(samples[0].tid + 1_000_000) == f"tid-{samples[0].tid + 1_000_000}"
