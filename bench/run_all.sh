#!/usr/bin/env bash
# Runs the benchmark suite on this machine and rewrites the generated section of bench/RESULTS.md
# (between the "run_all:begin" and "run_all:end" markers; everything else is left as it is).
#
#   bench/run_all.sh                 # the whole suite, about 4 minutes on a 2-core machine
#   REPS=5 bench/run_all.sh          # more repetitions (medians over REPS runs)
#   RESULTS=/tmp/r.md bench/run_all.sh   # write somewhere else
#
# What it runs (each repeated REPS times; tables give medians and the ratios targets are stated in):
#   1. kernels_bench (Google Benchmark): quantize-on-write per format, attention decode per format
#      and context, matmul, memcpy and read bandwidth.
#   2. pool_bench (Google Benchmark): block allocate / free / evict, prefix insert / lookup.
#   3. kvserve bench against kvserve serve on `kvserve mkmodel --shape 110m --dtype f16`, FP16 KV:
#      1 stream vs 32 concurrent streams, 128-token prompts and outputs.
#   4. The same model, one KV byte budget that holds four 1,024-token FP16 sequences: how many
#      such sequences run at once without preemption in FP16 and in INT4, and output tokens/s of
#      both at equal concurrency.
#   5. The load generator alone: tiny requests (4 prompt tokens, 1 output token) on stories260K at
#      2,000 requests/s, and as fast as it goes; its own CPU time.
# Needs: a Release build (scripts/build.sh), python3 (report), ../shared/models/stories260K.gguf.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVSERVE_BUILD_DIR:-$root/build}"
models="${KVSERVE_MODELS_DIR:-$root/../shared/models}"
results="${RESULTS:-$root/bench/RESULTS.md}"
reps="${REPS:-3}"
kvserve="$build/kvserve"
work="$(mktemp -d "${TMPDIR:-/tmp}/kvserve-run-all.XXXXXX")"
server_pid=""
extra_pids=()  # servers kept running beside $server_pid (the side-by-side runs of section 4)
cleanup() {
  for pid in "$server_pid" "${extra_pids[@]}"; do
    if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

for bin in "$kvserve" "$build/bench/kernels_bench" "$build/bench/pool_bench"; do
  [[ -x "$bin" ]] || { echo "run_all: $bin is missing; run scripts/build.sh first" >&2; exit 1; }
done
[[ -f "$models/stories260K.gguf" ]] || { echo "run_all: $models/stories260K.gguf is missing" >&2; exit 1; }

log() { echo "[run_all $(date -u +%H:%M:%S)] $*" >&2; }
start_time=$(date +%s)

# ---- machine -----------------------------------------------------------------------------------
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "cores=$(nproc)"
  echo "memory_gib=$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)"
  echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "reps=$reps"
} > "$work/machine.txt"

# ---- 1, 2: micro-benchmarks ---------------------------------------------------------------------
log "kernels_bench"
nice -n 5 "$build/bench/kernels_bench" \
  --benchmark_filter='BM_KvEncodeBlock|BM_AttentionDecode/|BM_MatMul/rows:768|BM_MatMul/rows:2048|BM_Memcpy|BM_ReadBandwidth' \
  --benchmark_min_time=0.2 --benchmark_repetitions="$reps" --benchmark_report_aggregates_only=true \
  --benchmark_format=json --benchmark_out="$work/kernels.json" --benchmark_out_format=json > /dev/null
log "pool_bench"
nice -n 5 "$build/bench/pool_bench" --benchmark_min_time=0.2 --benchmark_repetitions="$reps" \
  --benchmark_report_aggregates_only=true --benchmark_format=json \
  --benchmark_out="$work/pool.json" --benchmark_out_format=json > /dev/null

# ---- servers -------------------------------------------------------------------------------------
# start_server MODEL [--set key=value ...]: starts kvserve serve on a free loopback port and sets
# $server_pid and $addr. Its log is $work/server_$server_name.log (server_name: "main" unless set).
start_server() {
  local model="$1"
  shift
  local log_file="$work/server_${server_name:-main}.log"
  "$kvserve" serve --config "$root/configs/server.yaml" --set "model.path=$model" \
    --set server.address=127.0.0.1:0 --set metrics.address= --set http.address= \
    --set logging.level=info --set engine.threads=0 "$@" 2> "$log_file" &
  server_pid=$!
  for _ in $(seq 1 600); do
    addr=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$log_file" | head -1)
    [[ -n "$addr" ]] && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$log_file" >&2; exit 1; }
    sleep 0.1
  done
  echo "run_all: the server did not start" >&2
  exit 1
}
stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
# bench NAME [flags]: one kvserve bench run, report in $work/NAME.json.
seed=100
bench() {
  local name="$1"
  shift
  seed=$((seed + 1))  # fresh prompts every run: no prefix-cache hits across runs
  "$kvserve" bench --addr "$addr" --seed "$seed" --json "$work/$name.json" --no-progress "$@" \
    > "$work/$name.txt" || log "bench $name: some requests failed (see the report)"
}

