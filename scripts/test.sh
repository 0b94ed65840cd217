#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a passing test suite: installs the dependencies,
# builds everything (CUDA kernels too when nvcc is present), and runs every test with CTest.
# GPU tests skip themselves when no GPU is present.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVSERVE_BUILD_DIR:-$root/build}"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
cd "$build"
ctest --output-on-failure -j "${KVSERVE_JOBS:-$(nproc)}" --timeout 900 "$@"
