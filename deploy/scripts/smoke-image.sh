#!/usr/bin/env bash
# Smoke test of a built kvserve image, without a Docker engine: starts the image's own
# ENTRYPOINT server (`buildah run --isolation chroot`, host network, loopback ports) with the model
# copied in from a models directory, then checks through the image's own client and plain HTTP:
#   - the image config: user 10001, exposed 50051/9464, HEALTHCHECK `kvserve client health`, the
#     OCI labels org.opencontainers.image.revision and .version;
#   - gRPC health is SERVING (the HEALTHCHECK command itself), and so is the liveness service
#     kvserve.liveness;
#   - generation needs the API key mounted at /etc/kvserve/secrets/api-keys;
#   - greedy generation returns the same text as the host build's offline `kvserve generate`
#     (when build/kvserve exists; otherwise a non-empty completion);
#   - GET /metrics counts the request (kvserve_requests_total{status="ok",protocol="grpc"} 1);
#   - SIGTERM drains and the server exits 0.
#
#   deploy/scripts/smoke-image.sh [--image kvserve:latest] [--models DIR]
#
# Needs root and buildah. DIR defaults to ../shared/models beside the repository.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
image=kvserve:latest
models="$root/../shared/models"
while (($#)); do
  case "$1" in
    --image) image="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "smoke-image: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
fail() { echo "smoke-image: FAIL: $*" >&2; exit 1; }
[[ -f "$models/stories260K.gguf" ]] || fail "no stories260K.gguf in $models (--models DIR)"

# Image configuration (docker format keeps HEALTHCHECK).
user="$(buildah inspect --type image --format '{{.Docker.Config.User}}' "$image")"
ports="$(buildah inspect --type image --format '{{range $p, $v := .Docker.Config.ExposedPorts}}{{$p}} {{end}}' "$image")"
health="$(buildah inspect --type image --format '{{if .Docker.Config.Healthcheck}}{{.Docker.Config.Healthcheck.Test}}{{end}}' "$image")"
entry="$(buildah inspect --type image --format '{{.Docker.Config.Entrypoint}}' "$image")"
echo "smoke-image: user=$user ports=[$ports] entrypoint=$entry healthcheck=$health"
[[ "$user" == 10001* ]] || fail "image user is '$user', want the non-root 10001"
[[ "$ports" == *50051/tcp* && "$ports" == *9464/tcp* ]] || fail "exposed ports: $ports"
[[ "$health" == *"client health"* ]] || fail "no HEALTHCHECK through 'kvserve client health'"
[[ "$entry" == *"serve --config /etc/kvserve/server.yaml"* ]] || fail "entrypoint: $entry"
revision="$(buildah inspect --type image \
  --format '{{index .Docker.Config.Labels "org.opencontainers.image.revision"}}' "$image")"
version="$(buildah inspect --type image \
  --format '{{index .Docker.Config.Labels "org.opencontainers.image.version"}}' "$image")"
echo "smoke-image: revision=$revision version=$version"
[[ "$revision" =~ ^[0-9a-f]{40}$ ]] || fail "label org.opencontainers.image.revision: '$revision'"
[[ -n "$version" && "$version" != unknown ]] || fail "label org.opencontainers.image.version: '$version'"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
grpc_port="$(free_port)"
metrics_port="$(free_port)"
while [[ "$metrics_port" == "$grpc_port" ]]; do metrics_port="$(free_port)"; done

ctr="$(buildah from --pull=never "$image")"
log="$(mktemp /tmp/kvserve-smoke.XXXXXX.log)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  buildah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
buildah copy --chown 10001:10001 "$ctr" "$models/stories260K.gguf" /models/stories260K.gguf >/dev/null
# An API key, required here from loopback clients too (the image's CMD requires keys because it
# listens on every interface).
key="smoke-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
keys_file="$(mktemp /tmp/kvserve-keys.XXXXXX)"
echo "$key" > "$keys_file"
buildah copy --chown 10001:10001 "$ctr" "$keys_file" /etc/kvserve/secrets/api-keys >/dev/null
rm -f "$keys_file"

in_image() { buildah run --isolation chroot "$ctr" -- "$@"; }

# The image's ENTRYPOINT and its CMD, with loopback ports instead of 0.0.0.0:50051/9464.
buildah run --isolation chroot "$ctr" -- /usr/local/bin/kvserve serve \
  --config /etc/kvserve/server.yaml --set model.path=/models/stories260K.gguf \
  --set "server.address=127.0.0.1:$grpc_port" --set "metrics.address=127.0.0.1:$metrics_port" \
  --set server.api_keys_file=/etc/kvserve/secrets/api-keys --set server.auth_on_loopback=true \
  >"$log" 2>&1 &
server_pid=$!
for _ in $(seq 1 150); do
  grep -q "listening on" "$log" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$log"; fail "server exited during start"; }
  sleep 0.2
done
grep -q "listening on" "$log" || { cat "$log"; fail "server did not start in 30 s"; }
echo "smoke-image: server up: gRPC 127.0.0.1:$grpc_port, metrics 127.0.0.1:$metrics_port"

status="$(in_image /usr/local/bin/kvserve client health --addr "127.0.0.1:$grpc_port" --timeout 4)" \
  || fail "health check failed: $status"
echo "smoke-image: health: $status"
[[ "$status" == *SERVING* && "$status" != *NOT_SERVING* ]] || fail "health is '$status'"
live="$(in_image /usr/local/bin/kvserve client health --addr "127.0.0.1:$grpc_port" --timeout 4 \
  --service kvserve.liveness)" || fail "liveness check failed: $live"
[[ "$live" == SERVING ]] || fail "liveness is '$live'"
echo "smoke-image: liveness: $live"

prompt="Once upon a time"
if denied="$(in_image /usr/local/bin/kvserve client generate --addr "127.0.0.1:$grpc_port" \
    --prompt "$prompt" --max-tokens 4 --timeout 20 2>&1)"; then
  fail "generate without an API key succeeded"
fi
[[ "$denied" == *UNAUTHENTICATED* ]] || fail "generate without a key: '$denied'"
echo "smoke-image: without a key: UNAUTHENTICATED"
got="$(in_image /usr/local/bin/kvserve client generate --addr "127.0.0.1:$grpc_port" \
  --api-key "$key" --prompt "$prompt" --max-tokens 24 --temperature 0 --timeout 60)" \
  || fail "generate failed"
echo "smoke-image: generate: $got"
completion="${got#"$prompt"}"
[[ -n "${completion//[[:space:]]/}" ]] || fail "empty completion"
if [[ -x "$root/build/kvserve" ]]; then
  # The same greedy generation offline with the host build and the config's KV format.
  want="$("$root/build/kvserve" generate --model "$models/stories260K.gguf" --prompt "$prompt" \
    --max-tokens 24 --temperature 0 --kv-format fp16 2>/dev/null)" || fail "host generate failed"
  [[ "$want" == "$got" ]] || fail "image output differs from the host build: '$got' vs '$want'"
  echo "smoke-image: equal to the host build's offline generate"
fi

metrics="$(curl -fsS "http://127.0.0.1:$metrics_port/metrics")" || fail "GET /metrics failed"
echo "$metrics" | grep -E '^kvserve_requests_total\{status="ok",protocol="grpc"\} 1$' >/dev/null \
  || fail "/metrics does not count the request: $(echo "$metrics" | grep requests_total)"
echo "smoke-image: metrics: $(echo "$metrics" | grep -c '^kvserve_') kvserve series, request counted"

# `buildah run` answers a signal by killing its child; the server itself is sent SIGTERM, as a
# container runtime's stop would. It is found among the descendants of `buildah run`.
server_process() {
  local child
  for child in $(pgrep -P "$1"); do
    if tr '\0' ' ' < "/proc/$child/cmdline" | grep -q '^/usr/local/bin/kvserve serve '; then
      echo "$child"
      return 0
    fi
    server_process "$child" && return 0
  done
  return 1
}
kvserve_pid="$(server_process "$server_pid")" || fail "no kvserve process under buildah run"
kill -TERM "$kvserve_pid"
code=0
wait "$server_pid" || code=$?
server_pid=""
[[ $code -eq 0 ]] || { cat "$log"; fail "server exit code $code after SIGTERM"; }
echo "smoke-image: drained on SIGTERM, exit 0"
echo "smoke-image: PASS ($image)"
