#!/usr/bin/env bash
# Runs every built fuzz target for a bounded time over its seed corpus; builds nothing.
#   fuzz/run.sh BUILD_DIR SECONDS
# One input that runs longer than FUZZ_UNIT_TIMEOUT seconds (default 120) fails the run as a hang
# (libFuzzer's own default is 1200 s, longer than the whole stage may take).
set -euo pipefail
if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR SECONDS" >&2
  exit 2
fi
build_dir=$1
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)
found=0
for target in "$build_dir"/bin/fuzz_* "$build_dir"/fuzz/fuzz_*; do
  [[ -x $target && -f $target ]] || continue
  found=1
  name=$(basename "$target")
  seeds="$here/corpus/${name#fuzz_}"
  work=$(mktemp -d)
  [[ -d $seeds ]] && cp -r "$seeds"/. "$work"/
  echo "== $name for ${seconds}s"
  "$target" -max_total_time="$seconds" -timeout="${FUZZ_UNIT_TIMEOUT:-120}" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$build_dir/${name}-" "$work"
  rm -rf "$work"
done
if [[ $found -eq 0 ]]; then
  echo "no fuzz_* executables under $build_dir (configure with -DTANDEM_FUZZ=ON and CXX=clang++)" >&2
  exit 1
fi
