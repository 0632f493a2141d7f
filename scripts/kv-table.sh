#!/usr/bin/env bash
# The cost of every KV setting (type × retention policy) on both trained models: perplexity of
# text/eval-dev.txt with --ctx 2048 windows, against the exact cache (f32, full) run alongside
# (--kv-compare), printed as a markdown table for docs/KV.md.
# Usage: scripts/kv-table.sh [TANDEM_BINARY]   (default build/bin/tandem)
# Environment: FIXTURES (default ../shared/fixtures/trained), CTX (2048), CHUNKS (all windows;
# set e.g. 4 for a quick look), THREADS (0: one per core), SETTINGS (override the list below,
# space-separated TYPE/POLICY pairs), MODELS ("qwen3moe deepseekv3"), JSON_DIR (keep each run's
# JSON there; the table covers every JSON in it, so runs split over several calls add up),
# TABLE_ONLY=1 (run nothing, print the table of JSON_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
tandem=${1:-build/bin/tandem}
fixtures=${FIXTURES:-../shared/fixtures/trained}
ctx=${CTX:-2048}
threads=${THREADS:-0}
json_dir=${JSON_DIR:-$(mktemp -d)}
mkdir -p "$json_dir"
half=$((ctx / 2))
quarter=$((ctx / 4))
settings=${SETTINGS:-"f32/full f16/full bf16/full fp8/full int8/full int4/full int4:64/full
  f16/sinks:4,$((half - 4)) f16/sinks:4,$((quarter - 4)) f16/h2o:$half f16/h2o:$quarter
  f16/snapkv:$half f16/snapkv:$quarter int8/h2o:$half int4/sinks:4,$((half - 4))"}
chunks=()
[ -n "${CHUNKS:-}" ] && chunks=(--chunks "$CHUNKS")

models=${MODELS:-qwen3moe deepseekv3}
[ -n "${TABLE_ONLY:-}" ] && models=""
for model in $models; do
  for setting in $settings; do
    type=${setting%%/*}
    policy=${setting#*/}
    out="$json_dir/$model-${type//:/_}-${policy//[:,]/_}.json"
    echo "== $model --kv-type $type --kv-policy $policy" >&2
    "$tandem" perplexity -m "$fixtures/$model" -f "$fixtures/text/eval-dev.txt" --ctx "$ctx" -t "$threads" \
      --kv-type "$type" --kv-policy "$policy" --kv-compare --json "${chunks[@]}" > "$out"
  done
done

python3 - "$json_dir" "$ctx" <<'PY'
import json, pathlib, sys
rows = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())
    model = path.name.split("-")[0]
    rows.append((model, r))
ctx = int(sys.argv[2])
print(f"| model | KV type | policy | bytes/token | cache tokens | PPL | exact PPL | PPL change | KL (exact ‖ KV) |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
def capacity(policy):
    if policy == "full": return ctx
    kind, arg = policy.split(":")
    return sum(int(x) for x in arg.split(",")) if kind == "sinks" else int(arg)
order = {"f32": 0, "f16": 1, "bf16": 2, "fp8": 3, "int8": 4, "int4": 5, "int4:64": 6}
rows.sort(key=lambda mr: (mr[0], mr[1]["kv_policy"] != "full", order.get(mr[1]["kv_type"], 9), mr[1]["kv_policy"]))
for model, r in rows:
    change = 100.0 * (r["ppl"] / r["ppl_exact"] - 1.0)
    print(f"| {model} | {r['kv_type']} | {r['kv_policy']} | {r['kv_bytes_per_token']:.0f} | {capacity(r['kv_policy'])} "
          f"| {r['ppl']:.4f} | {r['ppl_exact']:.4f} | {change:+.3f} % | {r['kl_mean']:.2e} |")
PY
