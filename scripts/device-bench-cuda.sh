#!/usr/bin/env bash
# The CUDA backend's whole-model speed on the GPU machine, one JSON object per line: bench model on
# the 8-layer Qwen3-30B-A3B Q4_K_M synthetic file (made in /tmp when missing) with every role on the
# CPU, everything on cuda:0, and routed experts on the CPU with the rest on cuda:0 (the hybrid).
# The roofline/plan keys of bench model stay the CPU's; compare decode_tok_s across placements.
# Needs the tandem binary from scripts/device-build.sh with CUDA (BUILD_DIR, default build-gpu).
# Usage: scripts/device-bench-cuda.sh [BUILD_DIR]
# Environment: REPS (default 3), PROMPT (512), GEN (128), MODEL (/tmp/tandem-qwen3-30b-a3b-8l-q4_k_m.gguf),
#   PLACEMENTS (default "*=cpu *=cuda:0 experts=cpu,*=cuda:0"; "budget=24G" is the default placement
#   under --vram-budget 24G), BENCH_FLAGS (more bench model flags, e.g. "--defer-experts 1"),
#   PRESET (the synth preset named in the output, default qwen3-30b-a3b).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
tandem="$build/bin/tandem"
export LD_LIBRARY_PATH="/tmp/tandem-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
model=${MODEL:-/tmp/tandem-qwen3-30b-a3b-8l-q4_k_m.gguf}
[ -x "$tandem" ] || { echo "no $tandem: run scripts/device-build.sh first" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >&2 || true
if [ ! -s "$model" ]; then
  "$tandem" synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o "$model" >&2
fi
status=0
set -f  # the rules contain '*': no globbing of PLACEMENTS
for placement in ${PLACEMENTS:-"*=cpu" "*=cuda:0" "experts=cpu,*=cuda:0"}; do
  if [[ $placement == budget=* ]]; then where=(--vram-budget "${placement#budget=}"); else where=(--placement "$placement"); fi
  if out=$("$tandem" bench model -m "$model" -p "${PROMPT:-512}" -n "${GEN:-128}" -r "${REPS:-3}" -t 16 \
             --spread-tokens 0 "${where[@]}" ${BENCH_FLAGS:-} --json); then
    printf '{"bench":"model","preset":"%s","layers":%s,"placement":"%s","result":%s}\n' "${PRESET:-qwen3-30b-a3b}" "${LAYERS:-8}" "$placement" "$out"
  else
    echo "bench model --placement '$placement' failed" >&2
    status=1
  fi
done
exit $status
