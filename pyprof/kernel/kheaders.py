"""Kernel headers for bcc.

bcc compiles BPF C at run time against /lib/modules/$(uname -r)/build (and .../source). Kernels built
outside the distribution (like the 6.18 one here) ship no headers; Debian's newest
``linux-headers-*-amd64`` (and its ``-common`` sibling) work for the BPF programs pyprof uses, which only
need stable UAPI types. ``ensure()`` finds them and, as root, links them into place; ``status()`` explains
what is missing for ``pyprof doctor``.

Run as ``python -m pyprof.kernel.kheaders --install`` from ``make setup``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SRC_ROOT = Path("/usr/src")


@dataclass(frozen=True)
class HeaderStatus:
    ok: bool
    build_dir: Optional[Path]
    detail: str
    fix: str = ""


def modules_dir(release: Optional[str] = None) -> Path:
    return Path("/lib/modules") / (release or platform.release())


def _version_key(path: Path) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", path.name))


def find_debian_headers(src_root: Path = SRC_ROOT) -> tuple[Optional[Path], Optional[Path]]:
    """The newest linux-headers-*-amd64 (build) and its -common sibling (source), if installed."""
    builds = sorted(src_root.glob("linux-headers-*-amd64"), key=_version_key)
    for build in reversed(builds):
        if (build / "include").is_dir() or (build / "Makefile").exists():
            common = build.with_name(build.name[: -len("-amd64")] + "-common")
            return build, common if common.is_dir() else None
    return None, None


def status(release: Optional[str] = None) -> HeaderStatus:
    mdir = modules_dir(release)
    build = mdir / "build"
    if build.is_dir() and (build / "include").exists():
        return HeaderStatus(True, build.resolve(), f"{build} -> {build.resolve()}")
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and Path(env).is_dir():
        return HeaderStatus(True, Path(env), f"BCC_KERNEL_SOURCE={env}")
    found, _ = find_debian_headers()
    if found:
        return HeaderStatus(
            False, found, f"{build} missing; {found} is installed but not exposed",
            "run `make setup` (or: python -m pyprof.kernel.kheaders --install as root)",
        )
    return HeaderStatus(
        False, None, f"{build} missing and no linux-headers-*-amd64 in /usr/src",
        "apt-get install linux-headers-amd64, then `make setup`",
    )


def install(release: Optional[str] = None) -> HeaderStatus:
    """Link Debian's headers into /lib/modules/<release>/{build,source} when the kernel has none."""
    current = status(release)
    if current.ok:
        return current
    build, common = find_debian_headers()
    if build is None:
        return current
    mdir = modules_dir(release)
    mdir.mkdir(parents=True, exist_ok=True)
    _relink(mdir / "build", build)
    if common is not None:
        _relink(mdir / "source", common)
    return status(release)


def _relink(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink():
            link.unlink()
        else:  # a real directory: somebody's own headers; leave them
            return
    link.symlink_to(target)


def bcc_environment() -> dict[str, str]:
    """Env overrides that let bcc find headers even when the links were not made (non-root setup)."""
    if status().ok:
        return {}
    build, _ = find_debian_headers()
    return {"BCC_KERNEL_SOURCE": str(build)} if build else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="link Debian's headers into place")
    args = parser.parse_args()
    result = install() if args.install else status()
    print(f"[setup] kernel headers: {'ok' if result.ok else 'MISSING'} ({result.detail})")
    if not result.ok and result.fix:
        print(f"[setup]   fix: {result.fix}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
