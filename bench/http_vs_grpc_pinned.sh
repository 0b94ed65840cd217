#!/usr/bin/env bash
# HTTP against gRPC on one server, with the engine thread pinned to CPU 0 and every other thread
# (the server's I/O and gRPC threads, and the load generator) on CPU 1, then the same unpinned:
# ROUNDS rounds each, the protocol order alternating. Shows how much of a gap between the two
# protocols comes from where the OS places the threads on a 2-CPU machine that also runs the
# load generator. Prints per run: label, ITL median ms, TPOT median ms, output tok/s.
#
#   bench/http_vs_grpc_pinned.sh BINARY MODEL ROUNDS CONCURRENCY REQUESTS
#   bench/http_vs_grpc_pinned.sh build/kvserve ../shared/models/stories260K.gguf 5 1 32
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$1" model="$2" rounds="$3" conc="$4" reqs="$5"
out="$(mktemp -d "${TMPDIR:-/tmp}/kvserve-pinned.XXXXXX")"
log="$out/server.log"
# shellcheck source=bench/serve_both_protocols.sh
source "$root/bench/serve_both_protocols.sh"
start_both_protocols "$bin" "$model" "$log" --set engine.threads=1
# The engine thread: the kvserve thread with the most CPU after a short warm-up.
"$bin" bench --addr $addr --no-progress --num-requests 20 --concurrency 1 --input-len 128 --output-len 128 >/dev/null 2>&1
eng=$(ps -L -p $pid -o tid=,time=,comm= | sort -k2 -r | head -1 | awk '{print $1}')
echo "engine tid $eng"
run() { # $1 label, $2 protocol, $3 pin
  local a=""; [ $2 = http ] && a="--protocol openai --url $url"
  local pre=""; [ $3 = pinned ] && pre="taskset -c 1"
  $pre "$bin" bench $a --addr $addr --no-progress --num-requests "$reqs" --concurrency "$conc" \
    --input-len 128 --output-len 128 --json "$out/$1.json" >/dev/null 2>&1
  /usr/bin/python3 -c "import json;d=json.load(open('$out/$1.json'));print('$1', round(d['itl_ms']['median'],4), round(d['tpot_ms']['median'],4), round(d['output_throughput']))"
}
for mode in pinned unpinned; do
  if [ $mode = pinned ]; then
    for t in $(ls /proc/$pid/task); do taskset -p -c 1 $t >/dev/null; done; taskset -p -c 0 $eng >/dev/null
  else
    for t in $(ls /proc/$pid/task); do taskset -p -c 0,1 $t >/dev/null; done
  fi
  for r in $(seq 1 "$rounds"); do
    if ((r % 2)); then run "$mode-grpc-$r" grpc $mode; run "$mode-http-$r" http $mode; else run "$mode-http-$r" http $mode; run "$mode-grpc-$r" grpc $mode; fi
  done
done
