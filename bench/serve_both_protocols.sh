# Sourced by the HTTP-against-gRPC benchmarks: starts `kvserve serve` with both protocols on
# free loopback ports (metrics off, prefix cache off so that no run finds another's prompts) and
# waits for both to listen.
#
#   start_both_protocols BINARY MODEL LOG [--set key=value ...]
#
# Sets pid, addr (the gRPC HOST:PORT) and url (http://HOST:PORT); kills the server on exit.
start_both_protocols() {
  local bin="$1" model="$2" log="$3"
  shift 3
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  : > "$log"
  "$bin" serve --config "$root/configs/server.yaml" --set "model.path=$model" \
    --set server.address=127.0.0.1:0 --set http.address=127.0.0.1:0 --set metrics.address= \
    --set prefix_cache.enabled=false --set logging.level=info "$@" 2> "$log" &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  addr="" url=""
  for _ in $(seq 1 600); do
    addr=$(sed -n 's/.*listening on \([0-9.]*:[0-9]*\).*/\1/p' "$log" | head -1)
    url=$(sed -n 's/.*HTTP API on \(http:\/\/[0-9.]*:[0-9]*\).*/\1/p' "$log" | head -1)
    [[ -n "$addr" && -n "$url" ]] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "the server did not start listening on both protocols (log: $log)" >&2
  exit 1
}
