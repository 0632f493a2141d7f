#!/usr/bin/env bash
# Issue 18's tier figures on the GPU machine: `tandem bench kv` on the trained Qwen3-MoE and
# DeepSeek-V3 (4,064-token prompt, 3,936 cached: the trained models' 4k context), cold against the
# host tier and the SSD tier, one JSON object per line. The records go to a fresh subdirectory of
# KV_DISK (default: the repository's folder — /tmp is often tmpfs, memory); each JSON says the file
# system (disk_fs), the I/O path (disk_io: io_uring or the preadv/pwritev fallback and why) and how
# much of the records was still in the page cache when the timed reads began
# (disk_page_cache_resident: 0 = read from the device).
# Needs the tandem binary from scripts/device-build.sh (BUILD_DIR, default build-gpu). Usage:
#   scripts/kv-disk-bench.sh [BUILD_DIR]
# Environment: FIXTURES (../shared/fixtures/trained), MODELS ("qwen3moe deepseekv3"), KV_DISK (.),
#   THREADS (16), REPS (3), PROMPT (4064), CACHED (3936), KV_TYPE (f16).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
tandem="$build/bin/tandem"
prefix=/tmp/tandem-deps  # where device-build.sh unpacked the Debian libraries (liburing among them)
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fixtures=${FIXTURES:-../shared/fixtures/trained}
kv_disk=${KV_DISK:-$PWD}
[ -x "$tandem" ] || { echo "no $tandem: run scripts/device-build.sh first" >&2; exit 1; }
df -T "$kv_disk" >&2 || true
for model in ${MODELS:-qwen3moe deepseekv3}; do
  "$tandem" bench kv -m "$fixtures/$model" --prompt-tokens "${PROMPT:-4064}" --cached-tokens "${CACHED:-3936}" \
    -t "${THREADS:-16}" -r "${REPS:-3}" --kv-type "${KV_TYPE:-f16}" --kv-disk "$kv_disk" --json
done
