#!/usr/bin/env bash
# The same workload over gRPC and over the OpenAI-compatible HTTP API of one server, side by side:
# starts `kvserve serve` once on MODEL (both protocols on free loopback ports), then ROUNDS times
# runs one `kvserve bench` over gRPC (Generate streams) and one over HTTP (streaming
# /v1/completions, token-id prompts), alternating which goes first, and prints the medians of the
# rounds and the ratios HTTP / gRPC (TTFT as a difference too). Both runs of a round send the same
# prompts, so the prefix cache is off (prefix_cache.enabled=false): neither may find the other's.
#
#   bench/http_vs_grpc.sh BINARY MODEL ROUNDS [--set key=value ...] -- [bench flags ...]
#   bench/http_vs_grpc.sh build/kvserve ../shared/models/stories260K.gguf 3 -- \
#     --num-requests 64 --concurrency 32 --input-len 128 --output-len 128
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$1" model="$2" rounds="$3"
shift 3
server_flags=()
while [[ $# -gt 0 && "$1" != "--" ]]; do server_flags+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
bench_flags=("$@")
out="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/kvserve-http-grpc.XXXXXX")}"
mkdir -p "$out"
log="$out/server.log"
# shellcheck source=bench/serve_both_protocols.sh
source "$root/bench/serve_both_protocols.sh"
start_both_protocols "$bin" "$model" "$log" "${server_flags[@]}"

run_grpc() {
  "$bin" bench --addr "$addr" --seed $((100 + $1)) --json "$out/grpc_$1.json" --no-progress \
    "${bench_flags[@]}" > "$out/bench_grpc_$1.txt"
}
run_http() {
  "$bin" bench --protocol openai --url "$url" --addr "$addr" --seed $((100 + $1)) \
    --json "$out/http_$1.json" --no-progress "${bench_flags[@]}" > "$out/bench_http_$1.txt"
}
for r in $(seq 1 "$rounds"); do
  if ((r % 2)); then run_grpc "$r"; run_http "$r"; else run_http "$r"; run_grpc "$r"; fi
done

/usr/bin/python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for label in ("grpc", "http"):
    rs = [json.load(open(f"{out}/{label}_{r}.json")) for r in range(1, rounds + 1)]
    med = lambda f: statistics.median(f(x) for x in rs)
    rows[label] = {
        "output tok/s": med(lambda x: x["output_throughput"]),
        "TTFT p50 ms": med(lambda x: x["ttft_ms"]["median"]),
        "TPOT p50 ms": med(lambda x: x["tpot_ms"]["median"]),
        "ITL p50 ms": med(lambda x: x["itl_ms"]["median"]),
        "ITL p99 ms": med(lambda x: x["itl_ms"]["p99"]),
        "E2E p50 ms": med(lambda x: x["e2e_ms"]["median"]),
        "failed": sum(x["failed"] for x in rs),
    }
print(f"medians over {rounds} rounds (reports in {out})")
print(f"{'':14}" + "".join(f"{k:>14}" for k in rows["grpc"]))
for label, row in rows.items():
    print(f"{label:14}" + "".join(f"{v:14.3f}" if isinstance(v, float) else f"{v:14}"
                                  for v in row.values()))
g, h = rows["grpc"], rows["http"]
print(f"{'http / grpc':14}" + "".join(f"{h[k] / g[k]:14.3f}" if g[k] else f"{'-':>14}" for k in g))
print(f"TTFT p50 difference: {h['TTFT p50 ms'] - g['TTFT p50 ms']:+.3f} ms")
PY
