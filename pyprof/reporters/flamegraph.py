"""The flame graph: one self-contained HTML file (inline CSS, JS and data; no network).

Aggregation (`build`) turns the call tree (threads first) into a compact JSON document: a frame table
(names, kinds) and the nodes in pre-order as integer columns (frame, samples, child count; children
sorted by name, the flame graph convention). The page embeds it gzip-compressed in base64 and inflates it
with the browser's DecompressionStream, rebuilds typed arrays and draws on a <canvas> only what is at
least half a pixel wide: 200,000 distinct stacks (two million tree nodes) make a 5.8 MB page that is
interactive in about a second.

A differential flame graph (`build_diff`) has the same shape plus each node's value in the base profile:
the width is the new profile (or the base one, a toggle), the colour how much the path's share grew (red)
or shrank (blue).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from importlib import resources
from typing import Any, Optional, Sequence

from pyprof import __version__
from pyprof.model import FrameKind, ProfileData
from pyprof.reporters.aggregate import (
    KIND_ORDER,
    ROOT_NODE,
    CallTree,
    FrameTable,
    ProfileSummary,
    build_tree,
    gc_paused,
    summarize,
)
from pyprof.reporters.sampletypes import TypedProfile, as_typed

TEMPLATE = "flamegraph.html"
DATA_MARKER = "/*__PYPROF_DATA__*/"
TITLE_MARKER = "__PYPROF_TITLE__"
KIND_LABELS = {
    "interpreted": "Interpreted", "c1": "C1 (tiers 1-3)", "c2": "C2 (tier 4)", "inlined": "Inlined",
    "jni": "JNI / native method", "stub": "JVM stub", "native": "Native (C/C++)", "kernel": "Kernel",
    "thread": "Thread", "unknown": "Unknown",
}


def _frame_table_json(table: FrameTable) -> tuple[list[str], list[int]]:
    """names[0] is the root ("all"); frame id f is at index f + 1."""
    kind_index = {kind: i for i, kind in enumerate(KIND_ORDER)}
    names = ["all"] + [frame.name for frame in table.frames]
    kinds = [kind_index[FrameKind.THREAD]] + [kind_index[frame.kind] for frame in table.frames]
    return names, kinds


def _preorder(tree: CallTree, names: list[str], base: Optional[list[int]] = None,
              more: Sequence[list[int]] = ()) -> tuple[dict[str, list[int]], list[list[int]]]:
    """The nodes in pre-order as columns (gzip packs columns better than interleaved triples): frame,
    value (samples), number of children, for diffs the value in the base profile; and each column of
    `more` (the other sample types' values, by node of `tree`) in the same order."""
    frames: list[int] = []
    values: list[int] = []
    counts: list[int] = []
    base_values: list[int] = []
    more_values: list[list[int]] = [[] for _ in more]
    # children are emitted by name: rank every frame once instead of comparing strings per node
    order = sorted(range(len(names)), key=names.__getitem__)
    rank = [0] * len(names)
    for position, index in enumerate(order):
        rank[index] = position
    frame_of, total = tree.frame_of, tree.total
    children = tree.children
    stack = [ROOT_NODE]
    with gc_paused():
        while stack:
            node = stack.pop()
            kids = children(node)
            frames.append(frame_of[node] + 1)
            values.append(total[node])
            counts.append(len(kids))
            if base is not None:
                base_values.append(base[node])
            for column, out in zip(more, more_values):
                out.append(column[node])
            if len(kids) > 1:
                kids.sort(key=lambda c: rank[frame_of[c] + 1], reverse=True)
                stack.extend(kids)
            elif kids:
                stack.append(kids[0])
    nodes = {"frame": frames, "value": values, "children": counts}
    if base is not None:
        nodes["base"] = base_values
    return nodes, more_values


def _document(names: list[str], kinds: list[int], nodes: dict[str, list[int]], summary: ProfileSummary,
              title: str, tiers: bool, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    doc = {
        "version": 1, "generator": f"pyprof {__version__}", "title": title, "subtitle": summary.line(),
        "tiers": tiers, "periodNs": summary.period_ns, "kinds": [k.value for k in KIND_ORDER],
        "kindLabels": KIND_LABELS, "names": names, "frameKinds": kinds, "nodes": nodes,
        "summary": summary.to_json(),
    }
    if extra:
        doc.update(extra)
    return doc


def build(profile: ProfileData, tiers: bool = True, title: str = "CPU flame graph") -> dict[str, Any]:
    """The page's data: frame table and pre-order nodes of the call tree, threads first."""
    return build_types([as_typed(profile)], tiers, title)


def build_types(typed: Sequence[TypedProfile], tiers: bool = True,
                title: str = "CPU flame graph") -> dict[str, Any]:
    """The page of several sample types (`-e cpu,alloc`): the union of their call trees, one value
    column per type, and a selector between them (the first shown first)."""
    if not typed:
        raise ValueError("a flame graph needs a profile")
    table = FrameTable(tiers)
    trees = [build_tree(t.profile, tiers=tiers, by_thread=True, frames=table) for t in typed]
    union = trees[0]
    others = _merged_values(union, trees[1:])
    union.freeze()
    names, kinds = _frame_table_json(table)
    nodes, columns = _preorder(union, names, more=others)
    types = []
    for index, t in enumerate(typed):
        summary = summarize(t.profile, table)
        entry: dict[str, Any] = {"name": t.name, "unit": t.unit, "subtitle": summary.line(),
                                 "summary": summary.to_json(),
                                 "periodNs": t.profile.period_ns if t.is_cpu_samples else 0}
        if index:
            entry["values"] = columns[index - 1]
        types.append(entry)
    doc = _document(names, kinds, nodes, summarize(typed[0].profile, table), title, tiers, {"types": types})
    doc["periodNs"] = types[0]["periodNs"]
    return doc


def _merged_values(union: CallTree, trees: Sequence[CallTree]) -> list[list[int]]:
    """Add every path of `trees` missing from `union` (with no value there) and return each tree's
    value of every node of the merged union (trees sharing the union's FrameTable)."""
    maps: list[list[int]] = []
    for tree in trees:
        union_of = [ROOT_NODE] * len(tree)
        parent, frame_of = tree.parent, tree.frame_of
        for node in range(1, len(tree)):          # a parent is always made before its children
            union_of[node] = union.child(union_of[parent[node]], frame_of[node])
        maps.append(union_of)
    out: list[list[int]] = []
    for tree, union_of in zip(trees, maps):
        values = [0] * len(union)
        for node in range(len(tree)):
            values[union_of[node]] = tree.total[node]
        out.append(values)
    return out


def build_diff(base: ProfileData, new: ProfileData, tiers: bool = True,
               title: str = "Differential CPU flame graph") -> dict[str, Any]:
    """Data for a differential flame graph: the union of both call trees, values of both."""
    table = FrameTable(tiers)
    base_tree = build_tree(base, tiers=tiers, by_thread=True, frames=table)
    new_tree = build_tree(new, tiers=tiers, by_thread=True, frames=table)
    base_values = _merged_values(new_tree, [base_tree])[0]
    new_tree.freeze()
    names, kinds = _frame_table_json(table)
    nodes, _ = _preorder(new_tree, names, base_values)
    base_summary = summarize(base, table)
    return _document(names, kinds, nodes, summarize(new, table), title, tiers, {
        "diff": {"baseSubtitle": base_summary.line(), "baseSummary": base_summary.to_json()},
    })


def encode_data(data: dict[str, Any]) -> str:
    """The page's data as the template embeds it: JSON, gzip-compressed, base64 (safe in <script>)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)).decode("ascii")


def decode_data(page: str) -> dict[str, Any]:
    """The data embedded in a rendered page (for tests and tools)."""
    start = page.index(">", page.index('id="pyprof-data"')) + 1
    end = page.index("</script>", start)
    return json.loads(gzip.decompress(base64.b64decode(page[start:end].strip())))


def template() -> str:
    return resources.files("pyprof.reporters").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")


def render_html(data: dict[str, Any]) -> str:
    page = template()
    if DATA_MARKER not in page:
        raise RuntimeError("flame graph template has no data marker")
    page = page.replace(TITLE_MARKER, html.escape(data.get("title", "pyprof"), quote=True))
    before, after = page.split(DATA_MARKER, 1)
    return before + encode_data(data) + after


def render(profile: ProfileData, tiers: bool = True, title: str = "CPU flame graph") -> str:
    return render_html(build(profile, tiers=tiers, title=title))


def render_types(typed: Sequence[TypedProfile], tiers: bool = True, title: str = "CPU flame graph") -> str:
    return render_html(build_types(typed, tiers=tiers, title=title))


def render_diff(base: ProfileData, new: ProfileData, tiers: bool = True,
                title: str = "Differential CPU flame graph") -> str:
    return render_html(build_diff(base, new, tiers=tiers, title=title))


def node_count(data: dict[str, Any]) -> int:
    return len(data["nodes"]["frame"])

