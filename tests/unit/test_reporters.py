"""The reporters' aggregation and rendering on small hand-made profiles (no JVM, no browser).

The profile below is small enough to count by hand:

    thread "main" (tid 1):
      5 x  leaf hot [C2] <- work [C2] (hot inlined into work: one physical frame) <- main [interp]
      3 x  memcpy (native) <- work [C2] <- main [interp]
      2 x  fib [C2] <- fib [C2] <- fib [C2] <- main [interp]          (recursion)
    thread "gc" (tid 2):
      4 x  do_syscall_64 (kernel) <- GCTask (native)
      1 x  [unknown] <- GCTask (native)
      1 x  work [C1] <- main [interp]                                 (another tier of work)
"""

from __future__ import annotations

import json

import pytest

from pyprof.cli.top import LiveTop, ViewState
from pyprof.errors import UsageError
from pyprof.model import FrameKind, LogicalFrame, PhysicalFrame, ProfileData, StackKey
from pyprof.reporters import diff, flamegraph, speedscope, top, tree
from pyprof.reporters.aggregate import build_tree, filter_profile, summarize

K = FrameKind


def frame(address: int, *logical: tuple[str, FrameKind]) -> PhysicalFrame:
    frames = tuple(LogicalFrame(name, kind, filename="F.java") for name, kind in logical)
    return PhysicalFrame(address, frames)


MAIN = frame(0x100, ("main", K.INTERPRETED))
WORK_WITH_HOT = frame(0x200, ("hot", K.INLINED), ("work", K.C2))
WORK = frame(0x210, ("work", K.C2))
WORK_C1 = frame(0x220, ("work", K.C1))
MEMCPY = frame(0x300, ("memcpy", K.NATIVE))
FIB = frame(0x400, ("fib", K.C2))
GC_TASK = frame(0x500, ("GCTask", K.NATIVE))
SYSCALL = frame(0xFFFF_FFFF_8100_0000, ("do_syscall_64", K.KERNEL))
UNKNOWN = frame(0x600, ("[unknown]", K.UNKNOWN))


def sample_profile() -> ProfileData:
    p = ProfileData(period_ns=10_000_000, duration_ns=2 * 10**9, lost_samples=2)
    p.add(StackKey((WORK_WITH_HOT, MAIN), "main", 1), 5)
    p.add(StackKey((MEMCPY, WORK, MAIN), "main", 1), 3)
    p.add(StackKey((FIB, FIB, FIB, MAIN), "main", 1), 2)
    p.add(StackKey((SYSCALL, GC_TASK), "gc", 2), 4)
    p.add(StackKey((UNKNOWN, GC_TASK), "gc", 2), 1)
    p.add(StackKey((WORK_C1, MAIN), "gc", 2), 1)
    return p


def rows_by_name(report: top.TopReport) -> dict[str, top.TopRow]:
    return {r.name: r for r in report.rows}


# ---- top -------------------------------------------------------------------------------------------

def test_top_self_is_innermost_leaf_and_total_counts_each_function_once_per_sample() -> None:
    # GIVEN 16 samples with an inlined leaf, a recursion and two tiers of one method
    profile = sample_profile()
    # WHEN top aggregates them with tiers
    report = top.aggregate(profile)
    rows = rows_by_name(report)
    # THEN the inlined callee is the leaf of its 5 samples, the C2 frame holding it only in total
    assert (rows["hot [inlined]"].self, rows["hot [inlined]"].total) == (5, 5)
    assert (rows["work [C2]"].self, rows["work [C2]"].total) == (0, 8)
    # AND a recursive function counts once per sample in total
    assert (rows["fib [C2]"].self, rows["fib [C2]"].total) == (2, 2)
    # AND tiers are separate rows, with their kinds
    assert rows["work [C1]"].total == 1 and rows["work [C1]"].kind is K.C1
    assert rows["main [interp]"].total == 11
    # AND rows are sorted by self, then total
    assert [r.name for r in report.rows[:3]] == ["hot [inlined]", "do_syscall_64", "memcpy"]
    assert report.samples == 16


def test_top_without_tiers_merges_a_method_s_tiers() -> None:
    # GIVEN work compiled by C2 (8 samples) and C1 (1 sample)
    # WHEN top merges tiers
    rows = rows_by_name(top.aggregate(sample_profile(), tiers=False))
    # THEN one "work" row has all 9 samples and no row carries a tier suffix
    assert rows["work"].total == 9
    assert not any(name.endswith("]") and " [" in name for name in rows)


def test_top_text_and_json_show_percentages_of_all_samples() -> None:
    # GIVEN the profile's top sorted by total
    report = top.aggregate(sample_profile(), sort="total")
    # WHEN rendered as text limited to 2 rows, and as JSON
    text = top.render_text(report, limit=2)
    data = json.loads(json.dumps(top.to_json(report, limit=2)))
    # THEN the first row is main [interp] with 11/16 = 68.75 % total
    assert data["rows"][0] == {"function": "main [interp]", "kind": "interpreted", "self": 0,
                               "self_percent": 0.0, "total": 11, "total_percent": 68.75}
    assert data["samples"] == 16 and data["functions"] == len(report.rows) and len(data["rows"]) == 2
    assert "68.75%" in text and "Showing 2 of" in text
    # AND the header counts lost samples and unknown frames (1 of 39 frames)
    assert data["lost_samples"] == 2
    assert data["unknown_frames_percent"] == pytest.approx(100 * 1 / 39, abs=0.001)


