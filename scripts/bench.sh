#!/usr/bin/env bash
# Benchmarks: throughput of the float and exact fixed-point forward passes, and of the
# fault-injection engines (reference, incremental, cone). Needs the data of ./run setup (MNIST).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${FLIPGUARD_BUILD_DIR:-build}
for b in "$BUILD"/bench_*; do
  [[ -x $b ]] || continue
  echo "== $(basename "$b")"
  "$b" --benchmark_counters_tabular=true "$@"
done
