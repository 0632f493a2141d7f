#!/usr/bin/env bash
# Lists the dynamic symbols libtandem.so defines and fails on any outside the tandem_* namespace;
# also fails when a function tandem.h declares is not exported.
# Usage: .ci/check-symbols.sh BUILD_DIR INSTALL_PREFIX
set -euo pipefail
prefix=${2:?usage: check-symbols.sh BUILD_DIR INSTALL_PREFIX}
lib=$(find "$prefix" -name 'libtandem.so' | head -n1)
header="$prefix/include/tandem.h"
[ -n "$lib" ] || { echo "FAIL: no libtandem.so under $prefix" >&2; exit 1; }

# Symbols of type A are the version-script node names (TANDEM_0), not code or data.
exported=$(nm -D --defined-only "$lib" | awk '$2 != "A" {print $3}' | sed 's/@.*//' | sort -u)
echo "libtandem.so ($lib) exports $(wc -l <<<"$exported") symbols:"
sed 's/^/  /' <<<"$exported"
stray=$(grep -v '^tandem_' <<<"$exported" || true)
if [ -n "$stray" ]; then
  echo "FAIL: symbols outside tandem_*:" >&2
  sed 's/^/  /' <<<"$stray" >&2
  exit 1
fi

declared=$(grep -o 'TANDEM_API[^;]*' "$header" | tr '\n' ' ' | grep -oE 'tandem_[a-z0-9_]+ *\(' |
           tr -d ' (' | sort -u)
missing=$(comm -23 <(echo "$declared") <(echo "$exported"))
if [ -n "$missing" ]; then
  echo "FAIL: declared in tandem.h but not exported:" >&2
  sed 's/^/  /' <<<"$missing" >&2
  exit 1
fi
echo "ok: all $(wc -l <<<"$declared") functions tandem.h declares are exported, nothing else is"
