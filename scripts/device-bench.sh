#!/usr/bin/env bash
# Issue 15's CPU benchmarks on the GPU machine (16-core Xeon), printing one JSON object per line:
#   1. synthesises the 8-layer Qwen3-30B-A3B Q4_K_M file into /tmp (skipped when already there),
#   2. bench model on it with -t 16 (pp512, tg128, the decode roofline, the routing spread),
#   3. bench experts, batch 1, Q4_K_M, Qwen3-30B-A3B and DeepSeek-V3 shapes, at 1, 2, 4, 8, 16 threads.
# Needs the tandem binary from scripts/device-build.sh (BUILD_DIR, default build-gpu). Usage:
#   scripts/device-bench.sh [BUILD_DIR]
# Environment: REPS (default 3), PROMPT (512), GEN (128), SPREAD (4096), THREADS_LIST ("1 2 4 8 16"),
#   SECONDS_PER_RUN (2), MODEL (/tmp/tandem-qwen3-30b-a3b-8l-q4_k_m.gguf).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
tandem="$build/bin/tandem"
prefix=/tmp/tandem-deps  # where device-build.sh unpacked the Debian libraries
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
model=${MODEL:-/tmp/tandem-qwen3-30b-a3b-8l-q4_k_m.gguf}
reps=${REPS:-3}
threads_list=${THREADS_LIST:-"1 2 4 8 16"}
seconds=${SECONDS_PER_RUN:-2}

[ -x "$tandem" ] || { echo "no $tandem: run scripts/device-build.sh first" >&2; exit 1; }
lscpu | grep -E '^(Model name|Socket|Core|Thread|NUMA node\(s\))' >&2 || true

if [ ! -s "$model" ]; then
  "$tandem" synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o "$model" >&2
fi
printf '{"bench":"model","preset":"qwen3-30b-a3b","layers":8,"result":%s}\n' \
  "$("$tandem" bench model -m "$model" -p "${PROMPT:-512}" -n "${GEN:-128}" -r "$reps" -t 16 \
      --spread-tokens "${SPREAD:-4096}" --placement '*=cpu' --json)"

for preset in qwen3-30b-a3b deepseek-v3; do
  for t in $threads_list; do
    printf '{"bench":"experts","result":%s}\n' \
      "$("$tandem" bench experts --preset "$preset" --quant q4_k_m --batch 1 -t "$t" --seconds "$seconds" --json)"
  done
done
