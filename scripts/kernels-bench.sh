#!/usr/bin/env bash
# Fast CPU kernels on the GPU machine (issue 15): the kernel tests at that CPU's ISA level, then
# `tandem run --stats` prefill/decode, fast vs reference, on an 8-layer synthetic Qwen3-30B-A3B
# Q4_K_M and on the bundled trained model, with a thread-scaling pass for the fast kernels.
# Usage (after scripts/device-build.sh): scripts/kernels-bench.sh [BUILD_DIR]   (default build-gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
tandem="$build/bin/tandem"
export LD_LIBRARY_PATH="/tmp/tandem-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
"$build/bin/test_engine" "[kernels]" | tail -3
synth=/tmp/kernels-q3-8l.gguf
[ -f "$synth" ] || "$tandem" synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o "$synth"
prompt=$(head -c 2000 src/engine/forward.cpp)
stats() {  # model threads kernels max_tokens
  "$tandem" run -m "$1" -p "$prompt" -n "$4" --temp 0 --ignore-eos -t "$2" -c 4096 --cpu-kernels "$3" --stats \
    2>&1 >/dev/null | grep '^\[load'
}
for model in "$synth" tests/data/trained-qwen3moe/qwen3moe-q4_k_m.gguf; do
  echo "== $model"
  for kernels in fast reference; do
    n=128; [ "$kernels" = reference ] && [ "$model" = "$synth" ] && n=16
    echo "-t 16 $kernels: $(stats "$model" 16 "$kernels" "$n")"
  done
done
echo "== thread scaling, fast, $synth"
for t in 1 2 4 8 12 16; do echo "-t $t: $(stats "$synth" "$t" fast 64)"; done
