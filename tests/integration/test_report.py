"""The views of real profiles of real JVMs: `pyprof report` (top, tree, collapsed, flame graph, speedscope,
diff), `pyprof attach -o x.html`, and the live `pyprof top PID` in a real terminal (tmux).

Ground truth is tests/java/src/pyproftest/Phases.java: thread "phases-main" spends its CPU in phaseA,
phaseB (Java, C2) and nativePhase (JNI) in the shares given on its command line. The module profiles two
such JVMs once (60/30/10 and 20/70/10) with the real CLI; the flame graphs are opened in real headless
Chromium, which leaves screenshots in build/screenshots/ for humans to look at.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyprof.output.pprof import read_pprof
from tests.browser.chromium import Chromium, screenshot_dir, terminal_screenshot
from tests.conftest import ROOT, JavaProcess, go_pprof, pyprof, require, start_java

pytestmark = [pytest.mark.jvm, pytest.mark.bpf, pytest.mark.slow, pytest.mark.usefixtures("root_and_bpf")]

PHASE_A = "pyproftest.Phases.phaseA [C2]"
PHASE_B = "pyproftest.Phases.phaseB [C2]"
PLAIN_A, PLAIN_B = "pyproftest.Phases.phaseA", "pyproftest.Phases.phaseB"   # diffs merge JIT tiers


@dataclass
class Runs:
    base_jvm: JavaProcess      # Phases 60,30,10 (still running: the live top tests use it)
    new_jvm: JavaProcess       # Phases 20,70,10
    base: Path                 # a pprof of base_jvm
    new: Path                  # a pprof of new_jvm
    tmp: Path


def attach(pid: int, out: Path, seconds: float = 5, rate: int = 199) -> dict:
    done = pyprof("attach", str(pid), "-d", str(seconds), "-r", str(rate), "-o", str(out), "--json",
                  timeout=seconds + 180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, root_and_bpf) -> Runs:
    tmp = tmp_path_factory.mktemp("report")
    base_jvm = start_java(17, "Phases", "60,30,10")
    new_jvm = None
    try:
        base, new = tmp / "base.pb.gz", tmp / "new.pb.gz"
        attach(base_jvm.pid, base)
        new_jvm = start_java(17, "Phases", "20,70,10")
        attach(new_jvm.pid, new)
        yield Runs(base_jvm, new_jvm, base, new, tmp)
    finally:
        base_jvm.stop()
        if new_jvm is not None:
            new_jvm.stop()


@pytest.fixture(scope="module")
def browser():
    with Chromium(timeout=120) as b:
        yield b


def report(*args: str) -> subprocess.CompletedProcess:
    return pyprof("report", *args, timeout=300)


def report_json(*args: str) -> dict:
    done = report(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def go_top(path: Path) -> dict[str, tuple[float, float]]:
    """name -> (flat%, cum%) from `go tool pprof -top`, every node (overloads with one name summed)."""
    done = go_pprof("-top", "-nodecount=100000", "-nodefraction=0", "-edgefraction=0", str(path))
    assert done.returncode == 0, done.stderr
    row = re.compile(r"^\s*\S+\s+([\d.]+)%\s+[\d.]+%\s+\S+\s+([\d.]+)%\s+(.+?)\s*$")
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    in_table = False
    for line in done.stdout.splitlines():
        if line.strip().startswith("flat") and "cum%" in line:
            in_table = True
            continue
        match = row.match(line) if in_table else None
        if match:
            out[match.group(3)][0] += float(match.group(1))
            out[match.group(3)][1] += float(match.group(2))
    assert out, done.stdout
    return {name: (flat, cum) for name, (flat, cum) in out.items()}


# ---- text views ------------------------------------------------------------------------------------

def test_top_equals_go_tool_pprof(runs: Runs) -> None:
    # GIVEN a profile of a real JVM written by `pyprof attach`
    # WHEN pyprof's top and `go tool pprof -top` read the same file
    ours = report_json(str(runs.base), "--limit", "0")
    theirs = go_top(runs.base)
    # THEN the 10 hottest functions by self have the same self (flat) and total (cum) % within rounding
    hottest = [r for r in ours["rows"] if r["self"] > 0][:10]
    assert hottest[0]["function"] == PHASE_A, hottest[:3]
    for row in hottest:
        flat, cum = theirs[row["function"]]
        assert abs(row["self_percent"] - flat) <= 0.011, (row, flat)
        assert abs(row["total_percent"] - cum) <= 0.011, (row, cum)
    # AND pprof's 10 hottest are ours too
    go_hottest = sorted(theirs.items(), key=lambda kv: -kv[1][0])[:10]
    ours_by_name = {r["function"]: r for r in ours["rows"]}
    for name, (flat, _) in go_hottest:
        assert abs(ours_by_name[name]["self_percent"] - flat) <= 0.011, (name, flat)


def test_top_shares_filters_and_tiers(runs: Runs) -> None:
    # GIVEN the 60/30/10 JVM's profile
    # WHEN top is asked as JSON, with filters, without tiers and per thread
    top = report_json(str(runs.base))
    rows = {r["function"]: r for r in top["rows"]}
    focused = report_json(str(runs.base), "--focus", "phaseB")
    no_thread = report_json(str(runs.base), "--thread", "^no-such-thread$")
    merged = report_json(str(runs.base), "--no-tiers", "--limit", "0")
    per_thread = report_json(str(runs.base), "--per-thread", "--limit", "3")
    # THEN phaseA and phaseB are the hottest, C2-compiled, near their constructed shares
    assert [r["function"] for r in top["rows"][:2]] == [PHASE_A, PHASE_B]
    assert rows[PHASE_A]["kind"] == "c2"
    assert abs(rows[PHASE_A]["total_percent"] - 60) <= 8 and abs(rows[PHASE_B]["total_percent"] - 30) <= 8
    everything = report_json(str(runs.base), "--limit", "0")
    assert len(top["rows"]) == min(20, len(everything["rows"])) and top["samples"] >= 200
    # AND --focus keeps exactly the samples through phaseB (100 % of what is left)
    assert focused["samples"] == rows[PHASE_B]["total"]
    assert {r["function"]: r for r in focused["rows"]}[PHASE_B]["total_percent"] == 100.0
    assert PHASE_A not in {r["function"] for r in focused["rows"]}
    # AND a thread filter that matches nothing leaves nothing
    assert no_thread["samples"] == 0 and no_thread["rows"] == []
    # AND --no-tiers names methods without their tier
    assert "pyproftest.Phases.phaseA" in {r["function"] for r in merged["rows"]}
    assert not any(r["function"].endswith(("[C2]", "[interp]")) for r in merged["rows"])
    # AND per-thread rows name the busy thread
    assert per_thread["rows"][0]["thread"] == "phases-main"


def test_top_and_tree_text(runs: Runs, browser: Chromium) -> None:
    # WHEN the demo's command and the tree view run
    top = report(str(runs.base), "--format", "top", "--limit", "10")
    tree = report(str(runs.base), "--format", "tree", "--min-percent", "5")
    tree_json = report_json(str(runs.base), "--format", "tree", "--min-percent", "5")
    # THEN top prints a header and 10 rows, phaseA first
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    assert "samples" in lines[0] and "Showing 10 of" in lines[1]
    assert lines[3].endswith(PHASE_A) and len(lines) == 3 + 10
    # AND the tree goes from the thread down to phaseA and phaseB with their total %
    assert tree.returncode == 0, tree.stderr
    assert "phases-main  (thread)" in tree.stdout
    a_line = next(line for line in tree.stdout.splitlines() if line.endswith(PHASE_A))
    assert abs(float(a_line.split("%")[0]) - 60) <= 8
    # AND the JSON tree has the same totals, every child within its parent
    root = tree_json["root"]
    assert root["total"] == tree_json["samples"]

    def check(node: dict) -> None:
        assert sum(c["total"] for c in node["children"]) <= node["total"] - node["self"]
        for child in node["children"]:
            check(child)

    check(root)
    (thread,) = [c for c in root["children"] if c["function"] == "phases-main"]
    assert thread["kind"] == "thread"
    terminal_screenshot(browser, top.stdout, screenshot_dir() / "report-top.png", columns=140)
    terminal_screenshot(browser, tree.stdout, screenshot_dir() / "report-tree.png", columns=140)


def test_collapsed_and_speedscope(runs: Runs) -> None:
    out_txt = runs.tmp / "base.folded"
    out_ss = runs.tmp / "base.speedscope.json"
    # WHEN the profile is written as folded stacks and as speedscope (format from the file name)
    folded = report(str(runs.base), "-o", str(out_txt))
    ss = report(str(runs.base), "-o", str(out_ss))
    assert folded.returncode == 0 and ss.returncode == 0, folded.stderr + ss.stderr
    profile = read_pprof(str(runs.base))
    # THEN the folded lines add up to every sample, phaseA frames carrying their tier
    lines = out_txt.read_text().splitlines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == profile.total_samples
    assert any(f";{PHASE_A}" in line for line in lines)
    # AND speedscope has the busy thread first, CPU ns weights summing to its samples
    doc = json.loads(out_ss.read_text())
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    busy = doc["profiles"][0]
    assert busy["name"] == "phases-main" and busy["type"] == "sampled"
    thread_samples = sum(n for key, n in profile.counts.items() if key.thread_name == "phases-main")
    assert sum(busy["weights"]) == thread_samples * profile.period_ns == busy["endValue"]
    names = [f["name"] for f in doc["shared"]["frames"]]
    # stacks are root first: the leaf of the heaviest stack is phaseA, its root HotSpot's thread entry
    heaviest = busy["samples"][max(range(len(busy["weights"])), key=busy["weights"].__getitem__)]
    assert names[heaviest[-1]] == PHASE_A
    assert names[heaviest[0]].startswith("thread_native_entry")


def test_report_reads_pprof_written_by_another_tool(runs: Runs) -> None:
    # GIVEN a pprof file written by go tool pprof itself (only the samples through phaseB)
    other = runs.tmp / "from-go.pb.gz"
    done = go_pprof("-proto", "-focus=phaseB", "-output", str(other), str(runs.base))
    assert done.returncode == 0, done.stderr
    # WHEN pyprof reports it
    theirs = report_json(str(other))
    ours = report_json(str(runs.base), "--focus", "phaseB")
    # THEN it has the same samples and restores the frame kinds from the names
    assert theirs["samples"] == ours["samples"] > 0
    first = theirs["rows"][0]
    assert (first["function"], first["kind"]) == (PHASE_B, "c2")


def test_report_writes_a_filtered_pprof_that_go_pprof_reads(runs: Runs) -> None:
    out = runs.tmp / "only-phase-b.pb.gz"
    # WHEN report writes the samples through phaseB as pprof
    done = report(str(runs.base), "--focus", "phaseB", "-o", str(out))
    assert done.returncode == 0, done.stderr
    # THEN go tool pprof reads it: phaseB is the hottest function and on every stack
    theirs = go_top(out)
    hottest = max(theirs.items(), key=lambda kv: kv[1][0])
    assert hottest[0] == PHASE_B and theirs[PHASE_B][1] == 100.0
    assert PHASE_A not in theirs


def test_report_usage_errors(runs: Runs) -> None:
    # WHEN report is misused
    unknown_ext = report(str(runs.base), "-o", str(runs.tmp / "x.unknown"))
    one_for_diff = report("--diff", str(runs.base))
    missing = report(str(runs.tmp / "missing.pb.gz"))
    not_pprof = report(str(Path(__file__)))
    bad_regex = report(str(runs.base), "--focus", "(")
    # THEN each exits 2 with a one-line reason and writes nothing
    for done in (unknown_ext, one_for_diff, missing, not_pprof, bad_regex):
        assert done.returncode == 2, (done.args, done.stderr)
        assert done.stderr.startswith("pyprof: error: ") and "Traceback" not in done.stderr
    assert not (runs.tmp / "x.unknown").exists()


# ---- the flame graph in Chromium -------------------------------------------------------------------

def open_flamegraph(browser: Chromium, path: Path, query: str = ""):
    page = browser.new_page(1400, 900)
    seconds = page.navigate(path.as_uri() + query)
    page.wait_for("document.body.dataset.ready === '1' || !!document.body.dataset.errors", timeout=120)
    return page, seconds


def test_flamegraph_in_chromium(runs: Runs, browser: Chromium) -> None:
    html = runs.tmp / "base.html"
    # GIVEN the flame graph of a real profile (the demo's command)
    done = report(str(runs.base), "--format", "flamegraph", "-o", str(html))
    assert done.returncode == 0, done.stderr
    text = html.read_text()
    assert "https://" not in text and "http://" not in text
    # every sample with phaseA on its stack, whatever its tier (the page's search matches them all)
    merged = {r["function"]: r for r in report_json(str(runs.base), "--no-tiers", "--limit", "0")["rows"]}
    # WHEN Chromium opens it
    page, _ = open_flamegraph(browser, html)
    # THEN it loads without console errors, fetches nothing, and draws the frames
    assert page.console_errors() == []
    assert page.evaluate("document.body.dataset.errors || ''") == ""
    assert [u for u in page.requests() if not u.startswith("file://")] == []
    drawn = int(page.evaluate("document.body.dataset.framesDrawn"))
    assert drawn >= 15
    # AND searching phaseA highlights it and matches its total share, as top computes it
    matched = page.evaluate(f"pyprofFlameGraph.search({json.dumps('phaseA')})")
    assert float(page.evaluate("document.body.dataset.matchedPercent")) == pytest.approx(
        merged["pyproftest.Phases.phaseA"]["total_percent"], abs=0.01), matched
    assert int(page.evaluate("document.body.dataset.matchedFunctions")) >= 1
    page.screenshot(screenshot_dir() / "flamegraph.png")
    # AND a tooltip shows samples and percent for the frame under the mouse
    node = page.evaluate(f"pyprofFlameGraph.find({json.dumps(PHASE_A)})")
    tip = page.evaluate(f"pyprofFlameGraph.tooltipFor({node})")
    assert "samples" in tip and "%" in tip and "C2" in tip
    # AND hovering over the drawn frame shows that tooltip, clicking it zooms in
    locate = f"""(() => {{ const c = document.getElementById('canvas').getBoundingClientRect();
        for (let y = 0; y < c.height; y += 4) for (let x = 0; x < c.width; x += 4)
          if (pyprofFlameGraph.hitAt(x, y) === {node}) return [c.left + x + 2, c.top + y + 2];
        return null; }})()"""
    box = page.evaluate(locate)
    assert box is not None
    page.move(*box)
    assert "phaseA" in page.evaluate("document.getElementById('tooltip').hidden ? '' : "
                                     "document.getElementById('tooltip').textContent")
    page.click(*box)
    assert "Zoomed:" in page.evaluate("document.getElementById('breadcrumb').textContent")
    assert int(page.evaluate("document.body.dataset.framesDrawn")) < drawn
    x, y = page.evaluate(locate)
    page.move(x + 300, y)     # the zoomed frame is full width now: its tooltip, for the screenshot
    assert not page.evaluate("document.getElementById('tooltip').hidden")
    page.screenshot(screenshot_dir() / "flamegraph-zoomed.png")
    # AND the thread filter removes what it deselects, the icicle toggle flips the layout
    page.evaluate("pyprofFlameGraph.setThreads('^no-such-thread$')")
    assert page.evaluate("document.body.dataset.framesDrawn") == "1"
    page.evaluate("pyprofFlameGraph.setThreads('')")
    assert int(page.evaluate("document.body.dataset.framesDrawn")) == drawn
    assert page.evaluate("pyprofFlameGraph.toggleMode()") == "icicle"
    page.screenshot(screenshot_dir() / "flamegraph-icicle.png")
    assert page.console_errors() == []


def test_flamegraph_search_from_the_url(runs: Runs, browser: Chromium) -> None:
    html = runs.tmp / "base-url.html"
    assert report(str(runs.base), "-o", str(html)).returncode == 0
    # WHEN the page is opened with ?search=phaseB
    page, _ = open_flamegraph(browser, html, "?search=phaseB&mode=icicle")
    # THEN the search ran at load: phaseB's share is matched
    rows = {r["function"]: r for r in report_json(str(runs.base), "--no-tiers", "--limit", "0")["rows"]}
    assert float(page.evaluate("document.body.dataset.matchedPercent")) == pytest.approx(
        rows["pyproftest.Phases.phaseB"]["total_percent"], abs=0.01)
    assert page.console_errors() == []


def test_attach_writes_a_flamegraph_and_speedscope_by_extension(runs: Runs, browser: Chromium) -> None:
    html = runs.tmp / "attach.html"
    ss = runs.tmp / "attach.speedscope.json"
    # WHEN pyprof attach writes -o x.html and -o x.speedscope.json
    summary = attach(runs.new_jvm.pid, html, seconds=2)
    attach(runs.new_jvm.pid, ss, seconds=2)
    # THEN the summary names the format, the page loads cleanly in Chromium and finds phaseB
    assert summary["format"] == "flamegraph"
    page, _ = open_flamegraph(browser, html, "?search=phaseB")
    assert page.console_errors() == []
    assert float(page.evaluate("document.body.dataset.matchedPercent")) > 40
    assert json.loads(ss.read_text())["profiles"][0]["name"] == "phases-main"


# ---- diff ------------------------------------------------------------------------------------------

def test_diff_shows_what_got_slower(runs: Runs, browser: Chromium) -> None:
    # GIVEN BASE 60/30/10 and NEW 20/70/10
    # WHEN the two are compared as top and as a differential flame graph
    top = report_json("--diff", str(runs.base), str(runs.new), "--limit", "0")
    text = report("--diff", str(runs.base), str(runs.new), "--limit", "8")
    html = runs.tmp / "diff.html"
    done = report("--diff", str(runs.base), str(runs.new), "-o", str(html))
    assert done.returncode == 0 and text.returncode == 0, done.stderr + text.stderr
    rows = {r["function"]: r for r in top["rows"]}
    # THEN phaseB grew by about 40 points and leads; phaseA shrank by about 40
    assert top["rows"][0]["function"] == PLAIN_B
    assert abs(rows[PLAIN_B]["delta_self"] - 40) <= 10
    assert abs(rows[PLAIN_A]["delta_self"] + 40) <= 10
    assert text.stdout.splitlines()[4].endswith(PLAIN_B)
    # AND the differential flame graph loads cleanly, says so in its tooltips, and finds phaseB
    page, _ = open_flamegraph(browser, html)
    assert page.console_errors() == []
    node = page.evaluate(f"pyprofFlameGraph.find({json.dumps(PLAIN_B)})")
    tip = page.evaluate(f"pyprofFlameGraph.tooltipFor({node})")
    assert "Change: <b>+" in tip and "Base:" in tip
    shrunk = page.evaluate(f"pyprofFlameGraph.tooltipFor(pyprofFlameGraph.find({json.dumps(PLAIN_A)}))")
    assert "Change: <b>-" in shrunk
    page.evaluate("pyprofFlameGraph.search('phaseB')")
    assert float(page.evaluate("document.body.dataset.matchedPercent")) == pytest.approx(
        rows[PLAIN_B]["new_total_percent"], abs=0.01)
    page.evaluate("pyprofFlameGraph.search('')")
    page.screenshot(screenshot_dir() / "flamegraph-diff.png")
    terminal_screenshot(browser, text.stdout, screenshot_dir() / "report-diff.png", columns=150)


# ---- live top --------------------------------------------------------------------------------------

class Tmux:
    """A tmux server of our own (its own socket), one session, a fixed-size terminal."""

    def __init__(self, name: str, command: str, width: int = 160, height: int = 40) -> None:
        require(os.access("/usr/bin/tmux", os.X_OK), "tmux is not installed")
        self.socket = f"pyproftest-{os.getpid()}"
        self.name = name
        self.run("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), command)

    def run(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    def screen(self, ansi: bool = False) -> str:
        return self.run("capture-pane", "-p", *(["-e"] if ansi else []), "-t", self.name)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)

    def wait_for(self, predicate, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.5)
        pytest.fail(f"tmux screen never showed {what} in {timeout:.0f} s:\n{screen}", pytrace=False)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def table_rows(screen: str) -> list[list[str]]:
    """The rows under the header of pyprof top's table, split on runs of two or more spaces."""
    lines = screen.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("SELF%"))
    return [re.split(r"\s{2,}", line.strip()) for line in lines[start + 1:] if line.strip()]


