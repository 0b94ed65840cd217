#!/usr/bin/env bash
# Runs the soak and fault test (tests/soak/soak_test.cc) for a chosen time against the kvserve of
# ${KVSERVE_BUILD_DIR:-build}, after bringing that build up to date.
#
#   tests/soak/run.sh [SECONDS] [FORMATS] [CLIENTS]
#   e.g. tests/soak/run.sh 3600 fp32,int8,fp16,bf16,fp8,int4 16
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${KVSERVE_BUILD_DIR:-$root/build}"
cmake --build "$build" --target soak_test kvserve -j "${KVSERVE_JOBS:-$(nproc)}" >/dev/null
export KVSERVE_SOAK_SECONDS="${1:-120}"
export KVSERVE_SOAK_FORMATS="${2:-fp32,fp16}"
export KVSERVE_SOAK_CLIENTS="${3:-12}"
exec "$build/tests/soak_test"
