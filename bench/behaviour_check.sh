#!/usr/bin/env bash
# Records what a kvserve binary computes, so that two builds can be compared bit for bit:
# per-document perplexities (kvserve perplexity --json --per-document) and greedy generations
# for every KV format, with and without a demoting recent window, on the stories models.
#
#   bench/behaviour_check.sh BINARY OUTDIR      # then: diff -r OUTDIR_A OUTDIR_B
set -euo pipefail
bin="$1"
out="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${KVSERVE_SHARED:-$root/../shared}"
mkdir -p "$out"
text="$shared/eval/tinystories_valid_a.txt"
models=("$shared/models/stories260K.gguf" "$shared/models/babyllama/model5000.bin")
formats=(fp32 fp16 bf16 fp8 int8 int4 nvfp4 int2)
for m in "${models[@]}"; do
  name="$(basename "$m" | tr '.' '_')"
  for f in "${formats[@]}"; do
    for window in none w32; do
      extra=()
      if [[ $window == w32 ]]; then
        case $f in fp32 | fp16 | bf16) continue ;; esac
        extra=(--recent-window 32 --sink-tokens 4 --window-format fp16)
      fi
      "$bin" perplexity --model "$m" --kv-format "$f" "${extra[@]}" --text "$text" \
        --max-documents 24 --json --per-document --threads 2 2>/dev/null \
        >"$out/ppl_${name}_${f}_${window}.json"
      "$bin" generate --model "$m" --kv-format "$f" "${extra[@]}" --prompt "Once upon a time" \
        --temperature 0 --max-tokens 200 --threads 2 2>/dev/null >"$out/gen_${name}_${f}_${window}.txt"
    done
  done
done
echo "wrote $(ls "$out" | wc -l) files to $out"
