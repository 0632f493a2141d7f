#!/usr/bin/env bash
# One GPU-machine call for this stop's open questions: build; test_cuda (the KV tiers' batched import
# included), then again with programmatic dependent launch on; the 48-layer TTFT from the host and
# SSD tiers (bench kv, all-GPU); the 48-layer all-GPU decode with PDL off/on; per-op tables of an
# 8-layer CPU pp512 at 16 threads (TANDEM_PROFILE_OPS=1) with AVX-512 and AMX and the MoE layer at
# 512 and 4096 tokens with both, and (scaling) at 512 tokens on 1, 4, 8 and 16 threads.
# STEPS picks (default all but scaling and int8): test pdltest kv pdl profile experts scaling int8 int8q
# (int8: the [amx] kernel tests and the Q4_K tile kernels alone, the int8 strips among them; needs
# TARGETS to name test_engine and bench_cpu_kernels).
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/tmp/tandem-deps/usr/lib/x86_64-linux-gnu
steps=" ${STEPS:-test pdltest kv pdl profile experts} "
has() { [[ "$steps" == *" $1 "* ]]; }
t0=$SECONDS
lscpu | grep -E 'Model name|^CPU\(s\)'; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
TANDEM_DEVICE_TARGETS="${TARGETS:-test_cuda tandem_cli}" TANDEM_DEVICE_CTEST=0 \
  bash scripts/device-build.sh build-gpu > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "== built $((SECONDS-t0))s"
t=build-gpu/bin/tandem
if has int8q; then  # the int8 strips in brief: real-tile test, kernels alone, pp512 with and without, perplexity
  build-gpu/bin/test_engine "[amx]" 2>&1 | grep -E "SKIPPED|FAILED|passed|failed" | head -5
  build-gpu/bin/bench_cpu_kernels --benchmark_filter='tile/q4_k/(avx512_repacked|amx_repacked|amx_int8)/rows:(256/tokens:(32|256)|16384)' \
    --benchmark_min_time=0.1 2>&1 | grep tile/ | awk '{print $1, $NF}'
  f=/tmp/q3-8l.gguf; [ -f $f ] || $t synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o $f > /dev/null
  for cfg in "avx512 0" "amx 1" "amx 0" "amx 1"; do set -- $cfg
    echo "== pp512 isa=$1 int8=$2: $(TANDEM_CPU_ISA=$1 TANDEM_CPU_INT8=$2 timeout 60 $t bench model -m $f -p 512 -n 4 -r 2 -t 16 \
      --spread-tokens 0 --placement '*=cpu' --json 2>&1 | tail -1 | grep -oE '"prefill_tok_s[a-z_]*": ?[0-9.]+' | tr '\n' ' ')"
  done
  m=tests/data/trained-qwen3moe/qwen3moe-q4_k_m.gguf
  for i8 in 0 1; do echo "== ppl amx int8=$i8: $(TANDEM_CPU_ISA=amx TANDEM_CPU_INT8=$i8 $t perplexity -m $m \
    -f tests/data/trained-qwen3moe/eval-dev-head.txt -c 512 -t 16 --placement '*=cpu' --json 2>&1 | tail -1 | grep -oE '"ppl": ?[0-9.]+')"; done
  echo "== int8q done $((SECONDS-t0))s"
