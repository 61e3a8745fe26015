"""Finding Debian's kernel headers for bcc (pyprof.kernel.kheaders)."""

from __future__ import annotations

from pathlib import Path

from pyprof.kernel import kheaders


def make_headers(root: Path, version: str) -> Path:
    build = root / f"linux-headers-{version}-amd64"
    (build / "include").mkdir(parents=True)
    (root / f"linux-headers-{version}-common").mkdir()
    return build


def test_newest_debian_headers_win(tmp_path) -> None:
    # GIVEN two header packages, the newer one with a smaller string sort order (6.1.0-9 vs 6.1.0-56)
    make_headers(tmp_path, "6.1.0-9")
    newest = make_headers(tmp_path, "6.1.0-56")
    # WHEN pyprof looks for headers
    build, common = kheaders.find_debian_headers(tmp_path)
    # THEN it takes the newest by version, with its -common sibling as the source tree
    assert build == newest
    assert common == tmp_path / "linux-headers-6.1.0-56-common"


def test_no_headers_means_none(tmp_path) -> None:
    assert kheaders.find_debian_headers(tmp_path) == (None, None)
