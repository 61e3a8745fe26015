"""`tree`: the top-down call tree as indented text (or JSON), threads first, with total and self %.

Paths under `min_percent` of all samples are folded into one "… N more" line per parent, so that a tree of
a large profile stays readable; `limit` caps the number of lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from pyprof.model import ProfileData
from pyprof.reporters.aggregate import ROOT_NODE, CallTree, ProfileSummary, build_tree, summarize


@dataclass
class TreeReport:
    summary: ProfileSummary
    tree: CallTree


def aggregate(profile: ProfileData, tiers: bool = True, by_thread: bool = True) -> TreeReport:
    tree = build_tree(profile, tiers=tiers, by_thread=by_thread)
    tree.freeze()
    return TreeReport(summarize(profile, tree.frames), tree)


def _children(tree: CallTree, node: int) -> list[int]:
    total, frame_of = tree.total, tree.frame_of
    return sorted(tree.children(node), key=lambda c: (-total[c], frame_of[c]))


def render_text(report: TreeReport, min_percent: float = 1.0, limit: Optional[int] = None) -> str:
    tree = report.tree
    total, selfs = tree.total, tree.selfs
    n = total[ROOT_NODE]
    threshold = n * min_percent / 100.0
    lines = [report.summary.line(),
             f"Call tree, paths of at least {min_percent:g}% of samples",
             f"{'total%':>8} {'self%':>7} {'total':>9} {'self':>9}  function"]
    body: list[str] = []

    def pct(v: int) -> float:
        return 100.0 * v / n if n else 0.0

    def row(node: int, prefix: str) -> None:
        name = tree.name(node)
        kind = tree.kind(node).value
        label = f"{name}  ({kind})" if node != ROOT_NODE and kind in ("thread", "kernel", "unknown") else name
        body.append(f"{pct(total[node]):>7.2f}% {pct(selfs[node]):>6.2f}% {total[node]:>9} {selfs[node]:>9}  "
                    f"{prefix}{label}")

    # iterative DFS: (node or elision text, prefix for this line, prefix for its children)
    stack: list[tuple[Union[int, str], str, str]] = [(ROOT_NODE, "", "")]
    while stack:
        if limit is not None and limit > 0 and len(body) >= limit:
            body.append(f"{'':>38}… (stopped at --limit {limit} lines)")
            break
        item, prefix, child_prefix = stack.pop()
        if isinstance(item, str):   # an elision line
            body.append(f"{'':>38}{prefix}{item}")
            continue
        row(item, prefix)
        kids = _children(tree, item)
        shown = [c for c in kids if total[c] >= threshold and total[c] > 0]
        hidden = [c for c in kids if not (total[c] >= threshold and total[c] > 0)]
        entries: list[Union[int, str]] = list(shown)
        if hidden:
            entries.append(f"… {len(hidden)} more below {min_percent:g}% "
                           f"({pct(sum(total[c] for c in hidden)):.2f}%)")
        for i in range(len(entries) - 1, -1, -1):
            last = i == len(entries) - 1
            branch = "└─ " if last else "├─ "
            stack.append((entries[i], child_prefix + branch, child_prefix + ("   " if last else "│  ")))
    return "\n".join(lines + body) + "\n"


def to_json(report: TreeReport, min_percent: float = 0.0) -> dict:
    """The tree as nested objects, paths under `min_percent` left out (built without recursion)."""
    tree = report.tree
    total, selfs = tree.total, tree.selfs
    threshold = total[ROOT_NODE] * min_percent / 100.0

    def node_json(node: int) -> dict:
        return {"function": tree.name(node), "kind": tree.kind(node).value, "total": total[node],
                "self": selfs[node], "children": []}

    root = node_json(ROOT_NODE)
    stack = [(ROOT_NODE, root)]
    while stack:
        node, out = stack.pop()
        for child in _children(tree, node):
            if total[child] >= threshold and total[child] > 0:
                child_out = node_json(child)
                out["children"].append(child_out)
                stack.append((child, child_out))
    return {"view": "tree", **report.summary.to_json(), "min_percent": min_percent, "root": root}
