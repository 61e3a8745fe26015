#!/usr/bin/env bash
# The whole suite: lint, unit tests, then integration tests on real JVMs 17/21/25 with real eBPF.
# Under CI=true a test that cannot get root, BPF or a JVM fails instead of skipping.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

echo "[test] ruff"
.venv/bin/ruff check pyprof tests bench || exit 1

echo "[test] pytest"
$PY -m pytest -ra --durations=15 -p no:cacheprovider tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