# ---- 3: 110m, FP16 KV, 1 vs 32 streams --------------------------------------------------------
model="$work/110m-f16.gguf"
log "mkmodel 110m"
"$kvserve" mkmodel --shape 110m --dtype f16 --seed 1 --out "$model" > "$work/mkmodel.txt"
start_server "$model" --set kv_cache.format=fp16 --set kv_cache.budget_mb=512
"$kvserve" client info --addr "$addr" > "$work/info_fp16.txt"
for r in $(seq 1 "$reps"); do
  log "110m fp16: 1 stream, rep $r"
  bench "streams1_$r" --num-requests 4 --concurrency 1 --input-len 128 --output-len 128
  log "110m fp16: 32 streams, rep $r"
  bench "streams32_$r" --num-requests 32 --concurrency 32 --input-len 128 --output-len 128
done
stop_server

# ---- 4: INT4 vs FP16 capacity in one byte budget ----------------------------------------------
# The budget holds exactly four sequences of 1,024 tokens (960 prompt + 64 output) in FP16.
fp16_block=$(sed -n 's/^kv_block_bytes: *//p' "$work/info_fp16.txt")
seq_blocks=64  # 1,024 tokens / 16 per block (the last token's KV is never written: 1,023 fit)
budget_bytes=$((4 * seq_blocks * fp16_block + fp16_block / 2))
budget_mb=$(python3 -c "print($budget_bytes / 1048576)")
echo "budget_bytes=$budget_bytes" >> "$work/machine.txt"
fit_fp16=$((budget_bytes / (seq_blocks * fp16_block)))
echo "fit_fp16=$fit_fp16" >> "$work/machine.txt"
# Both servers run side by side (each idle while the other is measured), so that the runs at
# equal concurrency alternate between the formats and a drifting machine load hits both alike.
declare -A fmt_addr
for fmt in fp16 int4; do
  server_name=$fmt start_server "$model" --set kv_cache.format=$fmt \
    --set "kv_cache.budget_mb=$budget_mb" --set prefix_cache.enabled=false
  fmt_addr[$fmt]=$addr
  extra_pids+=("$server_pid")
  server_pid=""
done
for fmt in fp16 int4; do
  addr=${fmt_addr[$fmt]}
  # All at once: one more request than FP16 holds, and for INT4 one more than 3x that (the
  # target), so that the peak of running requests shows each format's capacity.
  sent=$((fit_fp16 + 1))
  if [[ $fmt == int4 ]]; then sent=$((3 * fit_fp16 + 1)); fi
  echo "sent_$fmt=$sent" >> "$work/machine.txt"
  log "110m $fmt: capacity, $sent x 1,024 tokens"
  bench "cap_$fmt" --num-requests "$sent" --concurrency "$sent" --input-len 960 --output-len 64
done
for r in $(seq 1 "$reps"); do
  for fmt in fp16 int4; do
    addr=${fmt_addr[$fmt]}
    log "110m $fmt: 4 x 1,024 tokens, rep $r"
    bench "eq_${fmt}_$r" --num-requests 4 --concurrency 4 --input-len 960 --output-len 64
  done
done
for pid in "${extra_pids[@]}"; do
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
extra_pids=()

# ---- 5: the load generator -------------------------------------------------------------------
start_server "$models/stories260K.gguf" --set kv_cache.format=fp32 --set engine.threads=1 \
  --set scheduler.max_waiting_requests=65536 --set scheduler.max_running_requests=256
for r in $(seq 1 "$reps"); do
  log "load generator: 2,000 requests/s, rep $r"
  bench "load2000_$r" --num-requests 6000 --request-rate 2000 --input-len 4 --output-len 1
  log "load generator: unthrottled, rep $r"
  bench "loadmax_$r" --num-requests 6000 --concurrency 64 --input-len 4 --output-len 1
done
stop_server

echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$work/machine.txt"
echo "elapsed_s=$(( $(date +%s) - start_time ))" >> "$work/machine.txt"
log "writing $results"
python3 "$root/bench/run_all_report.py" "$work" "$results"
log "done in $(( $(date +%s) - start_time )) s"
