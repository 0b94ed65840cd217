#!/usr/bin/env bash
# kvserve and llama.cpp side by side on the same GGUF files, same threads, in one run: prompt
# processing (512-token prompt), single-sequence decode and 32 sequences decoded together; load
# time and RSS. llama.cpp is the prebuilt linux-x64 CPU build of the npm package
# @fugood/llama.node (bench/llamacpp/package.json), installed into bench/llamacpp/node_modules.
#
#   bench/llamacpp_side_by_side.sh [--shapes 110m,1b-gqa] [--types q4_k_m,q8_0] [--threads 1,2]
#                                  [--reps 5] [--decode-tokens 64] [--dir /tmp/kvserve-sbs]
#
# Models are written by `kvserve mkmodel --shape S --type T` into --dir (kept between runs).
# Prints one markdown table row per (file, threads) to stdout; raw outputs go to --dir.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shapes=110m,1b-gqa types=q4_k_m,q8_0 threads_list=1,2 reps=5 decode=64 dir=/tmp/kvserve-sbs
while [[ $# -gt 0 ]]; do
  case "$1" in
    --shapes) shapes="$2"; shift 2 ;;
    --types) types="$2"; shift 2 ;;
    --threads) threads_list="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --decode-tokens) decode="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
kvserve="$root/build/kvserve"
decode_bench="$root/build/bench/decode_bench"
[[ -x "$kvserve" && -x "$decode_bench" ]] || { echo "build first: scripts/build.sh" >&2; exit 2; }
command -v node >/dev/null || { echo "node is needed for the llama.cpp side" >&2; exit 2; }
if [[ ! -d "$root/bench/llamacpp/node_modules/@fugood/llama.node" ]]; then
  (cd "$root/bench/llamacpp" && npm install --no-audit --no-fund --omit=optional --loglevel=error)
fi
mkdir -p "$dir"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| file | threads | engine | load ms | RSS MiB | prompt tok/s (512) | decode tok/s (1 seq) | decode tok/s (32 seq) |"
echo "|---|---|---|---|---|---|---|---|"
IFS=, read -r -a shape_arr <<<"$shapes"
IFS=, read -r -a type_arr <<<"$types"
IFS=, read -r -a thread_arr <<<"$threads_list"
for shape in "${shape_arr[@]}"; do
  for type in "${type_arr[@]}"; do
    model="$dir/$shape-$type.gguf"
    [[ -f "$model" ]] || "$kvserve" mkmodel --shape "$shape" --type "$type" --seed 1 --out "$model" >&2
    size=$(( $(stat -c %s "$model") / 1048576 ))
    for t in "${thread_arr[@]}"; do
      kv_out="$dir/kvserve-$shape-$type-t$t.txt"
      lc_out="$dir/llamacpp-$shape-$type-t$t.json"
      # Alternate which engine runs first, so that neither always meets a warmer machine.
      run_kv() {
        "$decode_bench" --model "$model" --threads "$t" --batches 1,32 --tokens "$decode" \
          --reps "$reps" --prompt-tokens 512 >"$kv_out" 2>&1
      }
      run_lc() {
        (cd "$root/bench/llamacpp" && node bench.mjs "$model" "$t" 512 "$decode" "$reps") \
          2>/dev/null | tail -1 >"$lc_out"
      }
      if (( t % 2 )); then run_kv; run_lc; else run_lc; run_kv; fi
      python3 - "$kv_out" "$lc_out" "$shape-$type ($size MiB)" "$t" <<'PY'
import json, re, sys
kv, lc, name, t = open(sys.argv[1]).read(), json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4]
load = re.search(r"load (\d+) ms, RSS after load ([\d.]+) MiB", kv)
pp = re.search(r"([\d.]+) prompt tokens/s", kv)
rows = dict(re.findall(r"^(\d+)\s+(\d+)\s", kv, re.M))
print(f"| {name} | {t} | kvserve | {load.group(1)} | {float(load.group(2)):.0f} | {float(pp.group(1)):.0f} "
      f"| {rows.get('1', '?')} | {rows.get('32', '?')} |")
print(f"| {name} | {t} | llama.cpp | {lc['load_ms']} | {lc['rss_mib']:.0f} (node) | "
      f"{lc['prompt_tokens_per_s']:.0f} | {lc['decode_tokens_per_s']:.1f} | "
      f"{lc['decode32_tokens_per_s'] or 0:.0f} |")
PY
    done
  done
done
