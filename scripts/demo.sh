#!/usr/bin/env bash
# The furthest end-to-end pipeline that exists: a reference model trained by flipguard, quantized
# to 8-bit dynamic fixed point on calibration images, evaluated in exact integer arithmetic, then
# fault-injection campaigns on it (sections V-C, V-D), the architectural optimization (IV-A) and
# a short form of the study of V-E (reproduce: feature optimization, IV-B, included).
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
echo "== architectural optimization (IV-A): mnist-cnn's bottleneck, its pooling moved behind the 1x1 conv"
"$FG" harden --method architecture --model models/mnist-cnn-mnist.fgm --data mnist \
  --out "$OUT/mnist-cnn-hardened.fgm" | tee "$OUT/harden-architecture.txt"
echo "== exhaustive MSB campaign: mnist-cnn, its 64-neuron site 3, whole test set (Fig. 3a)"
"$FG" inject --model "$OUT/mnist-cnn-mnist-q8.fgm" --data mnist --campaign exhaustive --sites 3 \
  --out "$OUT/inject-mnist-cnn-site3"
echo "== bit error rate campaign: mnist-cnn-opt, every site, 200 test images, 20 runs a rate (Fig. 7)"
"$FG" inject --model "$OUT/mnist-cnn-opt-mnist-q8.fgm" --data mnist --campaign ber --images 200 \
  --runs 20 --out "$OUT/inject-mnist-cnn-opt-ber"
echo "== the study of V-E, short form: mnist-cnn, architecture- and feature-optimized (2 iterations of"
echo "   Algorithm 1 fine-tuning on 3,000 training images), MSB campaigns on 200 test images, BER"
echo "   campaigns on 200 images with 10 runs a rate (the full study: docs/harden.md; results: docs/results/)"
"$FG" reproduce --benchmark mnist --out "$OUT/study" --images 200 --ber-images 200 --runs 10 \
  --iterations 2 --until-accuracy "" --limit 3000 --relevance-images 200 --calibration-images 200 \
  | tee "$OUT/study.txt"
echo
echo "results are in $OUT/: quantized models (*-q8.fgm), their formats (*-quantize.txt), accuracies"
echo "(*.json), campaigns (inject-*/: summary.json, per-neuron .npy/.csv, histogram.svg, ber.svg),"
echo "the architecture-optimized mnist-cnn (mnist-cnn-hardened.fgm, harden-architecture.txt), and the"
echo "short study (study/results.json, study/report.html: open it in a browser)"
