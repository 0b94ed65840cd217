#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running kvserve: installs the dependencies,
# builds, and starts the gRPC server on the default configuration (configs/server.yaml, listening
# on 127.0.0.1:50051) with the bundled model. Stop it with Ctrl-C (it drains, then exits 0).
# Extra arguments are passed to `kvserve serve`, e.g. --set kv_cache.format=bf16.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" >&2
config="${KVSERVE_CONFIG:-$root/configs/server.yaml}"
args=()
if [[ -n "${KVSERVE_MODEL:-}" ]]; then
  model="$KVSERVE_MODEL"
  args+=(--set "model.path=$model")
else
  model="$root/../shared/models/stories260K.gguf"
fi
if [[ ! -f "$model" ]]; then
  echo "run.sh: model not found at $model; set KVSERVE_MODEL to a GGUF file (see README)" >&2
  exit 1
fi
exec "${KVSERVE_BUILD_DIR:-$root/build}/kvserve" serve --config "$config" "${args[@]}" "$@"
