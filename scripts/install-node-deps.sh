#!/usr/bin/env bash
# Installs the npm packages the test suite uses (tests/server/http/openai_sdk: the official
# OpenAI SDK for Node, exactly the versions of its package-lock.json) from the npm registry.
# Idempotent: nothing is fetched when node_modules already matches the lock file. Needs node and
# npm (Node.js 18 or later); without them it says so and exits 0, and the SDK test skips itself.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/tests/server/http/openai_sdk"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "install-node-deps: node or npm not found; the OpenAI SDK test will be skipped" >&2
  exit 0
fi
stamp="$dir/node_modules/.kvserve-lock"
if [[ -f "$stamp" ]] && cmp -s "$stamp" "$dir/package-lock.json"; then
  echo "install-node-deps: $dir/node_modules is up to date"
  exit 0
fi
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
cp "$dir/package-lock.json" "$stamp"
