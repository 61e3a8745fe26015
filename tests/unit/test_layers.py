"""pyprof's packages form layers and imports point down only (docs/architecture.md, "Layers").

Every import counts, function-local ones included: a lazy import is still a dependency. A package may
import its own layer's modules only inside itself, and packages of lower layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

PYPROF = Path(__file__).resolve().parents[2] / "pyprof"

# Low to high. `pyprof` is the package's own __init__ (the version).
LAYERS: list[tuple[str, ...]] = [
    ("pyprof", "errors", "lru", "model"),          # shared vocabulary: errors, the bounded cache, frames
    ("procfs",),                                   # process memory, maps, ELF, liveness
    ("kernel", "symbols", "jvmtools"),             # BPF + kernel facts; native/kernel symbols; jcmd
    ("hotspot",),                                  # the attach-free HotSpot reader (one Layout per JVM)
    ("agent", "output"),                           # the Java agent's client; profile file formats
    ("codemap", "sources", "sampling", "reporters", "store"),
    ("export", "discovery"),                       # pushing windows to Pyroscope / OTLP; finding JVMs
    ("session",),                                  # a profiling run: sampler + targets + run loop
    ("daemon",),                                   # every JVM of the host, continuously
    ("cli",),                                      # commands: the only place errors become exit codes
]
LAYER_OF = {package: i for i, packages in enumerate(LAYERS) for package in packages}


def package_of(path: Path) -> str:
    rel = path.relative_to(PYPROF).with_suffix("").parts
    return "pyprof" if rel[0] == "__init__" else rel[0]


def imported_packages(source: str, package: str, is_init: bool = False) -> set[tuple[str, int]]:
    """(pyprof package, line) of every import in the module `source` of `package`, relative ones resolved."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: inside its own package unless it climbs out of it
                inside = node.level == 1 or (is_init and node.level == 2)
                names = [f"pyprof.{package}" if inside else f"pyprof.{node.module or ''}"]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "pyprof":
                out.add((parts[1] if len(parts) > 1 else "pyprof", node.lineno))
    return out


def imports_of(path: Path) -> set[tuple[str, int]]:
    return imported_packages(path.read_text(encoding="utf-8"), package_of(path), path.name == "__init__.py")


def test_every_package_has_a_layer() -> None:
    packages = {package_of(p) for p in PYPROF.rglob("*.py")}
    assert packages - set(LAYER_OF) == set(), "give each new package a layer in LAYERS (and the docs)"


def test_imports_point_down() -> None:
    upward = []
    for path in sorted(PYPROF.rglob("*.py")):
        src = package_of(path)
        for dst, line in imports_of(path):
            if dst == src:
                continue
            if dst not in LAYER_OF or LAYER_OF[dst] >= LAYER_OF[src]:
                upward.append(f"{path.relative_to(PYPROF.parent)}:{line}: {src} imports {dst}")
    assert upward == []


def test_the_check_sees_function_local_and_relative_imports() -> None:
    source = "def f():\n    from pyprof.cli.main import main\n    from . import memory\n    return main\n"
    assert {dst for dst, _ in imported_packages(source, "procfs")} == {"cli", "procfs"}
