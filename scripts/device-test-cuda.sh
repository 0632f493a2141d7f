#!/usr/bin/env bash
# The CUDA backend's tests alone on the GPU machine (faster than the whole ctest of device-build.sh):
# builds test_cuda, test_engine and the CLI with -DTANDEM_CUDA=ON (through device-build.sh), runs
# every [cuda] test (op by op against the CPU backend, then whole models on cuda:0), the placement
# tests, and the CLI with --placement '*=cuda:0'. Usage: scripts/device-test-cuda.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
TANDEM_DEVICE_TARGETS="test_cuda test_engine tandem_cli" TANDEM_DEVICE_CTEST=0 bash scripts/device-build.sh "$build"
export LD_LIBRARY_PATH="/tmp/tandem-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
status=0
"$build"/bin/test_cuda --durations yes || status=1
"$build"/bin/test_engine "[placement]" || status=1
model=tests/data/tiny-qwen3moe
for placement in '*=cpu' '*=cuda:0' 'experts=cpu,*=cuda:0'; do
  echo "== tandem run --placement '$placement'"
  "$build"/bin/tandem run -m "$model" --ids 1,2,3 -n 16 --temp 0 --placement "$placement" || status=1
done
echo "== a rule naming a GPU this machine lacks (expected: a clear error, exit 1)"
if "$build"/bin/tandem run -m "$model" --ids 1,2,3 -n 1 --placement '*=cuda:7'; then status=1; fi
exit $status
