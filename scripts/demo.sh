#!/usr/bin/env bash
# The main job on the bundled workload: start a JVM whose time split is known (60/30/10, the last
# part in a JNI library), attach to it from outside, write a pprof profile and a flame graph.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_PROFILE="${1:-10}"
OUT=demo-out
mkdir -p "$OUT"
JAVA=/usr/lib/jvm/java-17-openjdk-amd64/bin/java

$JAVA -cp tests/java/build/classes -Djava.library.path=tests/java/build/native \
  pyproftest.Phases 60,30,10 > "$OUT/workload.out" 2> "$OUT/workload.err" &
JVM=$!
trap 'kill $JVM 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q ready "$OUT/workload.out" 2>/dev/null && break; sleep 0.1; done

echo "[demo] profiling JVM $JVM (pyproftest.Phases) for $SECONDS_TO_PROFILE s"
.venv/bin/pyprof attach "$JVM" -d "$SECONDS_TO_PROFILE" -o "$OUT/profile.pb.gz"
.venv/bin/pyprof report "$OUT/profile.pb.gz" --format flamegraph -o "$OUT/flamegraph.html"
.venv/bin/pyprof report "$OUT/profile.pb.gz" --format top --limit 10
echo "[demo] wrote $OUT/profile.pb.gz (pprof: go tool pprof -top $OUT/profile.pb.gz) and $OUT/flamegraph.html"