def samples_on(screen: str) -> int:
    match = re.search(r"samples ([\d,]+) \((\d+)/s\)", screen)
    return int(match.group(1).replace(",", "")) if match else 0


def test_live_top_in_a_terminal(runs: Runs, browser: Chromium) -> None:
    # GIVEN the 60/30/10 JVM and `pyprof top PID` in a real terminal (tmux, 160x40)
    command = (f"cd {ROOT} && {sys.executable} -m pyprof.cli.main top {runs.base_jvm.pid} -r 199; "
               f"echo EXIT=$?; sleep 300")
    tmux = Tmux("top", command)
    try:
        # WHEN it has run for a few hundred samples
        screen = tmux.wait_for(lambda s: samples_on(s) >= 400, 180, "400 samples")
        # THEN the header shows the rate, lost and unknown frames, and the hottest methods by self come first
        assert re.search(r"samples [\d,]+ \(\d+/s\)\s+lost \d+ \([\d.]+%\)\s+unknown frames [\d.]+%", screen)
        rows = table_rows(screen)
        assert rows[0][-1] == PHASE_A and rows[1][-1] == PHASE_B, rows[:3]
        assert abs(float(rows[0][0].rstrip("%")) - 60) <= 8 and abs(float(rows[1][0].rstrip("%")) - 30) <= 8
        assert "sort: self" in screen
        terminal_ansi = tmux.screen(ansi=True)
        # WHEN s is pressed THEN rows are sorted by total (the thread's root frames, ~100 %)
        tmux.keys("s")
        screen = tmux.wait_for(lambda s: "sort: total" in s, 30, "sort: total")
        rows = table_rows(screen)
        assert float(rows[0][1].rstrip("%")) >= 95, rows[:3]
        # WHEN t is pressed THEN rows are per thread, naming phases-main
        tmux.keys("t")
        screen = tmux.wait_for(lambda s: "THREAD" in s, 30, "the THREAD column")
        assert "phases-main" in screen
        # WHEN q is pressed THEN top ends cleanly within a few seconds and says why
        tmux.keys("q")
        screen = tmux.wait_for(lambda s: "EXIT=" in s, 60, "the exit status")
        assert "EXIT=0" in screen and "ended by q" in screen
    finally:
        tmux.close()
    terminal_screenshot(browser, terminal_ansi, screenshot_dir() / "live-top.png", columns=160)


def test_live_top_without_a_terminal_prints_plain_refreshes(runs: Runs) -> None:
    # WHEN pyprof top runs with stdout to a pipe for 5 s
    done = pyprof("top", str(runs.base_jvm.pid), "-d", "5", "-r", "199", "-n", "5", timeout=240)
    # THEN it prints a plain table every second (no escape codes) and ends by its duration
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    tables = [t for t in done.stdout.split("\n\n") if t.strip()]
    assert len(tables) >= 2, done.stdout
    last = tables[-1].splitlines()
    assert last[0].startswith(f"pyprof top  pid {runs.base_jvm.pid}")
    assert last[1].startswith("samples ") and "lost" in last[1] and "unknown frames" in last[1]
    assert last[4].endswith(PHASE_A) and len(last) == 4 + 5
    assert "ended by duration" in done.stderr
