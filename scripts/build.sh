#!/usr/bin/env bash
# Configures and builds kvserve (Release) into ${KVSERVE_BUILD_DIR:-build}. Extra arguments are
# passed to CMake, e.g. scripts/build.sh -DKVSERVE_CUDA=OFF.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVSERVE_BUILD_DIR:-$root/build}"
jobs="${KVSERVE_JOBS:-$(nproc)}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build" -j "$jobs"
