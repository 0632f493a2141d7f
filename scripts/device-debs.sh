#!/usr/bin/env bash
# Fetches the Debian packages scripts/device-build.sh unpacks on the GPU machine (which has a toolchain
# but no Debian packages and no network) into .deps/ (ignored by git; carry it: `carry: [".deps"]`).
# (libbrotli: cpp-httplib.pc requires it; without it the GPU machine builds no `tandem serve`.)
# Run on the dev machine. Usage: scripts/device-debs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps
cd .deps
apt-get download libeigen3-dev libfmt-dev libfmt9 nlohmann-json3-dev libhwloc-dev libhwloc15 \
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libutf8proc-dev libutf8proc2 \
  libcli11-dev catch2 libbenchmark-dev libbenchmark1debian libxxhash-dev libxxhash0 \
  libcpp-httplib-dev libcpp-httplib0.11 liburing-dev liburing2 libudev-dev libudev1 libnuma-dev libnuma1 \
  libltdl-dev libltdl7 libbrotli-dev libbrotli1
