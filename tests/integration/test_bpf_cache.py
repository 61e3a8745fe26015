"""The compiled-BPF cache with real eBPF and real JVMs: a start from the cache profiles as a compiled one
does (without bcc's memory), a damaged entry or one the kernel refuses is compiled again, and a changed
program is never served from an old entry."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import pytest

from pyprof.errors import MissingKernelFeature
from pyprof.kernel import bpf_cache, bpf_loader
from pyprof.kernel.bpf_direct import DirectBpf
from pyprof.output.pprof import read_pprof
from tests.conftest import pyprof
from tests.integration.test_attach import EXPECTED, phase_shares

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]

SHARE_TOLERANCE = 12.0     # points of a phase's share: >= 3 standard errors at 100 samples
RSS_GOAL_MIB = 120         # issue 12: RSS after start-up


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    d = tmp_path / "bpf-cache"
    monkeypatch.setenv(bpf_cache.CACHE_ENV, str(d))   # inherited by the pyprof subprocesses
    return d


def attach(pid: int, out: Path) -> tuple[dict, str]:
    done = pyprof("attach", str(pid), "-d", "5", "-r", "199", "-o", str(out), "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def assert_phases(out: Path) -> dict[str, float]:
    shares = phase_shares(read_pprof(out.read_bytes()))
    for phase, expected in EXPECTED.items():
        assert abs(shares[phase] - expected) <= SHARE_TOLERANCE, shares
    return shares


def test_a_cached_start_profiles_like_a_compiled_one(java_workload, cache_dir: Path, tmp_path: Path) -> None:
    # GIVEN the Phases workload and an empty cache
    jp = java_workload(21, "Phases", "60,30,10")
    # WHEN pyprof attaches twice
    cold, _ = attach(jp.pid, tmp_path / "cold.pb.gz")
    warm, _ = attach(jp.pid, tmp_path / "warm.pb.gz")
    # THEN the first compiled (and stored) both programs, the second loaded both from the cache
    assert cold["bpf_cache"]["misses"] == 2 and cold["bpf_cache"]["stored"] == 2, cold["bpf_cache"]
    assert warm["bpf_cache"]["hits"] == 2 and warm["bpf_cache"]["misses"] == 0, warm["bpf_cache"]
    assert len(list(cache_dir.glob("*.bpf"))) == 2
    # AND both profiles have the workload's phase shares and the same live code-cache map at work
    cold_shares, warm_shares = assert_phases(tmp_path / "cold.pb.gz"), assert_phases(tmp_path / "warm.pb.gz")
    assert all(abs(cold_shares[p] - warm_shares[p]) <= SHARE_TOLERANCE for p in EXPECTED), (cold_shares,
                                                                                         warm_shares)
    for run in (cold, warm):
        # (199 Hz for 5 s is ~1,000 samples with a free core; a loaded machine gives the JVM less)
        assert run["samples"] >= 100 and run["unknown_frames_percent"] < 1.0, run
    # AND the cold start compiled in a child process, so that neither start holds bcc and its LLVM
    # (~130 MiB that a process never gets back: `test_an_in_process_compile_...` below shows them)
    assert cold["bpf_cache"]["compiled_apart"] == 2 and cold["bpf_cache"]["apart_failed"] == 0, cold
    assert max(cold["startup_rss_mib"], warm["startup_rss_mib"]) < RSS_GOAL_MIB, (cold, warm)
    # AND the compile's CPU, spent in the child, is still counted as pyprof's
    assert warm["startup_cpu_s"] < cold["startup_cpu_s"] - 0.3, (warm["startup_cpu_s"], cold["startup_cpu_s"])


def test_an_in_process_compile_still_profiles_and_shows_what_the_child_saves(java_workload, cache_dir: Path,
                                                                             tmp_path: Path,
                                                                             monkeypatch) -> None:
    # GIVEN the Phases workload, an empty cache and the compile kept in pyprof's own process
    jp = java_workload(21, "Phases", "60,30,10")
    monkeypatch.setenv(bpf_loader.COMPILE_APART_ENV, "off")
    # WHEN pyprof attaches
    run, _ = attach(jp.pid, tmp_path / "inproc.pb.gz")
    # THEN it compiled both programs itself, stored them and profiled as usual
    assert run["bpf_cache"]["compiled_apart"] == 0 and run["bpf_cache"]["stored"] == 2, run["bpf_cache"]
    assert_phases(tmp_path / "inproc.pb.gz")
    # AND carries bcc's LLVM from then on: what compiling apart spares
    assert run["startup_rss_mib"] > RSS_GOAL_MIB + 30, run["startup_rss_mib"]


def test_a_program_that_does_not_compile_fails_in_one_line(cache_dir: Path, capfd) -> None:
    # GIVEN a program clang rejects
    text = "int probe(void *ctx) { return no_such_thing; }"
    failed = bpf_cache.STATS.apart_failed
    # WHEN it is loaded
    with pytest.raises(MissingKernelFeature) as raised:
        bpf_loader.load_bpf_text(text)
    # THEN the child's failure sent it to the in-process compile, whose error is one line naming the cause
    assert bpf_cache.STATS.apart_failed == failed + 1
    message = str(raised.value)
    assert "\n" not in message and "cannot compile" in message, message
    assert not list(cache_dir.glob("*.bpf"))


def test_a_damaged_entry_is_compiled_again_and_still_profiles(java_workload, cache_dir: Path,
                                                             tmp_path: Path) -> None:
    # GIVEN a filled cache whose entries were then damaged
    jp = java_workload(21, "Phases", "60,30,10")
    attach(jp.pid, tmp_path / "fill.pb.gz")
    for path in cache_dir.glob("*.bpf"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    # WHEN pyprof attaches again
    run, stderr = attach(jp.pid, tmp_path / "again.pb.gz")
    # THEN it said so, compiled, stored good entries again and profiled as usual
    assert run["bpf_cache"]["corrupt"] == 2 and run["bpf_cache"]["stored"] == 2, run["bpf_cache"]
    assert "unusable" in stderr, stderr
    assert_phases(tmp_path / "again.pb.gz")
    for path in cache_dir.glob("*.bpf"):
        assert json.loads(path.read_bytes())["format"] == bpf_cache.FORMAT_VERSION


def test_a_changed_program_or_flag_is_compiled_not_served_from_the_cache(cache_dir: Path) -> None:
    text = bpf_loader.inline_local_includes(bpf_loader.BPF_DIR / "nmethod_events.c")
    before = bpf_cache.STATS.as_dict()
    for source, flags in ((text, []), (text, []), (text + "\n// changed\n", []), (text, ["-DUNUSED=1"])):
        bpf_loader.close_bpf(bpf_loader.load_bpf_text(source, flags))
    after = bpf_cache.STATS.as_dict()
    # the same text and flags again: a hit; another text, other flags: compiled, each its own entry
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (1, 3), (before, after)
    assert len(list(cache_dir.glob("*.bpf"))) == 3


def test_a_program_the_kernel_refuses_is_compiled_again(cache_dir: Path, capfd) -> None:
    # GIVEN an entry under the right key whose program the verifier rejects (r0 is never set)
    text = bpf_loader.inline_local_includes(bpf_loader.BPF_DIR / "nmethod_events.c")
    bpf_loader.close_bpf(bpf_loader.load_bpf_text(text))
    (path,) = cache_dir.glob("*.bpf")
    key = path.name.split(".")[0]
    good = bpf_cache.load(key)
    assert good is not None
    bad = bpf_cache.CacheEntry(key, good.license, good.kern_version, good.maps,
                               [bpf_cache.FunctionCode(f.name, f.prog_type, bytes([0x95]) + bytes(7), ())
                                for f in good.functions])
    assert bpf_cache.store(bad)
    rejected = bpf_cache.STATS.rejected
    # WHEN the program is loaded
    bpf = bpf_loader.load_bpf_text(text)
    try:
        # THEN it was compiled, works (its tables answer) and said why in one line
        assert bpf_cache.STATS.rejected == rejected + 1
        assert isinstance(bpf, DirectBpf)
        assert sum(v.value for v in bpf["lost"].values()) == 0
        bpf["lost"][ctypes.c_int(0)] = ctypes.c_uint64(5)
        assert bpf["lost"][ctypes.c_int(0)].value == 5
        err = capfd.readouterr().err
        assert "refused the cached BPF program" in err and err.count("\n") == 1, err
    finally:
        bpf_loader.close_bpf(bpf)
    # AND the good entry replaced the bad one
    assert bpf_cache.load(key) == good
