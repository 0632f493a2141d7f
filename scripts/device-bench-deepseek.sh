#!/usr/bin/env bash
# DeepSeek-V3 on the GPU machine by the peers' extrapolation: bench model on synthetic DeepSeek-V3
# Q4_K_M files of 5 and 8 layers (3 dense + 2 or 5 MoE layers; made in /tmp when missing), per
# placement; t(61 layers) = t(5) + 56 · (t(8) − t(5)) / 3 per token or per prompt (docs/PERF.md).
# One JSON object per line (scripts/device-bench-cuda.sh's format). Files: ~13 and ~32 GB; the 48-layer
# Qwen3 file is removed first when FREE_QWEN48=1 (the machine's disk holds 64 GB).
# Usage: scripts/device-bench-deepseek.sh [BUILD_DIR]
# Environment: LAYERS_LIST (default "5 8"), PROMPT (4096), GEN (32), REPS (1),
#   PLACEMENTS (default "experts=cpu,*=cuda:0 *=cuda:0").
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
export LD_LIBRARY_PATH="/tmp/tandem-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
[ "${FREE_QWEN48:-0}" = 1 ] && rm -f /tmp/tandem-qwen3-30b-a3b-48l-q4_k_m.gguf
status=0
for layers in ${LAYERS_LIST:-5 8}; do
  model=/tmp/tandem-deepseek-v3-${layers}l-q4_k_m.gguf
  [ -s "$model" ] || "$build/bin/tandem" synth --preset deepseek-v3 --layers "$layers" --quant q4_k_m -o "$model" >&2
  MODEL=$model LAYERS=$layers PRESET=deepseek-v3 REPS=${REPS:-1} GEN=${GEN:-32} PROMPT=${PROMPT:-4096} \
    PLACEMENTS="${PLACEMENTS:-experts=cpu,*=cuda:0 *=cuda:0}" bash scripts/device-bench-cuda.sh "$build" || status=1
done
exit $status
