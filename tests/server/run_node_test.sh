#!/bin/sh
# Runs one Node client test against `tandem serve` (TANDEM_CLI); exits 77, which ctest reports as
# skipped, when Node or the packages (`npm ci` in tests/server) are missing.
dir=$(dirname "$0")
command -v node >/dev/null 2>&1 || { echo "skipped: node is not installed"; exit 77; }
if [ ! -d "$dir/node_modules/openai" ] || [ ! -d "$dir/node_modules/playwright-core" ]; then
  echo "skipped: no node_modules in tests/server (run: npm ci --prefix tests/server)"
  exit 77
fi
exec node "$dir/$1"
