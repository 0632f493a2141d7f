#!/usr/bin/env bash
# `tandem bench serve` on the GPU machine for docs/PERF.md: a synthetic Qwen3-30B-A3B (tandem synth,
# Q4_K_M), 1/4/16/32 concurrent streaming clients over loopback. Run after scripts/device-build.sh
# (needs the cpp-httplib .debs in .deps/: libcpp-httplib-dev, libcpp-httplib0.11 and the headers its
# pkg-config flags pull in: libssl-dev, libbrotli-dev, zlib1g-dev).
# Usage: scripts/bench-serve-device.sh [BUILD_DIR]; LAYERS=N (default 48), MODEL=path to reuse a file,
# PLACEMENTS='RULES ...' (default: all on the CPU, hybrid, all on the GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
layers=${LAYERS:-48}
model=${MODEL:-/tmp/qwen3-30b-a3b-${layers}l-q4_k_m.gguf}
prefix=/tmp/tandem-deps
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
[ -f "$model" ] || "$build/bin/tandem" synth --preset qwen3-30b-a3b --layers "$layers" -o "$model"
set -f  # the rules contain '*'
# PLACEMENTS: the rules to measure, one table each (the defaults there are the hybrid ones).
for placement in ${PLACEMENTS:-"*=cpu" "experts=cpu,*=cuda:0" "*=cuda:0"}; do
  echo "== --placement $placement" >&2
  "$build/bin/tandem" bench serve -m "$model" --clients 1,4,16,32 --requests 2 --prompt-tokens 128 \
    --max-tokens 64 -r 2 --placement "$placement"
  "$build/bin/tandem" bench model -m "$model" -p 16 -n 32 -r 3 --spread-tokens 0 --placement "$placement"
done
