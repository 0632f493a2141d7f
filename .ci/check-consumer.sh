#!/usr/bin/env bash
# Builds tests/consumer against the *installed* Tandem (copied to a fresh prefix first, to prove the
# package is relocatable and that nothing points back at the build tree), runs its C and C++
# programs and checks their ids against tests/data/tiny-manifest.json; then builds the C program
# again through pkg-config alone, and checks the SONAME.
# Usage: .ci/check-consumer.sh BUILD_DIR INSTALL_PREFIX
set -euo pipefail
build_dir=${1:?usage: check-consumer.sh BUILD_DIR INSTALL_PREFIX}
prefix=${2:?usage: check-consumer.sh BUILD_DIR INSTALL_PREFIX}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

model="$root/tests/data/tiny-qwen3moe"
manifest="$root/tests/data/tiny-manifest.json"
manifest_field() {  # FIELD of models.qwen3moe.generations[0], ids joined by spaces
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["models"]["qwen3moe"]["generations"][0][sys.argv[2]]; print(" ".join(map(str,v)) if isinstance(v,list) else v)' "$manifest" "$1"
}
prompt=$(manifest_field prompt)
expected=$(manifest_field greedy_ids)
n_expected=$(wc -w <<<"$expected")

compare() {  # NAME OUTPUT
  if [ "$2" != "$expected" ]; then
    echo "FAIL: $1 printed '$2', manifest greedy_ids are '$expected'" >&2
    exit 1
  fi
  echo "ok: $1 reproduces the manifest's $n_expected greedy ids"
}

echo "relocating $prefix to $work/prefix"
cp -a "$prefix" "$work/prefix"
moved="$work/prefix"
libdir=$(dirname "$(find "$moved" -name 'libtandem.so' | head -n1)")

soname=$(readelf -d "$libdir/libtandem.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = "libtandem.so.0" ] || { echo "FAIL: SONAME is '$soname', expected libtandem.so.0" >&2; exit 1; }
echo "ok: SONAME $soname"
if grep -rIl -- "$build_dir" "$moved/lib/cmake" "$moved/lib/pkgconfig" >/dev/null 2>&1; then
  echo "FAIL: installed package files mention the build dir $build_dir:" >&2
  grep -rIl -- "$build_dir" "$moved/lib/cmake" "$moved/lib/pkgconfig" >&2
  exit 1
fi
echo "ok: no installed CMake/pkg-config file points into the build tree"

cmake -S "$root/tests/consumer" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$moved" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
  -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF >"$work/configure.log" || { cat "$work/configure.log"; exit 1; }
grep "Tandem .* from $moved" "$work/configure.log" || { echo "FAIL: Tandem not found in $moved" >&2; cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" -j"${TANDEM_CI_JOBS:-2}"

"$work/build/header_cxx"
compare "C consumer (Tandem::tandem_c, C99 -pedantic -Werror)" "$("$work/build/greedy_c" "$model" "$prompt" "$n_expected")"
compare "C++ consumer (Tandem::tandem)" "$("$work/build/greedy_cpp" "$model" "$prompt" "$n_expected")"

echo "building the C consumer with pkg-config only"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# shellcheck disable=SC2046
cc -std=c99 -pedantic -Wall -Wextra -Werror "$root/tests/consumer/greedy.c" -o "$work/greedy_pc" \
  $(pkg-config --cflags --libs tandem)
compare "C consumer via pkg-config" "$(LD_LIBRARY_PATH="$libdir" "$work/greedy_pc" "$model" "$prompt" "$n_expected")"
echo "consumer check passed"
