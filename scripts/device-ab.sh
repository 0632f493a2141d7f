#!/usr/bin/env bash
# An A/B on the GPU machine in one call: this tree against a base revision, both built there, run
# alternately on the same synthetic files, so that a change's ratio comes from one machine and one
# call (the device lends an H100 or an H200; figures from different calls do not compare).
#
# On the dev machine, first: git archive BASE -o .ab-base.tar   (ignored by git; pass it in `carry`
# with .deps). Then, as the device command:  bash scripts/device-ab.sh
# Environment:
#   CASES   bench model cases separated by ';', each "FILE_KEY FLAGS..." where FILE_KEY is q8 (the 8-layer
#           Qwen3-30B-A3B Q4_K_M file) or q48 (48 layers); default "q48 --placement *=cuda:0"
#   ROUNDS  alternations (default 2); BENCH  bench model's size flags (default "-p 512 -n 64 -r 2")
#   TESTS   a test_cuda filter run on this tree first ("" skips, "all" runs every case; default all)
#   KEYS    the JSON keys printed (default prefill_tok_s decode_tok_s decode_tok_s_sd)
#   AB_ENV  a variable name: instead of a base revision, this tree's binary with VAR=0 ("base") against
#           VAR=1 ("new"), no .ab-base.tar needed
#   TESTS_ENV  variables for the test_cuda run (e.g. "TANDEM_CUDA_PDL=1")
#   TARGETS extra build targets of this tree (e.g. "test_engine bench_cpu_kernels"); PRE: a command run
#           once they are built (e.g. 'build-gpu/bin/test_engine "[amx]"')
#   PEER=1  ik_llama.cpp's llama-bench (scripts/peer-ik-llama.sh, .deps/ik_llama.tar.gz) on each case's
#           file in every round, CPU only, 16 threads, the same -p/-n/-r
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="/tmp/tandem-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
out=${OUT:-/tmp/tandem-ab}
mkdir -p "$out"
t0=$SECONDS
ab_env=${AB_ENV:-}
[ -n "$ab_env" ] || [ -s .ab-base.tar ] || { echo "no .ab-base.tar: git archive BASE -o .ab-base.tar on the dev machine, and carry it" >&2; exit 2; }
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
[ "${PEER:-0}" = 1 ] && (bash scripts/peer-ik-llama.sh > "$out/peer-build.log" 2>&1; echo "== peer built rc=$? $((SECONDS - t0))s") &
TANDEM_DEVICE_TARGETS="test_cuda tandem_cli ${TARGETS:-}" TANDEM_DEVICE_CTEST=0 bash scripts/device-build.sh build-gpu \
  > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
echo "== this tree built $((SECONDS - t0))s"
new=build-gpu/bin/tandem old=$new
if [ -z "$ab_env" ]; then
  base=/tmp/ab-base old=/tmp/ab-base/build/bin/tandem
  rm -rf "$base" && mkdir -p "$base" && tar -xf .ab-base.tar -C "$base" && cp -r .deps "$base/"
  (cd "$base" && TANDEM_DEVICE_TARGETS=tandem_cli TANDEM_DEVICE_CTEST=0 bash scripts/device-build.sh build \
     > "$out/build-base.log" 2>&1; echo "== base built rc=$? $((SECONDS - t0))s") &
fi
cases=${CASES:-"q48 --placement *=cuda:0"}
declare -A file=([q8]=/tmp/tandem-qwen3-30b-a3b-8l-q4_k_m.gguf [q48]=/tmp/tandem-qwen3-30b-a3b-48l-q4_k_m.gguf)
[[ $cases == *q8* && ! -s ${file[q8]} ]] && $new synth --preset qwen3-30b-a3b --layers 8 --quant q4_k_m -o "${file[q8]}" > /dev/null 2>&1 &
[[ $cases == *q48* && ! -s ${file[q48]} ]] && $new synth --preset qwen3-30b-a3b --quant q4_k_m -o "${file[q48]}" > /dev/null 2>&1 &
tests=${TESTS-all}
if [ -n "$tests" ]; then
  filter=$([ "$tests" = all ] || echo "$tests")
  env ${TESTS_ENV:-} timeout 240 build-gpu/bin/test_cuda $filter > "$out/test_cuda.log" 2>&1
  echo "== test_cuda rc=$? $((SECONDS - t0))s: $(tail -2 "$out/test_cuda.log" | head -1)"
  grep -B3 -A12 FAILED "$out/test_cuda.log" | head -60
fi
[ -n "${PRE:-}" ] && { echo "== pre: $PRE"; bash -c "$PRE" 2>&1 | tail -${PRE_LINES:-6}; }
wait
echo "== ready $((SECONDS - t0))s"
[ -x "$old" ] || { tail -30 "$out/build-base.log"; exit 1; }
run() {  # label binary file flags...
  local label=$1 bin=$2 f=$3; shift 3
  local json env=()
  [ -n "$ab_env" ] && env=("$ab_env=$([[ $label == base* ]] && echo 0 || echo 1)")
  json=$(env "${env[@]}" "$bin" bench model -m "$f" ${BENCH:--p 512 -n 64 -r 2} -t 16 --spread-tokens 0 "$@" --json 2>"$out/stderr.log")
  KEYS="${KEYS:-prefill_tok_s decode_tok_s decode_tok_s_sd}" python3 -c '
import json, os, sys
j = json.loads(sys.argv[2])
print(sys.argv[1], " ".join(f"{k}={j.get(k)}" for k in os.environ["KEYS"].split()))' "$label" "$json" \
    || { echo "$label failed:"; tail -5 "$out/stderr.log"; }
}
set -f  # the rules contain '*'
IFS=';' read -ra list <<< "$cases"
for c in "${list[@]}"; do
  read -ra words <<< "$c"
  key=${words[0]}; flags=("${words[@]:1}")
  echo "-- $key ${flags[*]}"
  for ((r = 1; r <= ${ROUNDS:-2}; ++r)); do
    run "base r$r" "$old" "${file[$key]}" "${flags[@]}"
    run "new  r$r" "$new" "${file[$key]}" "${flags[@]}"
    if [ "${PEER:-0}" = 1 ] && [ -x /tmp/ik_llama-build/bin/llama-bench ]; then
      read -ra size <<< "${BENCH:--p 512 -n 64 -r 2}"
      echo "peer r$r $(/tmp/ik_llama-build/bin/llama-bench -m "${file[$key]}" "${size[@]}" -t 16 2>/dev/null | grep -E '^\|.*(pp|tg)[0-9]' \
        | awk -F'|' '{gsub(/ /, "", $(NF-2)); gsub(/^ +| +$/, "", $(NF-1)); printf "%s=%s  ", $(NF-2), $(NF-1)}')"
    fi
  done
done
echo "== done $((SECONDS - t0))s"
