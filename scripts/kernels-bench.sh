#!/usr/bin/env bash
# Fast CPU kernels on the GPU machine (issue 15): the kernel tests at that CPU's ISA level (the AMX
# tile kernels against the scalar kernels included: "[amx]"), the tile kernels alone (AMX vs AVX-512,
# bench_cpu_kernels), then `tandem run --stats` prefill/decode, fast vs reference, on an 8-layer
# synthetic Qwen3-30B-A3B Q4_K_M and on the bundled trained model, with a thread-scaling pass for the
# fast kernels, and bench model pp512/tg64 with AMX and with AMX held off (TANDEM_CPU_ISA=avx512), each
# on Q4_K strips repacked at load and on the mapped rows (TANDEM_CPU_REPACK=1/0).
# Usage (after scripts/device-build.sh): scripts/kernels-bench.sh [BUILD_DIR]   (default build-gpu)
# ONLY_AMX=1: the AMX test, the tile benchmark and the bench model pair only.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
tandem="$build/bin/tandem"
export LD_LIBRARY_PATH="/tmp/tandem-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
grep -o -m1 -w amx_tile /proc/cpuinfo || echo "no amx_tile flag in /proc/cpuinfo"
"$build/bin/test_engine" "[amx]" -s 2>&1 | grep -E "SKIPPED|FAILED|passed|failed" | head -20
"$build/bin/test_engine" "[kernels]" | tail -3
if [ -x "$build/bin/bench_cpu_kernels" ]; then
  "$build/bin/bench_cpu_kernels" --benchmark_filter='tile/q[456]_k/(avx512_dot|avx512|amx|avx512_repacked|amx_repacked|amx_int8)/' --benchmark_min_time=0.2 2>&1 | grep tile/
fi
synth=/tmp/kernels-q3-8l.gguf
[ -f "$synth" ] || "$tandem" synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o "$synth"
for isa in amx avx512; do
  for repack in 1 0; do
    echo "== bench model, TANDEM_CPU_ISA=$isa TANDEM_CPU_REPACK=$repack, -t 16"
    TANDEM_CPU_ISA=$isa TANDEM_CPU_REPACK=$repack "$tandem" bench model -m "$synth" -p 512 -n 64 -r 3 -t 16 \
      --spread-tokens 0 --placement '*=cpu' --json
  done
done
[ "${ONLY_AMX:-0}" = 1 ] && exit 0
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
