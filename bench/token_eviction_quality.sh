#!/usr/bin/env bash
# Token eviction quality: perplexity of stories260K on the held-out stories, each capped at 512
# tokens, with the KV bounded to BUDGET tokens by each policy, against full KV. "truncation" is
# a plain window of the newest BUDGET tokens (sliding_window without sinks).
#
#   bench/token_eviction_quality.sh [BUDGET] [CHUNK] [extra kvserve perplexity flags...]
# CHUNK: tokens fed per step (1 = token by token, as decoding sees the cache).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kvserve="${KVSERVE_BIN:-$root/build/kvserve}"
budget="${1:-128}"
chunk="${2:-1}"
shift $(( $# > 2 ? 2 : $# ))
common=(perplexity --model "$root/../shared/models/stories260K.bin"
        --text "$root/../shared/eval/tinystories_valid_a.txt" --context 512
        --chunk-tokens "$chunk" --json "$@")
run() {  # name, flags...
  local name="$1"
  shift
  local out
  out="$("$kvserve" "${common[@]}" "$@" 2>/dev/null | tail -1)"
  printf '%s\t%s\n' "$name" "$out"
}
run full --token-eviction none
run h2o --token-eviction h2o --token-budget "$budget"
run sliding_window --token-eviction sliding_window --token-budget "$budget" --token-sinks 4
run attention --token-eviction attention --token-budget "$budget"
run truncation --token-eviction sliding_window --token-budget "$budget" --token-sinks 0
