"""`-e cpu,alloc,lock` through the CLI: one pprof with every event's sample types, read back per type by
pyprof's own views and by `go tool pprof -sample_index`; the flame graph page (in Chromium), speedscope
and folded stacks of several events (AllocSites: 75 % of its bytes are byte[] from allocLarge, 25 %
long[] from allocSmall; see tests/integration/test_events.py for the ground truth on every JDK, below the
CLI)."""

from __future__ import annotations

import json
import re

import pytest

from pyprof.reporters import flamegraph
from tests.browser.chromium import Chromium, screenshot_dir
from tests.browser.speedscope_app import errors, open_in_speedscope, press
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
    # AND every other output holds every type: speedscope a profile per type and thread in its unit
    ss = tmp_path / "events.speedscope.json"
    done = pyprof("report", str(out), "-o", str(ss), timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(ss.read_text())
    units = {p["name"].split(": ", 1)[0]: p["unit"] for p in doc["profiles"]}
    assert units.get("samples") == "nanoseconds" and units.get("alloc_space") == "bytes", units
    assert units.get("delay", "nanoseconds") == "nanoseconds" and "cpu" not in units, units
    # AND the real speedscope app loads it: alloc-main's alloc_space profile has byte[] at 75 % of bytes
    names = [p["name"] for p in doc["profiles"]]
    with Chromium(timeout=120) as browser:
        page = open_in_speedscope(browser, ss, len(names))
        for _ in range(names.index("alloc_space: alloc-main")):
            press(page, "n")
        press(page, "3")   # the sandwich view: a table of functions with totals in the profile's unit
        page.wait_for("document.body.innerText.includes('byte[]')", timeout=30)
        text = page.evaluate("document.body.innerText")
        assert "alloc_space: alloc-main" in text, text[:300]
        row = re.search(r"([\d.]+ [KMG]B) \(([\d.]+)%\)\s+\S+ \S+ \([\d.<]+%\)\s+byte\[\]", text)
        assert row is not None, text[:1000]
        assert abs(float(row.group(2)) - 75) <= 10, row.group(0)
        page.screenshot(screenshot_dir() / "speedscope-alloc-space.png")
        assert errors(page) == []
    # AND --type picks one type in any format: a page of alloc_space only, top's hottest leaf byte[]
    page = tmp_path / "space.html"
    done = pyprof("report", str(out), "--type", "alloc_space", "-o", str(page), timeout=120)
    assert done.returncode == 0, done.stderr
    assert [t["name"] for t in flamegraph.decode_data(page.read_text())["types"]] == ["alloc_space"]
    top = pyprof("report", str(out), "--type", "alloc_space", "--json", timeout=120)
    assert top.returncode == 0, top.stderr
    assert json.loads(top.stdout)["rows"][0]["function"] == "byte[]", top.stdout[:500]
    # AND a type the profile lacks is one line naming those it has (exit 2)
    bad = pyprof("report", str(out), "--type", "inuse_space", "--format", "collapsed", timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "alloc_space" in bad.stderr and "samples" in bad.stderr, bad.stderr


def _attach(pid: int, out, seconds: float = 4) -> dict:
    done = pyprof("attach", str(pid), "-e", "cpu,alloc", "-d", str(seconds), "-o", str(out), "--json",
                  timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_attach_writes_every_event_to_the_flame_graph_and_to_folded_stacks(java_workload, tmp_path) -> None:
    jp = java_workload(17, "AllocSites")
    html, folded = tmp_path / "events.html", tmp_path / "events.folded"
    # WHEN attach writes `-e cpu,alloc` as a flame graph page and as folded stacks
    assert _attach(jp.pid, html)["outputs"] == [str(html)]
    assert _attach(jp.pid, folded)["outputs"] == [str(folded), str(tmp_path / "events.alloc_space.folded")]
    # THEN the folded stacks are one file per event: CPU samples, and bytes with byte[] under allocLarge
    cpu_lines = folded.read_text().splitlines()
    assert cpu_lines and not any(line.rsplit(" ", 1)[0].endswith(";byte[]") for line in cpu_lines)
    space_file = tmp_path / "events.alloc_space.folded"
    space = [line.rsplit(" ", 1) for line in space_file.read_text().splitlines()]
    byte_arrays = [(stack, int(value)) for stack, value in space if stack.endswith(";byte[]")]
    under_large = sum(v for stack, v in byte_arrays if ";pyproftest.AllocSites.allocLarge" in stack)
    total = sum(int(value) for _stack, value in space)
    assert abs(100 * sum(v for _s, v in byte_arrays) / total - 75) <= 10, (byte_arrays[:3], total)
    assert under_large >= 0.95 * sum(v for _s, v in byte_arrays)
    # AND Chromium shows the page's alloc_space type with byte[] drawn, where CPU samples have none
    with Chromium(timeout=120) as browser:
        page = browser.new_page(1400, 900)
        page.navigate(html.as_uri())
        page.wait_for("document.body.dataset.ready === '1' || !!document.body.dataset.errors", timeout=120)
        assert page.evaluate("document.body.dataset.errors || ''") == ""
        assert page.evaluate("pyprofFlameGraph.types") == ["samples", "alloc_objects", "alloc_space"]
        assert not page.evaluate("document.getElementById('sampletype').hidden")
        assert page.evaluate("document.body.dataset.sampleType") == "samples"
        page.evaluate("pyprofFlameGraph.search('^byte\\\\[\\\\]$')")
        assert float(page.evaluate("document.body.dataset.matchedPercent")) == 0.0
        # the selector itself, as a user changes it
        page.evaluate("(() => { const s = document.getElementById('sampletype'); "
                      "s.value = String(pyprofFlameGraph.types.indexOf('alloc_space')); "
                      "s.dispatchEvent(new Event('change')); })()")
        assert page.evaluate("document.body.dataset.sampleType") == "alloc_space"
        matched = float(page.evaluate("document.body.dataset.matchedPercent"))
        assert 60 <= matched <= 90, matched   # 75 % of alloc-main's bytes; other threads allocate little
        node = page.evaluate("pyprofFlameGraph.find('byte[]')")
        assert node > 0
        locate = f"""(() => {{ const c = document.getElementById('canvas').getBoundingClientRect();
            for (let y = 0; y < c.height; y += 4) for (let x = 0; x < c.width; x += 4)
              if (pyprofFlameGraph.hitAt(x, y) === {node}) return [c.left + x + 2, c.top + y + 2];
            return null; }})()"""
        box = page.evaluate(locate)
        assert box is not None   # byte[] is drawn
        page.move(*box)
        tip = page.evaluate("document.getElementById('tooltip').textContent")
        assert "byte[]" in tip and ("MiB" in tip or "GiB" in tip), tip
        assert "alloc_space" in page.evaluate("document.getElementById('subtitle').textContent")
        page.screenshot(screenshot_dir() / "flamegraph-alloc-space.png")
        assert page.console_errors() == []
