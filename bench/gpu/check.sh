#!/usr/bin/env bash
# The GPU check: runs the GPU tests and the GPU kernel benchmark from a carried folder of
# binaries (bench/gpu/build.sh makes it) and prints the benchmark's table. Fits in 8 minutes on
# an H100: the steps are limited to 180 + 60 + 200 s. Exit status: 0 passed, 1 a test or the
# benchmark failed, 2 binaries missing, 3 no GPU visible (nothing was checked).
#
#   bench/gpu/check.sh [BIN_DIR]      BIN_DIR defaults to build-gpu/bin
#   env: KVSERVE_GPU_BENCH_ARGS       extra arguments for gpu_kernels_bench (e.g. --quick)
#        OUT                          when set, logs are also written there
set -uo pipefail
bin="${1:-build-gpu/bin}"
out="${OUT:-/tmp/kvserve-gpu-check}"
mkdir -p "$out"
status=0
echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv 2>&1 || true
date -u
for b in gpu_kernels_test gpu_gemm_test gpu_kernels_bench; do
  if [[ ! -x "$bin/$b" ]]; then
    echo "missing $bin/$b: run bench/gpu/build.sh and carry build-gpu/bin" >&2
    exit 2
  fi
done

echo "== gpu_kernels_test"
timeout 180 "$bin/gpu_kernels_test" --gtest_brief=1 2>&1 | tee "$out/gpu_kernels_test.log"
rc=${PIPESTATUS[0]}
echo "gpu_kernels_test: exit $rc"
[[ $rc -ne 0 ]] && status=1
if grep -q "no CUDA device" "$out/gpu_kernels_test.log"; then
  echo "== check: NOT RUN: the binaries see no CUDA device (driver missing or no GPU)"
  exit 3
fi

echo "== gpu_gemm_test (shared cuBLAS of the CUDA toolkit)"
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda/lib64:/usr/local/cuda/lib"
if ldd "$bin/gpu_gemm_test" | grep -q "not found"; then
  echo "gpu_gemm_test: not run, libraries missing:"
  ldd "$bin/gpu_gemm_test" | grep "not found"
else
  timeout 60 "$bin/gpu_gemm_test" --gtest_brief=1 2>&1 | tee "$out/gpu_gemm_test.log"
  rc=${PIPESTATUS[0]}
  echo "gpu_gemm_test: exit $rc"
  [[ $rc -ne 0 ]] && status=1
fi

echo "== gpu_backend_conformance_test (every Backend op on \"cuda\" against the CPU backend)"
if [[ ! -x "$bin/gpu_backend_conformance_test" ]]; then
  echo "gpu_backend_conformance_test: not run, missing (rebuild with bench/gpu/build.sh)"
  status=1
elif ldd "$bin/gpu_backend_conformance_test" | grep -q "not found"; then
  echo "gpu_backend_conformance_test: not run, libraries missing:"
  ldd "$bin/gpu_backend_conformance_test" | grep "not found"
else
  timeout 120 "$bin/gpu_backend_conformance_test" --gtest_brief=1 2>&1 |
    tee "$out/gpu_backend_conformance_test.log"
  rc=${PIPESTATUS[0]}
  echo "gpu_backend_conformance_test: exit $rc"
  [[ $rc -ne 0 ]] && status=1
fi

echo "== gpu_kernels_bench"
# shellcheck disable=SC2086
timeout 200 "$bin/gpu_kernels_bench" ${KVSERVE_GPU_BENCH_ARGS:-} 2>&1 | tee "$out/gpu_kernels_bench.log"
rc=${PIPESTATUS[0]}
echo "gpu_kernels_bench: exit $rc"
[[ $rc -ne 0 ]] && status=1
echo "== check: $([[ $status -eq 0 ]] && echo passed || echo FAILED)"
exit $status