def test_top_per_thread_rows() -> None:
    # WHEN top is per thread
    report = top.aggregate(sample_profile(), per_thread=True)
    keys = {(r.thread, r.name): r.total for r in report.rows}
    # THEN main [interp] has a row in each thread with that thread's samples
    assert keys[("main", "main [interp]")] == 10 and keys[("gc", "main [interp]")] == 1


# ---- filters ---------------------------------------------------------------------------------------

def test_filters_keep_matching_threads_and_stacks() -> None:
    profile = sample_profile()
    # WHEN filtering on thread "gc", then focusing on memcpy, then on a tier suffix
    gc_only = filter_profile(profile, thread="^gc$")
    focused = filter_profile(profile, focus="memcpy")
    interp = filter_profile(profile, focus=r"\[C1\]")
    # THEN only those samples are left
    assert gc_only.total_samples == 6
    assert focused.total_samples == 3
    assert interp.total_samples == 1
    # AND an invalid regular expression is a usage error, not a crash
    with pytest.raises(UsageError):
        filter_profile(profile, focus="(")


# ---- tree ------------------------------------------------------------------------------------------

def test_call_tree_totals_and_threads_first() -> None:
    # WHEN the call tree is built with threads first
    t = build_tree(sample_profile())

    def child(node: int, name: str) -> int:
        (found,) = [c for c in t.children(node) if t.name(c) == name]
        return found

    # THEN the root holds all samples, split by thread
    assert t.total[0] == 16 and {t.name(c) for c in t.children(0)} == {"main", "gc"}
    main_thread = child(0, "main")
    assert t.total[main_thread] == 10 and t.kind(main_thread) is K.THREAD
    main_node = child(main_thread, "main [interp]")
    # AND the inlining chain is expanded: main -> work [C2] -> hot [inlined]
    work = child(main_node, "work [C2]")
    hot = child(work, "hot [inlined]")
    assert (t.total[work], t.total[hot], t.selfs[hot]) == (8, 5, 5)
    # AND recursion is three nested nodes
    fib = child(main_node, "fib [C2]")
    depth = 0
    while t.children(fib):
        fib = child(fib, "fib [C2]")
        depth += 1
    assert depth == 2 and t.selfs[fib] == 2
    # AND every node's total is its self plus its children's totals
    for node in range(len(t)):
        assert t.total[node] == t.selfs[node] + sum(t.total[c] for c in t.children(node))


def test_tree_text_folds_small_paths() -> None:
    # GIVEN the tree; WHEN rendered with a 20 % threshold
    text = tree.render_text(tree.aggregate(sample_profile()), min_percent=20)
    # THEN big paths are shown with their share and small ones folded into one line
    assert " 62.50%" in text and "main  (thread)" in text
    assert "more below 20%" in text
    assert "fib [C2]" not in text
    # AND the JSON form nests the same numbers
    root = tree.to_json(tree.aggregate(sample_profile()))["root"]
    assert root["total"] == 16 and {c["function"] for c in root["children"]} == {"main", "gc"}


# ---- flame graph -----------------------------------------------------------------------------------

def rebuild(data: dict) -> list[tuple[int, str, int]]:
    """(depth, name, value) in pre-order, decoded the way the page does."""
    nodes, names = data["nodes"], data["names"]
    out, stack = [], []
    for f, v, c in zip(nodes["frame"], nodes["value"], nodes["children"]):
        out.append((len(stack), names[f], v))
        if stack:
            stack[-1] -= 1
        if c:
            stack.append(c)
        while stack and stack[-1] == 0:
            stack.pop()
    return out


def test_flamegraph_data_is_the_call_tree_in_preorder() -> None:
    # WHEN the flame graph data is built
    data = flamegraph.build(sample_profile(), title="t")
    nodes = rebuild(data)
    # THEN the root has all samples, the threads come next (by name) and children are sorted by name
    assert nodes[0] == (0, "all", 16)
    assert [n for n in nodes if n[0] == 1] == [(1, "gc", 6), (1, "main", 10)]
    assert flamegraph.node_count(data) == len(nodes)
    # AND each frame has its kind
    kinds = dict(zip(data["names"], (data["kinds"][k] for k in data["frameKinds"])))
    assert kinds["hot [inlined]"] == "inlined" and kinds["do_syscall_64"] == "kernel"
    assert kinds["[unknown]"] == "unknown" and kinds["main"] == "thread"


