#!/usr/bin/env bash
# Builds the GPU tests and the GPU kernel benchmark into a folder that can be carried to a GPU
# machine that has the NVIDIA driver but not this machine's libraries (bench/gpu/check.sh runs
# them there).
#
#   bench/gpu/build.sh            -> build-gpu/ (CMake build) and build-gpu/bin/ (what to carry)
#
# The binaries link only the kernels: static CUDA runtime, static GoogleTest (libgtest-dev),
# static libstdc++; no gRPC, spdlog or yaml-cpp. They are compiled for a portable x86-64
# baseline (AVX2/FMA/F16C, KVSERVE_NATIVE=OFF) and for the GPU architectures in
# KVSERVE_CUDA_ARCHS (default 80;90: A100, H100/H200). gpu_gemm_test alone needs the shared
# cuBLAS (libcublas.so.13) of a CUDA 13 toolkit at run time; so do the server binary's cuda module
# and decode_bench, which travel in kvserve-bundle.tar.xz with their other libraries.
# Carry only build-gpu/bin (about 35 MiB): `carry: ["build-gpu/bin"]`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${KVSERVE_GPU_BUILD_DIR:-$root/build-gpu}"
archs="${KVSERVE_CUDA_ARCHS:-80;90}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVSERVE_CUDA=ON \
  -DKVSERVE_NATIVE=OFF "-DKVSERVE_CUDA_ARCHS=$archs" -DKVSERVE_BUILD_TESTS=ON \
  -DKVSERVE_BUILD_BENCH=ON
cmake --build "$build" -j "${KVSERVE_JOBS:-$(nproc)}" --target gpu_kernels_test gpu_gemm_test \
  gpu_backend_conformance_test gpu_kernels_bench kvserve kvserve_cuda decode_bench
mkdir -p "$build/bin"
cp "$build/tests/gpu/gpu_kernels_test" "$build/tests/gpu/gpu_gemm_test" \
  "$build/tests/gpu/gpu_backend_conformance_test" "$build/bench/gpu/gpu_kernels_bench" "$build/bin/"
cp "$root/bench/gpu/check.sh" "$build/bin/"

# The server binary, the cuda module and decode_bench with the shared libraries they need that
# a CUDA machine may lack (gRPC, protobuf, ICU, ...; not the C library, libstdc++ or cuBLAS, which
# the machine's own system and CUDA toolkit provide), and the stories260K model: one xz archive
# (about 20 MiB) that check.sh unpacks.
bundle="$build/bundle/kvserve-bundle"
rm -rf "$build/bundle"
mkdir -p "$bundle/lib"
cp "$build/kvserve" "$build/libkvserve_cuda.so" "$build/bench/decode_bench" "$bundle/"
strip "$bundle/kvserve" "$bundle/decode_bench" "$bundle/libkvserve_cuda.so"
for f in "$bundle/kvserve" "$bundle/decode_bench"; do
  ldd "$f" | awk '$3 ~ /^\// {print $3}'
done | sort -u | grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' |
  grep -v -E 'libcublas' | while read -r lib; do cp -L "$lib" "$bundle/lib/"; done
cp "$root/../shared/models/stories260K.gguf" "$bundle/"
tar -C "$build/bundle" -cJf "$build/bin/kvserve-bundle.tar.xz" kvserve-bundle
echo "carry: $build/bin ($(du -sh "$build/bin" | cut -f1))"
