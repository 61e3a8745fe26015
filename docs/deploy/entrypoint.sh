#!/bin/sh
# The container's entry point (docs/deploy/Dockerfile): bcc compiles pyprof's BPF programs against the
# node's kernel headers when the DaemonSet mounted them (/lib/modules/$(uname -r)/build), else against
# the headers baked into the image (one merged tree: BCC_KERNEL_SOURCE takes a single directory).
set -eu
modules="${PYPROF_MODULES_DIR:-/lib/modules}"
baked="${PYPROF_IMAGE_HEADERS:-/opt/pyprof/kernel-headers}"
if [ -z "${BCC_KERNEL_SOURCE:-}" ] && [ ! -d "$modules/$(uname -r)/build/include" ] && [ -d "$baked/include" ]; then
    export BCC_KERNEL_SOURCE="$baked"
fi
exec "${PYPROF:-/opt/pyprof/bin/pyprof}" "$@"
