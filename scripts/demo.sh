#!/usr/bin/env bash
# The furthest end-to-end pipeline that exists: a reference model trained by flipguard, quantized
# to 8-bit dynamic fixed point on calibration images, evaluated in exact integer arithmetic.
set -euo pipefail
cd "$(dirname "$0")/.."
FG=${FLIPGUARD_BIN:-build/flipguard}
OUT=${1:-out/demo}
mkdir -p "$OUT"
echo "== the model zoo (Table I and its architecture-optimized forms)"
"$FG" zoo | tee "$OUT/zoo.txt"
for name in mnist-cnn-opt-mnist mnist-cnn-mnist; do
  model=models/$name.fgm
  [[ -f $model ]] || { echo "missing $model" >&2; exit 1; }
  data=mnist
  echo "== $name: float accuracy, 8-bit quantization, fixed-point accuracy"
  "$FG" eval --model "$model" --data "$data" --json > "$OUT/$name-float.json"
  "$FG" quantize --model "$model" --data "$data" --out "$OUT/$name-q8.fgm" | tee "$OUT/$name-quantize.txt"
  "$FG" eval --model "$OUT/$name-q8.fgm" --data "$data" --json > "$OUT/$name-q8.json"
  "$FG" eval --model "$OUT/$name-q8.fgm" --data "$data"
done
echo
echo "results are in $OUT/: quantized models (*-q8.fgm), their formats (*-quantize.txt) and accuracies (*.json)"