def test_flamegraph_html_is_self_contained_and_safe_against_hostile_names() -> None:
    # GIVEN a function name that would close a <script> element
    p = ProfileData()
    p.add(StackKey((frame(1, ("evil</script><script>alert(1)</script>", K.NATIVE)),), "t<b>", 1), 3)
    # WHEN rendered to HTML
    page = flamegraph.render(p, title="</title><script>x</script>")
    # THEN the page has exactly its own scripts, loads nothing from outside, and keeps the data intact
    assert page.count("<script") == 3
    assert "http://" not in page and "https://" not in page and " src=" not in page
    assert "&lt;/title&gt;" in page
    data = flamegraph.decode_data(page)
    assert "evil</script><script>alert(1)</script>" in data["names"]


def test_differential_flamegraph_has_base_values_for_the_union_of_paths() -> None:
    # GIVEN a base with memcpy and a new profile without it but with more fib
    base = sample_profile()
    new = ProfileData()
    new.add(StackKey((FIB, MAIN), "main", 1), 6)
    new.add(StackKey((WORK_WITH_HOT, MAIN), "main", 1), 2)
    # WHEN the differential data is built
    data = flamegraph.build_diff(base, new)
    rows = rebuild(data)
    base_values = data["nodes"]["base"]
    by_name = {(d, n): (v, base_values[i]) for i, (d, n, v) in enumerate(rows)}
    # THEN widths are the new profile and the base values ride along, including base-only paths (new 0)
    assert by_name[(0, "all")] == (8, 16)
    assert by_name[(3, "fib [C2]")] == (6, 2)
    assert by_name[(3, "work [C2]")] == (2, 8)
    assert by_name[(4, "memcpy")] == (0, 3)


# ---- speedscope ------------------------------------------------------------------------------------

def test_speedscope_has_one_sampled_profile_per_thread_with_root_first_stacks() -> None:
    doc = speedscope.build(sample_profile())
    frames = [f["name"] for f in doc["shared"]["frames"]]
    main = next(p for p in doc["profiles"] if p["name"] == "main")
    # THEN weights are CPU ns, stacks go root first, inlined callees after their caller
    assert main["unit"] == "nanoseconds" and main["endValue"] == 10 * 10_000_000
    stacks = {tuple(frames[i] for i in s): w for s, w in zip(main["samples"], main["weights"])}
    assert stacks[("main [interp]", "work [C2]", "hot [inlined]")] == 5 * 10_000_000
    assert doc["profiles"][0]["name"] == "main"   # the busiest thread opens first
    assert doc["$schema"] == speedscope.SCHEMA


# ---- diff ------------------------------------------------------------------------------------------

def test_diff_top_orders_by_growth_of_share() -> None:
    base = sample_profile()
    new = ProfileData()
    new.add(StackKey((FIB, MAIN), "main", 1), 6)
    new.add(StackKey((WORK_WITH_HOT, MAIN), "main", 1), 2)
    # WHEN the differential top is built
    report = diff.aggregate(base, new)
    first = report.rows[0]
    # THEN fib grew most: 75 % of new against 12.5 % of base self
    assert first.name == "fib [C2]"
    assert first.delta_self == pytest.approx(75.0 - 12.5)
    # AND what vanished shrank by its whole share
    memcpy = next(r for r in report.rows if r.name == "memcpy")
    assert memcpy.new_self == 0.0 and memcpy.delta_self == pytest.approx(-100 * 3 / 16)
    text = diff.render_text(report, limit=1)
    assert "+62.50" in text and "fib [C2]" in text
    # AND the text lists the biggest shrinkage under the growth
    growth, shrinkage = text.split("biggest shrinkage")
    assert "memcpy" in shrinkage and "-18.75" in shrinkage and "memcpy" not in growth


# ---- live top --------------------------------------------------------------------------------------

def test_live_top_increments_equal_a_batch_aggregation() -> None:
    # GIVEN a profile that grows in two steps
    full = sample_profile()
    growing = ProfileData()
    live = LiveTop()
    items = list(full.counts.items())
    for key, count in items[:3]:
        growing.add(key, count)
    # WHEN the live view folds in each step
    assert live.update(growing) == 10
    for key, count in items[3:]:
        growing.add(key, count)
    growing.add(items[0][0], 2)    # a stack seen before comes again
    full.add(items[0][0], 2)
    assert live.update(growing) == 8
    # THEN its rows equal top's on the whole profile
    snap = live.snapshot(sort="self", limit=100)
    batch = top.aggregate(full)
    assert [(r.name, r.self, r.total) for r in snap.rows] == [(r.name, r.self, r.total) for r in batch.rows]
    assert snap.samples == 18
    # AND per-thread rows are there too
    per_thread = live.snapshot(sort="total", per_thread=True, limit=1)
    assert (per_thread.rows[0].thread, per_thread.rows[0].name) == ("main", "main [interp]")


def test_live_top_keys() -> None:
    state = ViewState()
    # WHEN s, t and q are pressed
    assert state.handle("s") and state.sort == "total"
    assert state.handle("t") and state.per_thread
    assert not state.handle("x")
    state.handle("q")
    # THEN the view changed and quit is requested
    assert state.quit


def test_summary_counts_unknown_frames_weighted_by_samples() -> None:
    s = summarize(sample_profile())
    assert (s.samples, s.frames, s.unknown_frames, s.threads) == (16, 39, 1, 2)
