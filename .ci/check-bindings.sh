#!/usr/bin/env bash
# Builds and runs the Rust, Go and Python examples against the *installed* libtandem: each prints
# the greedy continuation of manifest prompt 0 of the bundled tiny-qwen3moe, checked against
# tests/data/tiny-manifest.json; then each language's error example (missing file, corrupt file,
# bad struct_size) must report the right typed error with a message. A missing toolchain fails.
# Usage: .ci/check-bindings.sh BUILD_DIR INSTALL_PREFIX
set -euo pipefail
build_dir=${1:?usage: check-bindings.sh BUILD_DIR INSTALL_PREFIX}
prefix=$(cd "${2:?usage: check-bindings.sh BUILD_DIR INSTALL_PREFIX}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
libdir=$(dirname "$(find "$prefix" -name 'libtandem.so' | head -n1)")
model="$root/tests/data/tiny-qwen3moe"
manifest="$root/tests/data/tiny-manifest.json"
manifest_field() {
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["models"]["qwen3moe"]["generations"][0][sys.argv[2]]; print(" ".join(map(str,v)) if isinstance(v,list) else v)' "$manifest" "$1"
}
prompt=$(manifest_field prompt)
expected=$(manifest_field greedy_ids)
n_expected=$(wc -w <<<"$expected")
work="$build_dir/bindings-check"
mkdir -p "$work"
export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

compare() {  # LANGUAGE OUTPUT
  if [ "$2" != "$expected" ]; then
    echo "FAIL: $1 example printed '$2', manifest greedy_ids are '$expected'" >&2
    exit 1
  fi
  echo "ok: $1 example reproduces the manifest's $n_expected greedy ids"
}

echo "== Rust (cargo --offline)"
(cd "$root/bindings/rust" && TANDEM_LIB_DIR="$libdir" CARGO_TARGET_DIR="$work/rust" \
   cargo build --offline --quiet --examples -j"${TANDEM_CI_JOBS:-2}")
compare Rust "$("$work/rust/debug/examples/greedy" "$model" "$prompt" "$n_expected")"
"$work/rust/debug/examples/errors" "$model"

echo "== Go (cgo, no network)"
(cd "$root/bindings/go" && GOFLAGS=-mod=mod GOPROXY=off GOCACHE="$work/go-cache" \
   CGO_CFLAGS="-I$prefix/include" CGO_LDFLAGS="-L$libdir -ltandem" \
   go build -o "$work/go/" ./cmd/...)
compare Go "$("$work/go/greedy" "$model" "$prompt" "$n_expected")"
"$work/go/errors" "$model"

echo "== Python (ctypes)"
export TANDEM_LIBRARY="$libdir/libtandem.so.0"
compare Python "$(python3 "$root/bindings/python/examples/generate.py" "$model" "$prompt" "$n_expected")"
python3 "$root/bindings/python/examples/errors.py" "$model"
echo "bindings check passed"
