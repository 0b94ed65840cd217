#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a passing test suite: installs the dependencies
# (Debian packages, and the npm packages of the OpenAI SDK test),
# builds everything (CUDA kernels too when nvcc is present), and runs every test with CTest except
# the soak (label `soak`, about 2 minutes: `ctest -L soak`, or KVSERVE_TEST_SOAK=1 here; .ci/run
# runs it after the suite). GPU tests skip themselves when no GPU is present. Extra arguments go
# to ctest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVSERVE_BUILD_DIR:-$root/build}"
"$root/scripts/install-deps.sh"
"$root/scripts/install-node-deps.sh"
"$root/scripts/build.sh"
cd "$build"
exclude=(-LE soak)
if [[ "${KVSERVE_TEST_SOAK:-0}" != 0 ]]; then exclude=(); fi
start=$(date +%s)
ctest --output-on-failure -j "${KVSERVE_JOBS:-$(nproc)}" --timeout 900 "${exclude[@]}" "$@"
echo "test.sh: the suite took $(( $(date +%s) - start )) s of wall time"
