"""`-e cpu,alloc,lock` through the CLI: one pprof with every event's sample types, read back per type by
pyprof's own views and by `go tool pprof -sample_index` (AllocSites: 75 % of its bytes are byte[] from
allocLarge, 25 % long[] from allocSmall; see tests/integration/test_events.py for the ground truth on
every JDK, below the CLI)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import go_pprof, pyprof

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.usefixtures("root_and_bpf")]


def _flat_shares(top: str) -> dict[str, float]:
    row = re.compile(r"^\s*\S+\s+([\d.]+)%\s+[\d.]+%\s+\S+\s+[\d.]+%\s+(.+?)\s*$")
    out: dict[str, float] = {}
    for line in top.splitlines():
        m = row.match(line)
        if m:
            out[m.group(2)] = out.get(m.group(2), 0.0) + float(m.group(1))
    return out


def test_several_events_make_one_pprof_that_every_reader_splits_by_type(java_workload, tmp_path) -> None:
    # GIVEN the allocation ground truth on JDK 17
    jp = java_workload(17, "AllocSites")
    out = tmp_path / "events.pb.gz"
    # WHEN pyprof attaches with three events at once
    done = pyprof("attach", str(jp.pid), "-e", "cpu,alloc,lock", "-d", "6", "-o", str(out), "--no-progress",
                  timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    # THEN go tool pprof sees every event's sample types in the one file
    raw = go_pprof("-raw", str(out))
    assert raw.returncode == 0, raw.stderr
    types = re.search(r"^Samples:\n(.*)$", raw.stdout, re.M)
    assert types is not None, raw.stdout[:500]
    for name in ("samples/count", "cpu/nanoseconds", "alloc_objects/count", "alloc_space/bytes",
                 "contentions/count", "delay/nanoseconds"):
        assert name in types.group(1), types.group(1)
    # AND by alloc_space the allocated classes are the leaves, in the workload's byte ratio (+-5)
    top = go_pprof("-top", "-sample_index=alloc_space", "-nodecount=50", str(out))
    assert top.returncode == 0, top.stderr
    shares = _flat_shares(top.stdout)
    assert abs(shares.get("byte[]", 0) - 75) <= 5 and abs(shares.get("long[]", 0) - 25) <= 5, shares
    # AND pyprof's own report picks the same type: byte[] under allocLarge
    tree = pyprof("report", str(out), "--type", "alloc_space", "--format", "collapsed", timeout=120)
    assert tree.returncode == 0, tree.stderr
    byte_arrays = [line.rsplit(" ", 1) for line in tree.stdout.splitlines() if " " in line]
    byte_arrays = [(stack, int(value)) for stack, value in byte_arrays if stack.endswith(";byte[]")]
    under_large = sum(value for stack, value in byte_arrays if ";pyproftest.AllocSites.allocLarge" in stack)
    assert byte_arrays and under_large >= 0.95 * sum(value for _stack, value in byte_arrays), byte_arrays[:5]
    # AND the CPU samples are still a CPU profile (the default type is the first event's)
    cpu = go_pprof("-top", "-nodecount=5", str(out))
    assert cpu.returncode == 0, cpu.stderr
    assert "Type: samples" in cpu.stdout or "Type: cpu" in cpu.stdout, cpu.stdout[:400]
