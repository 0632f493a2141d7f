#!/usr/bin/env bash
# Builds and tests Tandem on the GPU machine, which has a toolchain but no Debian packages: the .debs
# in .deps/ (fetched here with `apt-get download`, carried along) are unpacked into a private prefix that
# CMake and pkg-config are pointed at. Usage: scripts/device-build.sh [BUILD_DIR] (then ctest runs).
# TANDEM_DEVICE_TARGETS="tandem_cli ..." builds only those; TANDEM_DEVICE_CTEST=0 skips ctest.
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
  -DEigen3_DIR="$prefix/usr/share/eigen3/cmake" -DTANDEM_BUILD_CAPI=ON
targets=()
for t in ${TANDEM_DEVICE_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$build" -j"$(nproc)" "${targets[@]}"
if [ "${TANDEM_DEVICE_CTEST:-1}" != 0 ]; then ctest --test-dir "$build" --output-on-failure -j4; fi
