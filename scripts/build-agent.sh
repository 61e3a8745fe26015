#!/usr/bin/env bash
# Builds the optional Java agent (java-helper/, javac + jar) and puts it where pyprof finds it:
# pyprof/java/pyprof-agent.jar (package data, so `pip install` ships it). Idempotent: make rebuilds only
# when a source changed, and the copy happens only when the jar differs.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s -C java-helper all test-classes PYTHON="$(pwd)/.venv/bin/python"
mkdir -p pyprof/java
if ! cmp -s java-helper/build/pyprof-agent.jar pyprof/java/pyprof-agent.jar; then
  cp java-helper/build/pyprof-agent.jar pyprof/java/pyprof-agent.jar.tmp
  mv pyprof/java/pyprof-agent.jar.tmp pyprof/java/pyprof-agent.jar
  echo "[setup] agent jar: pyprof/java/pyprof-agent.jar"
fi
