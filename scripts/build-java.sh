#!/usr/bin/env bash
# Compiles the Java test workloads (tests/java) — filled in by the workloads change.
exit 0
