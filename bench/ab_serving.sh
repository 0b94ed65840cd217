#!/usr/bin/env bash
# Serving throughput and latency of two kvserve builds, side by side on one machine: each round
# starts build A's server, runs one `kvserve bench`, stops it, then the same for build B
# (alternating, so that both see the same background load), and prints per-build medians over the
# rounds of output tokens/s, median TTFT, median and p99 ITL.
#
#   bench/ab_serving.sh A_BINARY B_BINARY MODEL ROUNDS [--set key=value ...] -- [bench flags ...]
#
# Example (the 110m shape, FP16 KV, 64 requests at concurrency 32, 128/128 tokens):
#   build/kvserve mkmodel --shape 110m --dtype f16 --seed 1 --out /tmp/110m.gguf
#   bench/ab_serving.sh /tmp/kvserve-old build/kvserve /tmp/110m.gguf 3 \
#     --set kv_cache.format=fp16 --set kv_cache.budget_mb=512 -- \
#     --num-requests 64 --concurrency 32 --input-len 128 --output-len 128
# The bench client is always B's (one load generator for both). Reports: $OUT (default a temp dir).
# CONFIG_A / CONFIG_B: the config file of each server (default configs/server.yaml; an older build
# needs the config of its own tree, e.g. `git show REV:configs/server.yaml > /tmp/old.yaml`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
a="$1"; b="$2"; model="$3"; rounds="$4"; shift 4
server_flags=()
while [[ $# -gt 0 && "$1" != "--" ]]; do server_flags+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
bench_flags=("$@")
out="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/kvserve-ab.XXXXXX")}"
mkdir -p "$out"
pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true' EXIT

run_one() {  # run_one LABEL BINARY ROUND CONFIG
  local label="$1" bin="$2" round="$3" config="$4" log="$out/server_$1_$3.log" addr=""
  : > "$log"  # exists before the server writes it (the wait loop reads it)
  "$bin" serve --config "$config" --set "model.path=$model" \
    --set server.address=127.0.0.1:0 --set metrics.address= --set logging.level=info \
    "${server_flags[@]}" 2> "$log" &
  pid=$!
  for _ in $(seq 1 600); do
    addr=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -1)
    [[ -n "$addr" ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  "$b" bench --addr "$addr" --seed $((100 + round)) --json "$out/${label}_${round}.json" \
    --no-progress "${bench_flags[@]}" > "$out/bench_${label}_${round}.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

for r in $(seq 1 "$rounds"); do
  run_one A "$a" "$r" "${CONFIG_A:-$root/configs/server.yaml}"
  run_one B "$b" "$r" "${CONFIG_B:-$root/configs/server.yaml}"
done

/usr/bin/python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for label in ("A", "B"):
    rs = [json.load(open(f"{out}/{label}_{r}.json")) for r in range(1, rounds + 1)]
    med = lambda f: statistics.median(f(x) for x in rs)
    rows[label] = {
        "output tok/s": med(lambda x: x["output_throughput"]),
        "TTFT p50 ms": med(lambda x: x["ttft_ms"]["median"]),
        "ITL p50 ms": med(lambda x: x["itl_ms"]["median"]),
        "ITL p99 ms": med(lambda x: x["itl_ms"]["p99"]),
        "failed": sum(x["failed"] for x in rs),
    }
print(f"medians over {rounds} rounds (reports in {out})")
print(f"{'':14}" + "".join(f"{k:>14}" for k in rows["A"]))
for label, row in rows.items():
    print(f"{label:14}" + "".join(f"{v:14.2f}" if isinstance(v, float) else f"{v:14}" for v in row.values()))
a, b = rows["A"], rows["B"]
print(f"{'B / A':14}" + "".join(f"{b[k] / a[k]:14.3f}" if a[k] else f"{'-':>14}" for k in a))
PY
