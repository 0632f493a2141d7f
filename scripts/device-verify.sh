#!/usr/bin/env bash
# One GPU-machine call that builds and checks what only that machine can: the CUDA tests, the AMX tile
# kernels, the CLI on cuda:0 placements, then the CUDA/AMX benchmarks. Each step has its own time
# limit and log under OUT (default /tmp/tandem-verify), so a hang or crash in one leaves the others.
# Usage: scripts/device-verify.sh [BUILD_DIR]   Environment: STEPS (default "build cuda amx cli bench").
# CPU MoE scaling: STEPS="build experts cpumoe" (bench experts at 1-16 threads for both presets; the
# ThreadPool's dispatch cost and the Qwen3 MoE layer with one vs two dispatches, bench_cpu_kernels).
# Decode kernels under Nsight Compute: STEPS="build ncu" (one eager decode step of the 8-layer file on
# cuda:0, each kernel's time and DRAM bytes, summarised by scripts/ncu-decode-step.py; a private rates
# cache, since the bandwidth probes run under ncu too and would poison the one bench and plan read).
# NCU_FLAGS="--cache-control none" keeps the caches warm between kernels (closer to a replayed step).
# Prefill and prefix hits on the 48-layer file, all on the GPU: STEPS="build prefill" (the flash attention and
# cuBLAS-linear kernels, `bench kv` 8k with 7.75k cached, a 4k prompt in one pass; for where the time goes,
# run bench kv again with TANDEM_PROFILE_OPS=1: a row per op and batch size).
# Hybrid prefill streaming (opt-in): STEPS="build bench48stream" (48-layer file, pp4096 in one
# --ubatch 4096 pass, experts streamed from their pinned mirrors; STREAM_MIN, UBATCH, PROMPT).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
out=${OUT:-/tmp/tandem-verify}
mkdir -p "$out"
export LD_LIBRARY_PATH="/tmp/tandem-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
step() {  # name seconds command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $((SECONDS - t0))s"
  tail -n "${TAIL:-15}" "$out/$name.log"
}
for s in ${STEPS:-build cuda amx cli bench}; do
  case $s in
    build) step build 300 env TANDEM_DEVICE_TARGETS="test_cuda test_engine tandem_cli bench_cpu_kernels bench_cuda_kernels" \
             TANDEM_DEVICE_CTEST=0 bash scripts/device-build.sh "$build" ;;
    cuda) step cuda 150 "$build/bin/test_cuda" --durations yes ${CUDA_FILTER:-} ;;
    amx) step amx 60 "$build/bin/test_engine" "[amx]" ;;
    placement) step placement 120 "$build/bin/test_engine" "[placement]" ;;
    cli) step cli 60 bash -c "for p in '*=cpu' '*=cuda:0' 'experts=cpu,*=cuda:0'; do echo \"-- \$p\"; $build/bin/tandem run -m tests/data/tiny-qwen3moe --ids 1,2,3 -n 16 --temp 0 --placement \"\$p\"; done" ;;
    bench) step bench 200 env REPS=${REPS:-2} GEN=${GEN:-64} bash scripts/device-bench-cuda.sh "$build" ;;
    profile) step profile 200 bash -c "m=/tmp/tandem-qwen3-30b-a3b-8l-q4_k_m.gguf; [ -s \$m ] || $build/bin/tandem synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o \$m; \
               for p in \${PROFILE_PLACEMENTS:-'*=cuda:0' 'experts=cpu,*=cuda:0'}; do echo \"-- \$p\"; \
               TANDEM_PROFILE_OPS=1 $build/bin/tandem run -m \$m -p 'hello world' -n 32 --temp 0 --ignore-eos --placement \"\$p\" --stats 2>&1 >/dev/null | head -30; done" ;;
    ncu) step ncu 150 bash -c "m=/tmp/tandem-qwen3-30b-a3b-8l-q4_k_m.gguf; [ -s \$m ] || $build/bin/tandem synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o \$m >/dev/null; \
               XDG_CACHE_HOME=$out/ncu-cache TANDEM_CUDA_GRAPHS=0 \$(command -v ncu || echo /usr/local/cuda/bin/ncu) --clock-control none \${NCU_FLAGS:-} \
               --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --log-file $out/decode-ncu.csv \
               $build/bin/tandem bench model -m \$m -p 4 -n 3 -r 1 --spread-tokens 0 --placement '*=cuda:0' >/dev/null 2>&1; \
               python3 scripts/ncu-decode-step.py $out/decode-ncu.csv" ;;
    bench48) step bench48 400 env MODEL=/tmp/tandem-qwen3-30b-a3b-48l-q4_k_m.gguf REPS=1 GEN=${GEN:-32} PROMPT=${PROMPT:-512} \
               LAYERS=48 PLACEMENTS="${PLACEMENTS:-experts=cpu,*=cuda:0 *=cuda:0}" bash -c "[ -s \$MODEL ] || $build/bin/tandem synth --preset qwen3-30b-a3b --quant q4_k_m -o \$MODEL; bash scripts/device-bench-cuda.sh $build" ;;
    hybridprobe) step hybridprobe 400 bash -c "set -f; m=/tmp/tandem-qwen3-30b-a3b-8l-q4_k_m.gguf; [ -s \$m ] || $build/bin/tandem synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o \$m >/dev/null; \
               b='$build/bin/tandem bench model -m '\$m' -r 1 -t 16 --spread-tokens 0 --json'; h='--placement experts=cpu,*=cuda:0'; \
               IFS=';'; for c in \${PROBE_CASES:-'-p 16 -n 16;-p 512 -n 4'}; do IFS=' '; echo \"-- hybrid \$c\"; scripts/device-hang-probe.sh \${PROBE_SECONDS:-60} \$b \$c \$h; IFS=';'; done" ;;
    bench48stream) step bench48stream 400 env TANDEM_STREAM_EXPERTS_MIN_TOKENS=${STREAM_MIN:-128} MODEL=/tmp/tandem-qwen3-30b-a3b-48l-q4_k_m.gguf \
               REPS=1 GEN=${GEN:-8} PROMPT=${PROMPT:-4096} LAYERS=48 BENCH_FLAGS="--ubatch ${UBATCH:-4096}" PLACEMENTS="experts=cpu,*=cuda:0" \
               bash -c "[ -s \$MODEL ] || $build/bin/tandem synth --preset qwen3-30b-a3b --quant q4_k_m -o \$MODEL; bash scripts/device-bench-cuda.sh $build" ;;
    benchds) step benchds 560 env FREE_QWEN48=1 bash scripts/device-bench-deepseek.sh "$build" ;;
    prefill) step prefill 500 bash -c "m=/tmp/tandem-qwen3-30b-a3b-48l-q4_k_m.gguf; [ -s \$m ] || $build/bin/tandem synth --preset qwen3-30b-a3b --quant q4_k_m -o \$m >/dev/null; \
               $build/bin/bench_cuda_kernels --benchmark_min_time=0.05 --benchmark_counters_tabular=true \
                 --benchmark_filter='gqa_prefill/f16/(256|1024|4096)/[12]/|linear/(q4_k|q6_k)/4096/2048/(256|512|4096)/2' 2>&1 | grep -E '^(gqa|linear)'; \
               $build/bin/tandem bench kv -m \$m --placement '*=cuda:0' --prompt-tokens 8192 --cached-tokens 7936 -t 16 -r 2 --json; \
               $build/bin/tandem bench model -m \$m -p 4096 -n 8 -r 2 -t 16 --spread-tokens 0 --ubatch 4096 --placement '*=cuda:0' --json" ;;
    bench48eager) step bench48eager 300 env TANDEM_CUDA_GRAPHS=0 MODEL=/tmp/tandem-qwen3-30b-a3b-48l-q4_k_m.gguf REPS=1 GEN=${GEN:-32} \
               PROMPT=${PROMPT:-512} LAYERS=48 PLACEMENTS="*=cuda:0" bash scripts/device-bench-cuda.sh "$build" ;;
    kernels) step kernels 150 "$build/bin/bench_cuda_kernels" --benchmark_min_time=${KERNEL_SECONDS:-0.05} \
               --benchmark_counters_tabular=true ${KERNEL_FILTER:+--benchmark_filter=$KERNEL_FILTER} ;;
    experts) step experts 300 bash -c "for p in qwen3-30b-a3b deepseek-v3; do for t in \${THREADS_LIST:-1 2 4 8 16}; do \
               $build/bin/tandem bench experts --preset \$p --quant q4_k_m --batch \${BATCH:-1} -t \$t --seconds 1 --json; done; done" ;;
    amxbench) step amxbench 150 env ONLY_AMX=1 bash scripts/kernels-bench.sh "$build" ;;
    cpumoe) step cpumoe 300 "$build/bin/bench_cpu_kernels" --benchmark_filter='^(pool/|moe/)' --benchmark_min_time=${KERNEL_SECONDS:-0.2} \
               --benchmark_counters_tabular=true ;;
  esac
done
