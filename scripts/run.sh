#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a running kvserve: installs the dependencies,
# builds, and runs the main job on the default configuration with the bundled model.
# Extra arguments are passed to `kvserve generate`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" >&2
model="${KVSERVE_MODEL:-$root/../shared/models/stories260K.gguf}"
if [[ ! -f "$model" ]]; then
  echo "run.sh: model not found at $model; set KVSERVE_MODEL to a GGUF file (see README)" >&2
  exit 1
fi
exec "${KVSERVE_BUILD_DIR:-$root/build}/kvserve" generate --model "$model" \
  --prompt "${KVSERVE_PROMPT:-Once upon a time}" --max-tokens 256 "$@"
