#!/usr/bin/env bash
# The CUDA backend's tests alone on the GPU machine (faster than the whole ctest of device-build.sh):
# builds test_cuda, test_engine and the CLI with -DTANDEM_CUDA=ON, runs every [cuda] test (op by op
# against the CPU backend, then whole models on cuda:0), the placement tests, and one CLI run with
# --placement '*=cuda:0'. Usage: scripts/device-test-cuda.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
prefix=/tmp/tandem-deps
mkdir -p "$prefix"
for deb in .deps/*.deb; do dpkg -x "$deb" "$prefix"; done
multiarch=usr/lib/x86_64-linux-gnu
for pc in "$prefix"/$multiarch/pkgconfig/*.pc "$prefix"/usr/share/pkgconfig/*.pc; do
  [ -f "$pc" ] && sed -i "s|^prefix=/usr|prefix=$prefix/usr|" "$pc"
done
export PKG_CONFIG_PATH="$prefix/$multiarch/pkgconfig:$prefix/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
export LD_LIBRARY_PATH="$prefix/$multiarch:${LD_LIBRARY_PATH:-}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTANDEM_CUDA=ON \
  -DCMAKE_PREFIX_PATH="$prefix/usr;$prefix/$multiarch/cmake" \
  -DEigen3_DIR="$prefix/usr/share/eigen3/cmake" -DTANDEM_BUILD_CAPI=OFF
cmake --build "$build" -j"$(nproc)" --target test_cuda test_engine tandem_cli
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
status=0
"$build"/bin/test_cuda --durations yes || status=1
"$build"/bin/test_engine "[placement]" || status=1
model=tests/data/tiny-qwen3moe
"$build"/bin/tandem eval -m "$model" --ids 1,2,3,4,5 --logits-out /tmp/tandem-cpu.bin --placement '*=cpu' || status=1
"$build"/bin/tandem eval -m "$model" --ids 1,2,3,4,5 --logits-out /tmp/tandem-gpu.bin --placement '*=cuda:0' || status=1
"$build"/bin/tandem run -m "$model" --ids 1,2,3 -n 16 --temp 0 --placement '*=cuda:0' || status=1
exit $status
