#!/usr/bin/env bash
# Token eviction quality: perplexity of stories260K on the held-out stories, each capped at 512
# tokens, with the KV bounded to BUDGET tokens by each policy, against full KV.
#
#   bench/token_eviction_quality.sh [BUDGET] [CHUNK] [DOCUMENTS] [extra kvserve perplexity flags...]
# CHUNK: tokens fed per step (1 = token by token, as decoding sees the cache).
# DOCUMENTS: all, even or odd (stories by 0-based index). Settings were chosen on `even`; report
# `odd` (held out) and `all`.
#
# Rows:
#   full             no eviction
#   sliding_window   4 attention sinks + the newest tokens (StreamingLLM)
#   h2o              per layer and KV head, age-normalised scores, no sinks, recent window half
#                    the budget (the setting chosen on the even stories; docs/token-eviction.md)
#   h2o_sequence     h2o with one decision for the whole model from plain accumulated attention
#                    (what h2o did before per-head eviction)
#   attention        accumulated attention only, no recent window (per head, age-normalised)
#   window           the newest BUDGET tokens only: sliding_window without sinks
#   truncation       plain truncation: the context is cut every BUDGET tokens (when the cache is
#                    full everything but the newest token is dropped: sliding_window, no sinks,
#                    slack BUDGET - 2), as when a text is scored in consecutive BUDGET-token
#                    windows
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kvserve="${KVSERVE_BIN:-$root/build/kvserve}"
budget="${1:-128}"
chunk="${2:-1}"
documents="${3:-all}"
shift $(( $# > 3 ? 3 : $# ))
common=(perplexity --model "$root/../shared/models/stories260K.bin"
        --text "$root/../shared/eval/tinystories_valid_a.txt" --context 512
        --chunk-tokens "$chunk" --documents "$documents" --json "$@")
run() {  # name, flags...
  local name="$1"
  shift
  local out
  out="$("$kvserve" "${common[@]}" "$@" 2>/dev/null | tail -1)"
  printf '%s\t%s\n' "$name" "$out"
}
run full --token-eviction none
run sliding_window --token-eviction sliding_window --token-budget "$budget" --token-sinks 4
run h2o --token-eviction h2o --token-budget "$budget" --token-sinks 0 \
    --token-granularity head --token-score-normalization age
run h2o_sequence --token-eviction h2o --token-budget "$budget" --token-sinks 0 \
    --token-granularity sequence --token-score-normalization none
run attention --token-eviction attention --token-budget "$budget" \
    --token-granularity head --token-score-normalization age
run window --token-eviction sliding_window --token-budget "$budget" --token-sinks 0
run truncation --token-eviction sliding_window --token-budget "$budget" --token-sinks 0 \
    --token-slack $(( budget - 2 ))
