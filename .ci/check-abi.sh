#!/usr/bin/env bash
# Checks the installed libtandem.so against the recorded ABI baseline (abi/libtandem.abi.dump) with
# abi-dumper + abi-compliance-checker: any binary or source incompatibility in the public C ABI
# (tandem.h) fails. Needs debug info (-g; RelWithDebInfo and Debug have it). Skips, saying so, when
# the tools are missing.
# Usage: .ci/check-abi.sh BUILD_DIR INSTALL_PREFIX
#   TANDEM_ABI_UPDATE=1 rewrites the baseline from this build (do that only with an ABI version bump
#   or for additions, and commit the result).
set -euo pipefail
prefix=${2:?usage: check-abi.sh BUILD_DIR INSTALL_PREFIX}
root=$(cd "$(dirname "$0")/.." && pwd)
baseline="$root/abi/libtandem.abi.dump"
for tool in abi-dumper abi-compliance-checker; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIPPED: $tool is not installed (apt-get install abi-dumper abi-compliance-checker)"
    exit 0
  fi
done
lib=$(readlink -f "$(find "$prefix" -name 'libtandem.so' | head -n1)")
[ -f "$lib" ] || { echo "FAIL: no libtandem.so under $prefix" >&2; exit 1; }
if ! readelf -S "$lib" | grep -q '\.debug_info'; then
  echo "FAIL: $lib has no debug info; build with -g (RelWithDebInfo) for the ABI check" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version=$(sed -n 's/^Version: //p' "$(find "$prefix" -name tandem.pc | head -n1)")

# The DWARF names the header where it was compiled from: the source tree's capi/include.
abi-dumper "$lib" -o "$work/current.dump" -lver "$version" -public-headers "$root/capi/include" \
  >"$work/dumper.log" 2>&1 || { cat "$work/dumper.log"; exit 1; }
if ! grep -q "tandem_model_load" "$work/current.dump"; then
  echo "FAIL: the ABI dump of $lib holds no tandem_* functions (debug info not matched to tandem.h?)" >&2
  exit 1
fi
if [ "${TANDEM_ABI_UPDATE:-0}" = 1 ]; then
  mkdir -p "$(dirname "$baseline")"
  cp "$work/current.dump" "$baseline"
  echo "baseline updated: $baseline"
  exit 0
fi
[ -f "$baseline" ] || { echo "FAIL: no baseline $baseline (create it with TANDEM_ABI_UPDATE=1)" >&2; exit 1; }
echo "comparing $lib ($version) against $baseline"
if abi-compliance-checker -l tandem -old "$baseline" -new "$work/current.dump" \
     -report-path "$work/report.html" </dev/null >"$work/checker.log" 2>&1; then
  grep -E "compatibility|problems" "$work/checker.log"
  echo "ok: the C ABI is compatible with the baseline"
else
  cat "$work/checker.log" >&2
  report_copy="${TMPDIR:-/tmp}/tandem-abi-report.html"
  cp "$work/report.html" "$report_copy" 2>/dev/null && echo "report: $report_copy" >&2
  echo "FAIL: the C ABI changed incompatibly (or the checker failed)" >&2
  exit 1
fi
