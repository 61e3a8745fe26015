"""`make test-kernels`: the core subset of the suite on every kernel of the matrix, each booted in a VM.

For each Debian kernel below: resolve its newest image through apt (a private apt configuration under the
cache: the machine's own sources are not touched), `apt-get download` the image and its headers, unpack
them into the cache, boot the image with virtme-ng (`vng --disable-kvm`: TCG; KVM hangs on this machine)
on a read-only snapshot of this machine's filesystem, and run scripts/kernels/guest_check.py inside.
The host's own kernel runs the same check directly. One line per kernel:

    RELEASE PASS|FAIL  figures...

The cache (default /var/lib/pyprof-kernels, or $PYPROF_KERNEL_CACHE) keeps packages and unpacked trees
across runs, outside the repository. Logs of every guest go to CACHE/logs/RELEASE.log.

Usage: matrix.py [--only NAME,...] [--list]   (names: the first column of MATRIX, and "host")
Exit status: 0 when every kernel passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pyprof.kernel import requirements  # noqa: E402

# Not under /var/cache: virtme-ng mounts a tmpfs over /var/cache in the guest, which then sees none of it.
CACHE = Path(os.environ.get("PYPROF_KERNEL_CACHE", "/var/lib/pyprof-kernels"))
DEBIAN = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org"
SOURCES = "\n".join(f"deb {DEBIAN}/{path} {suite} main" for path, suite in (
    ("debian", "bullseye"), ("debian-security", "bullseye-security"),
    ("debian", "bookworm"), ("debian-security", "bookworm-security"),
    ("debian", "trixie"), ("debian-security", "trixie-security"),
)) + "\n"
GUEST_MEMORY = "4G"
GUEST_CPUS = "2"
# vng gives TCG guests `-cpu max`, whose AVX emulation (QEMU 7.2) crashes C1 code of JDK 21 with SIGILL
# (measured: CodeCacheChurn dies in a LambdaForm nmethod). A CPU model without AVX runs it.
GUEST_CPU_MODEL = "Westmere"
# QEMU's multi-threaded TCG (one host thread per vCPU, its default) does not keep cross-modified code
# coherent: HotSpot patches a running nmethod's entry (make_not_entrant writes a jmp over it) while
# another vCPU executes it, and that vCPU runs a torn translation. Measured on 6.12: CodeCacheChurn, which
# makes methods not entrant all the time, died before pyprof touched it in 4 of 4 runs (SIGSEGV at a
# not-entrant nmethod's patched entry, garbage in rax/rbp); with one TCG thread for both vCPUs, 3 of 3
# passed. One TCG thread makes the other steps take 1.2-1.9x as long, so only the code-cache step gets
# a boot of its own on one TCG thread; the others keep one thread per vCPU.
GUEST_BOOTS = (
    # (steps, QEMU accelerator options)
    ("doctor,safety,attach,wall,record", "tcg"),
    ("codecache", "tcg,thread=single"),
)
VM_TIMEOUT = 1800            # seconds for one guest, boot included, at most
# What a guest takes, boot included, for --budget (measured on this 2-core machine under load: see
# docs/kernels.md); a kernel is started only when this much of the budget is left.
VM_SECONDS = {"supported": 1100, "below-minimum": 300, "host": 300}


@dataclass(frozen=True)
class Kernel:
    name: str          # the matrix's name for it (--only)
    image: str         # POSIX regex (apt-cache) of the linux-image package names; the newest is used
    expect: str        # "supported", or "below-minimum": doctor and record must refuse with exit 7
    why: str


MATRIX: tuple[Kernel, ...] = (
    Kernel("debian-6.1", r"linux-image-6\.1\.0-[0-9]+-amd64", "supported",
           "Debian 12, Amazon Linux 2023's series; needs the copy_from_user_nofault fix (>= 6.1.36)"),
    Kernel("debian-6.12", r"linux-image-6\.12\.[0-9]+\+deb13-amd64", "supported", "Debian 13, current LTS"),
    Kernel("debian-5.10", r"linux-image-5\.10\.0-[0-9]+-amd64", "below-minimum",
           "Debian 11: older than the 5.15 minimum: doctor and record refuse in one line, exit 7"),
)


def say(text: str) -> None:
    print(f"[kernels] {text}", file=sys.stderr, flush=True)


# ---- apt, privately ------------------------------------------------------------------------------------
def apt_options() -> list[str]:
    state = CACHE / "apt"
    return ["-o", f"Dir::Etc::SourceList={state}/sources.list", "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", f"Dir::State::Lists={state}/lists", "-o", f"Dir::Cache={state}/cache",
            "-o", "APT::Architecture=amd64", "-o", "Dir::State::status=/dev/null",
            "-o", "Debug::NoLocking=1", "-qq"]


def apt_update() -> None:
    state = CACHE / "apt"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text(SOURCES)
    done = subprocess.run(["apt-get", *apt_options(), "update"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        say(f"apt-get update failed (using what is cached): {done.stderr.strip()[-300:]}")


def apt_names(pattern: str) -> list[str]:
    done = subprocess.run(["apt-cache", *apt_options(), "search", "--names-only", f"^{pattern}$"],
                          capture_output=True, text=True, timeout=120)
    names = [line.split(" ", 1)[0] for line in done.stdout.splitlines()]
    return sorted(names, key=lambda n: [int(x) for x in re.findall(r"\d+", n)])


def apt_field(package: str, field: str) -> str:
    done = subprocess.run(["apt-cache", *apt_options(), "show", package], capture_output=True, text=True,
                          timeout=120)
    for line in done.stdout.splitlines():
        if line.startswith(f"{field}: "):
            return line.split(": ", 1)[1]
    return ""


def download(packages: list[str]) -> list[Path]:
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    out = []
    for package in packages:          # "name" or "name/suite"
        pattern = f"{package.split('/')[0]}_*.deb"
        have = sorted(debs.glob(pattern))
        if not have:
            subprocess.run(["apt-get", *apt_options(), "download", package], cwd=debs, check=True,
                           capture_output=True, timeout=1200)
            have = sorted(debs.glob(pattern))
        if not have:
            raise RuntimeError(f"apt-get download {package} left no {pattern} in {debs}")
        out.append(have[-1])
    return out


# ---- one kernel's files ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    release: str
    version: str        # the Debian package version: the upstream version, for the safety decision
    vmlinuz: Path
    headers: Path


def prepare(kernel: Kernel) -> Prepared:
    names = apt_names(kernel.image)
    if not names:
        raise RuntimeError(f"no package matches {kernel.image}")
    image = names[-1]
    release = image[len("linux-image-"):]
    version = apt_field(image, "Version")
    tree = CACHE / "root" / release
    vmlinuz = tree / "boot" / f"vmlinuz-{release}"
    headers = tree / "usr" / "src" / f"linux-headers-{release}"
    if not (vmlinuz.exists() and (headers / "include").exists()):
        header_pkg = f"linux-headers-{release}"
        common = [d.split()[0] for d in apt_field(header_pkg, "Depends").split(", ")
                  if d.split()[0].endswith("-common")]
        say(f"{kernel.name}: downloading {image} {version} and its headers")
        debs = download([image, header_pkg, *common])
        tree.mkdir(parents=True, exist_ok=True)
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True, timeout=600)
    # vng links /lib/modules/RELEASE to the modules next to the image; bcc finds the headers there too
    # (build: the arch-specific part, source: Debian's -common part, as linux-headers-* installs them)
    # (Debian 13's packages install under usr/lib/modules, older ones under lib/modules)
    common = sorted(headers.parent.glob("linux-headers-*-common"))
    candidates = (tree / "lib" / "modules" / release, tree / "usr" / "lib" / "modules" / release)
    modules = next((d for d in candidates if d.is_dir()), None)
    if modules is None:
        raise RuntimeError(f"{image} has no modules directory for {release}")
    for link, target in (("build", headers), ("source", common[-1] if common else headers)):
        path = modules / link
        if path.is_symlink() and path.resolve() != target.resolve():
            path.unlink()
        if not path.is_symlink():
            path.symlink_to(target)
    return Prepared(release, version, vmlinuz, headers)


def virtiofsd() -> Path | None:
    """Debian 13's virtiofsd with its own glibc (Debian 12 has only QEMU's C one, which vng refuses):
    the guest's root over virtio-fs starts Python 4x faster than over 9p in TCG (measured: bcc import
    15 s against 58 s)."""
    tools = CACHE / "tools"
    wrapper = tools / "bin" / "virtiofsd"
    if wrapper.exists():
        return wrapper.parent
    try:
        debs = download(["virtiofsd", "libc6/trixie"])
        for deb, into in zip(debs, ("virtiofsd", "libc6")):
            (tools / into).mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tools / into)], check=True, timeout=300)
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        say(f"no virtiofsd ({e}): the guests' root goes over 9p, ~4x slower")
        return None
    libs = tools / "libc6" / "usr" / "lib" / "x86_64-linux-gnu"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(f"#!/bin/sh\nexec {libs}/ld-linux-x86-64.so.2 --library-path "
                       f"{libs}:/lib/x86_64-linux-gnu {tools}/virtiofsd/usr/libexec/virtiofsd \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper.parent


# ---- running the check -----------------------------------------------------------------------------------
def guest_command(headers: Path | None, expect: str, steps: str | None = None) -> list[str]:
    cmd = [str(ROOT / ".venv" / "bin" / "python"), "scripts/kernels/guest_check.py", "--expect", expect]
    return cmd + (["--headers", str(headers)] if headers else []) + (["--steps", steps] if steps else [])


def run_logged(cmd: list[str], log: Path, env: dict[str, str], timeout: float) -> tuple[dict | None, str]:
    """Run, teeing to `log`; the guest's result line parsed, or None and the reason.

    The command gets its own process group so that a timeout ends vng *and* the QEMU it started."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result = None
    timed_out = threading.Event()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        watchdog = threading.Timer(max(1.0, timeout), kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if line.startswith("PYPROF-KERNEL-RESULT "):
                    result = json.loads(line.split(" ", 1)[1])
                elif line.startswith("[guest] "):
                    say("  " + line.strip())
            proc.wait()
        finally:
            watchdog.cancel()
    if timed_out.is_set() and result is None:
        return None, f"timed out after {timeout:.0f} s; see {log}"
    return result, "" if result else f"no result line (exit {proc.returncode}); see {log}"


def run_in_vm(kernel: Kernel, prepared: Prepared, tools: Path | None,
              timeout: float) -> tuple[dict | None, str]:
    """The guest check on `kernel`: one boot below the minimum, else one per GUEST_BOOTS entry, their
    figures and failures merged (None and the reason when a boot gave no result)."""
    boots = GUEST_BOOTS if kernel.expect == "supported" else ((None, "tcg"),)
    deadline = time.monotonic() + timeout
    merged: dict = {"figures": {}, "failed": []}
    for i, (steps, accel) in enumerate(boots):
        log = CACHE / "logs" / (f"{prepared.release}.log" if i == 0 else f"{prepared.release}-{steps}.log")
        result, problem = boot_and_check(prepared, guest_command(prepared.headers, kernel.expect, steps),
                                         accel, tools, log, deadline - time.monotonic())
        if result is None:
            return None, problem
        merged["figures"].update(result["figures"])
        merged["failed"] += result["failed"]
    return merged, ""


def boot_and_check(prepared: Prepared, command: list[str], accel: str, tools: Path | None, log: Path,
                   timeout: float) -> tuple[dict | None, str]:
    vng = ROOT / ".venv" / "bin" / "vng"
    cmd = ["nice", "-n", "10", str(vng), "--run", str(prepared.vmlinuz), "--disable-kvm",
           "--cpus", GUEST_CPUS, "--memory", GUEST_MEMORY,
           f"--qemu-opts=-cpu {GUEST_CPU_MODEL} -accel {accel}", "--exec", " ".join(command)]
    path = os.pathsep.join(p for p in (str(tools) if tools else "", str(ROOT / ".venv" / "bin"),
                                       os.environ.get("PATH", "")) if p)
    return run_logged(cmd, log, dict(os.environ, PATH=path), timeout)


def summary_line(release: str, result: dict | None, problem: str, seconds: float) -> tuple[str, str]:
    if result is None:
        return "FAIL", f"{release} FAIL  {problem} ({seconds:.0f} s)"
    f = result["figures"]
    ok = not result["failed"]
    keys = ("upstream", "doctor", "safety", "code", "safety_by_release_name", "shares", "samples",
            "java_complete_pct", "rooted_pct", "unknown_frames_pct", "lost", "record_exit", "record_samples",
            "codelist", "ls_in_codelist", "uprobe_compiles", "record", "wall_retried")
    figures = "  ".join(f"{k}={f[k]}" for k in keys if k in f)
    failed = "" if ok else "  FAILED: " + "; ".join(result["failed"])
    status = "PASS" if ok else "FAIL"
    return status, f"{release} {status}  {figures}  wall={seconds:.0f}s{failed}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ", ".join([k.name for k in MATRIX] + ["host"])
    parser.add_argument("--only", help=f"comma-separated names: {names}")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds this run may take (default: no limit); a VM that would not fit in "
                             "what is left is not started, and its line says so")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    known = {k.name for k in MATRIX} | {"host"}
    chosen = set(args.only.split(",")) if args.only else known
    if chosen - known:
        print(f"test-kernels: unknown kernel name(s) {', '.join(sorted(chosen - known))}; known: {names}",
              file=sys.stderr)
        return 2
    if args.list:
        for k in MATRIX:
            print(f"{k.name:<12} {k.expect:<14} {k.why}")
        print(f"{'host':<12} {'supported':<14} this machine's own kernel ({platform.release()}), no VM")
        return 0
    if os.geteuid() != 0:
        print("test-kernels: needs root (it boots VMs and loads BPF)", file=sys.stderr)
        return 1
    if shutil.which("qemu-system-x86_64") is None:
        print("test-kernels: qemu-system-x86_64 missing: run `make setup`", file=sys.stderr)
        return 1
    started = time.monotonic()
    deadline = started + args.budget if args.budget is not None else float("inf")
    lines: list[tuple[str, str]] = []      # (PASS|FAIL|NOT RUN, line)

    def report(status: str, line: str) -> None:
        lines.append((status, line))
        print(line, flush=True)

    vm_kernels = [k for k in MATRIX if k.name in chosen]
    tools: Path | None = None
    apt_ready = False
    if "host" in chosen and deadline - time.monotonic() < VM_SECONDS["host"]:
        report("NOT RUN", f"{platform.release()} (host) NOT RUN  {max(0, deadline - time.monotonic()):.0f} s "
               f"of the time budget left, it needs ~{VM_SECONDS['host']} s")
    elif "host" in chosen:
        began = time.monotonic()
        say(f"host: {platform.release()} (no VM)")
        result, problem = run_logged(guest_command(None, "supported"), CACHE / "logs" / "host.log",
                                     dict(os.environ), min(VM_TIMEOUT, deadline - began))
        report(*summary_line(f"{platform.release()} (host)", result, problem, time.monotonic() - began))
    for kernel in vm_kernels:
        began = time.monotonic()
        needs = VM_SECONDS[kernel.expect]
        if deadline - began < needs:
            report("NOT RUN", f"{kernel.name} NOT RUN  {max(0, deadline - began):.0f} s of the time budget "
                   f"left, a {kernel.expect} guest needs ~{needs} s")
            continue
        if not apt_ready:      # only once a VM is sure to run: the index and virtiofsd
            apt_update()
            tools = virtiofsd()
            apt_ready = True
        try:
            prepared = prepare(kernel)
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            report("FAIL", f"{kernel.name} FAIL  cannot get the kernel: {e}")
            continue
        upstream = requirements.parse_release(prepared.version) or (0, 0, 0)
        if kernel.expect == "supported" and requirements.in_freeze_range(upstream):
            # the safety decision by version: never sample on a kernel that may freeze (the guest would
            # hang until the timeout); the matrix must name a fixed image instead
            report("FAIL", f"{prepared.release} FAIL  {prepared.version} is in the copy_from_user_nofault "
                   "freeze range: not booted")
            continue
        say(f"{kernel.name}: booting {prepared.release} ({prepared.version}) in TCG")
        result, problem = run_in_vm(kernel, prepared, tools, min(VM_TIMEOUT, deadline - began))
        report(*summary_line(f"{prepared.release} ({prepared.version})", result, problem,
                             time.monotonic() - began))
    counts = {status: sum(1 for s, _ in lines if s == status) for status in ("PASS", "FAIL", "NOT RUN")}
    say(f"matrix wall time {time.monotonic() - started:.0f} s; not run (time budget): {counts['NOT RUN']}")
    print(f"kernels: {counts['PASS']} passed, {counts['FAIL']} failed")
    return 0 if counts["FAIL"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
