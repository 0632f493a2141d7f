#!/usr/bin/env bash
# One GPU-machine call after CPU kernel work: build, the CUDA tests (test_cuda), bench experts at 16 threads
# (AVX-512 and AMX, batch 1 and 512), then scripts/kernels-bench.sh with ONLY_AMX=1. Logs in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/tmp/tandem-deps/usr/lib/x86_64-linux-gnu
t0=$SECONDS
lscpu | grep -E 'Model name|^CPU\(s\)'
nvidia-smi --query-gpu=name --format=csv,noheader
TANDEM_DEVICE_TARGETS="test_cuda test_engine bench_cpu_kernels tandem_cli" TANDEM_DEVICE_CTEST=0 \
  bash scripts/device-build.sh build-gpu > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "== built $((SECONDS-t0))s"
timeout 150 build-gpu/bin/test_cuda > $OUT/test_cuda.log 2>&1; echo "test_cuda rc=$?"; tail -4 $OUT/test_cuda.log
grep -B3 -A6 "FAILED" $OUT/test_cuda.log | head -40
echo "== test_cuda done $((SECONDS-t0))s"
for pb in qwen3-30b-a3b:1 qwen3-30b-a3b:512; do p=${pb%:*} b=${pb#*:}
  for isa in avx512 amx; do
    echo "== experts $p batch $b isa $isa: $(TANDEM_CPU_ISA=$isa build-gpu/bin/tandem bench experts --preset $p --batch $b -t 16 --seconds 1 --stream-mib 512 --json 2>&1 | tail -1)"
  done; done
echo "== experts done $((SECONDS-t0))s"
ONLY_AMX=1 bash scripts/kernels-bench.sh build-gpu 2>&1 | tee $OUT/kernels.log | grep -vE '^\s*$' | cut -c1-400
echo "== all done $((SECONDS-t0))s"
