#!/usr/bin/env bash
# The GPU machine's decode profile (docs/PERF.md, issue 16): Nsight Compute's time and DRAM bytes for
# every kernel of one eager decode step of the synthetic Qwen3-30B-A3B (8 layers, Q4_K_M, all on
# cuda:0), summarised per kernel by scripts/ncu-decode-step.py, then the graph-replayed decode speed
# of the 8- and 48-layer files. Run after scripts/device-build.sh (tandem_cli in BUILD_DIR).
# Usage: scripts/device-decode-profile.sh [BUILD_DIR]; OUT (default /tmp/tandem-profile) keeps the CSV;
# LAYERS="8 48" picks the benched files; PLACEMENT (default '*=cuda:0').
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
out=${OUT:-/tmp/tandem-profile}
mkdir -p "$out"
export LD_LIBRARY_PATH="/tmp/tandem-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
tandem="$build/bin/tandem"
placement=${PLACEMENT:-*=cuda:0}
ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for layers in $(printf '%s\n' 8 ${LAYERS:-8 48} | sort -un); do  # the profile's 8 layers and the benched files
  f=/tmp/qwen3-30b-a3b-${layers}l-q4_k_m.gguf
  [ -f "$f" ] || "$tandem" synth --preset qwen3-30b-a3b --layers "$layers" --quant q4_k_m -o "$f" > /dev/null
done
# The profile runs the kernels under ncu, whose bandwidth probes would poison the cached machine
# rates that `bench model` and `plan` read: a private cache directory for it.
XDG_CACHE_HOME="$out/cache" TANDEM_CUDA_GRAPHS=0 timeout 120 "$ncu" --clock-control none \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --log-file "$out/decode.csv" \
  "$tandem" bench model -m /tmp/qwen3-30b-a3b-8l-q4_k_m.gguf -p 4 -n 3 -r 1 --spread-tokens 0 \
  --placement "$placement" > "$out/ncu-run.log" 2>&1 || echo "ncu exited with $?" >&2
python3 scripts/ncu-decode-step.py "$out/decode.csv"
for layers in ${LAYERS:-8 48}; do
  "$tandem" bench model -m /tmp/qwen3-30b-a3b-${layers}l-q4_k_m.gguf -p 512 -n 64 -r 2 --spread-tokens 0 \
    --placement "$placement"
done
