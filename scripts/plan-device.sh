#!/usr/bin/env bash
# Issue 17's planner on the GPU machine, one JSON object per line:
#   1. synthesises the 8-layer Qwen3-30B-A3B Q4_K_M file into /tmp (skipped when already there),
#   2. tandem plan all on the CPU (measures and caches the DRAM read bandwidth at -t 16),
#   3. tandem plan with --vram-budget 24G and 32k context (the hybrid split; VRAM/PCIe still assumed),
#   4. bench model -t 16: plan_decode_tok_s next to the measured decode, and the fraction achieved.
# Needs the tandem binary from scripts/device-build.sh (BUILD_DIR, default build-gpu). Usage:
#   scripts/plan-device.sh [BUILD_DIR]
# Environment: MODEL (/tmp/tandem-qwen3-30b-a3b-8l-q4_k_m.gguf), REPS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
tandem="$build/bin/tandem"
prefix=/tmp/tandem-deps  # where device-build.sh unpacked the Debian libraries
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/tandem-cache}
model=${MODEL:-/tmp/tandem-qwen3-30b-a3b-8l-q4_k_m.gguf}

[ -x "$tandem" ] || { echo "no $tandem: run scripts/device-build.sh first" >&2; exit 1; }
if [ ! -s "$model" ]; then
  "$tandem" synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o "$model" >&2
fi
printf '{"run":"plan_cpu","result":%s}\n' "$("$tandem" plan -m "$model" -t 16 --placement '*=cpu' --json)"
printf '{"run":"plan_24g","result":%s}\n' "$("$tandem" plan -m "$model" -t 16 --vram-budget 24G -c 32768 --json)"
"$tandem" plan -m "$model" -t 16 --vram-budget 24G -c 32768 >&2
printf '{"run":"bench_model","result":%s}\n' \
  "$("$tandem" bench model -m "$model" -p 512 -n 128 -r "${REPS:-3}" -t 16 --spread-tokens 0 --placement '*=cpu' --json)"
