#!/usr/bin/env bash
# Builds the peer (ik_llama.cpp, CPU only, llama-bench) on the GPU machine from a source tarball the
# lead carries in .deps/ik_llama.tar.gz (made with `git archive` of a fetched mirror; never committed),
# so Tandem and the peer run side by side on the same synthetic file. Usage:
#   scripts/peer-ik-llama.sh [BUILD_DIR]   → prints the path of llama-bench
set -euo pipefail
cd "$(dirname "$0")/.."
src=/tmp/ik_llama
build=${1:-/tmp/ik_llama-build}
if [ ! -x "$build/bin/llama-bench" ]; then
  rm -rf "$src" && mkdir -p "$src" && tar xzf .deps/ik_llama.tar.gz -C "$src"
  # Only llama-bench: the other examples are not in the tarball.
  printf 'add_subdirectory(llama-bench)\n' > "$src/examples/CMakeLists.txt"
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_CURL=OFF >/dev/null
  cmake --build "$build" -j"$(nproc)" --target llama-bench >/dev/null
fi
echo "$build/bin/llama-bench"