fi
if has int8; then
  build-gpu/bin/test_engine "[amx]" 2>&1 | grep -E "SKIPPED|FAILED|passed|failed" | head
  build-gpu/bin/bench_cpu_kernels --benchmark_filter='tile/q[46]_k/(avx512_repacked|amx_repacked|amx_int8|avx512|amx)/' \
    --benchmark_min_time=0.2 2>&1 | grep tile/ | awk '{print $1, $NF}'
  f=/tmp/q3-8l.gguf; [ -f $f ] || $t synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o $f > /dev/null
  for r in 1 2; do for cfg in "avx512 0" "amx 0" "amx 1"; do set -- $cfg
    echo "== pp512 isa=$1 int8=$2: $(TANDEM_CPU_ISA=$1 TANDEM_CPU_INT8=$2 $t bench model -m $f -p 512 -n 16 -r 2 -t 16 \
      --spread-tokens 0 --placement '*=cpu' --json 2>&1 | tail -1 | grep -oE '"(prefill|decode)_tok_s[a-z_]*": [0-9.]+' | tr '\n' ' ')"
  done; done
  m=tests/data/trained-qwen3moe/qwen3moe-q4_k_m.gguf
  for i8 in 0 1; do echo "== ppl trained q4_k_m amx int8=$i8: $(TANDEM_CPU_ISA=amx TANDEM_CPU_INT8=$i8 $t perplexity -m $m \
    -f tests/data/trained-qwen3moe/eval-dev-head.txt -c 512 -t 16 --placement '*=cpu' --json 2>&1 | tail -1)"; done
  for b in 512 4096; do echo "== experts b$b amx int8: $(TANDEM_CPU_ISA=amx TANDEM_CPU_INT8=1 $t bench experts --preset qwen3-30b-a3b --batch $b -t 16 --seconds 2 --stream-mib 256 --json 2>&1 | tail -1 | grep -o '"tflops[^,]*')"; done
  echo "== int8 done $((SECONDS-t0))s"
fi
if has test; then
  timeout 200 build-gpu/bin/test_cuda > $OUT/test_cuda.log 2>&1; echo "test_cuda rc=$? $((SECONDS-t0))s"
  tail -3 $OUT/test_cuda.log; grep -B3 -A8 "FAILED" $OUT/test_cuda.log | head -40
fi
if has pdltest; then
  TANDEM_CUDA_PDL=1 timeout 200 build-gpu/bin/test_cuda > $OUT/test_cuda_pdl.log 2>&1
  echo "test_cuda PDL rc=$? $((SECONDS-t0))s"; tail -3 $OUT/test_cuda_pdl.log
fi
f48=/tmp/q3-48l.gguf
if has kv || has pdl; then [ -f $f48 ] || $t synth --preset qwen3-30b-a3b --quant q4_k_m -o $f48 > /dev/null; fi
if has kv; then
  mkdir -p /tmp/kvdisk
  echo "== kv: $(timeout 240 $t bench kv -m $f48 --placement '*=cuda:0' --prompt-tokens 8192 --cached-tokens 7936 -t 16 --kv-disk /tmp/kvdisk --json 2>&1 | tail -1)"
  echo "== kv done $((SECONDS-t0))s"
fi
if has pdl; then for pdl in 0 1 0 1; do
  echo "== 48L all-GPU PDL=$pdl: $(TANDEM_CUDA_PDL=$pdl $t bench model -m $f48 -p 512 -n 64 -r 2 -t 16 --spread-tokens 0 --placement '*=cuda:0' --json 2>&1 | tail -1 | cut -c1-300)"
done; fi
f=/tmp/q3-8l.gguf
if has profile; then
  [ -f $f ] || $t synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o $f > /dev/null
  for isa in avx512 amx; do
    TANDEM_PROFILE_OPS=1 TANDEM_CPU_ISA=$isa $t bench model -m $f -p 512 -n 1 -r 1 -t 16 --spread-tokens 0 \
      --placement '*=cpu' > $OUT/profile-$isa.log 2>&1
    echo "== profile $isa $((SECONDS-t0))s"; head -14 $OUT/profile-$isa.log | cut -c1-130; grep pp512 $OUT/profile-$isa.log
  done
fi
if has experts; then for b in 512 4096; do for isa in avx512 amx; do
  echo "== experts b$b $isa: $(TANDEM_CPU_ISA=$isa $t bench experts --preset qwen3-30b-a3b --batch $b -t 16 --seconds 2 --stream-mib 512 --json 2>&1 | tail -1)"
done; done; fi
if has scaling; then for th in 1 4 8 16; do for isa in avx512 amx; do
  echo "== experts b512 -t $th $isa: $(TANDEM_CPU_ISA=$isa $t bench experts --preset qwen3-30b-a3b --batch 512 -t $th --seconds 2 --stream-mib 256 --json 2>&1 | tail -1 | grep -o '"tflops[^,]*')"
done; done; fi
echo "== all done $((SECONDS-t0))s"
