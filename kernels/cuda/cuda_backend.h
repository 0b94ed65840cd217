// The CUDA backend: kernels/backend.h over the CUDA kernels of kernels/cuda/ (attention, KV
// writes, dense ops, the cuBLAS GEMM). Memory is device memory (host_memory() is false): every
// pointer an op takes, arrays of pointers included, is a device pointer. Ops are enqueued on
// ExecContext::stream (a cudaStream_t; null: the legacy default stream) and are asynchronous;
// Synchronize waits for the default stream. CopyIn / CopyOut are synchronous cudaMemcpy.
//
// What runs here: F32 / F16 / BF16 weights (no quantized weight types yet); attention over every
// KV format but lowrank; KV writes into the token-writable formats only (fp32, fp16, bf16: whole
// blocks of the other formats are encoded by cuda::ConvertKvRegions, which is not behind the
// interface yet). PagedAttention needs AttentionBatch::max_kv_len; without a workspace it uses
// one of its own, grown on demand.
//
// Thread-safety: one thread at a time (it owns the cuBLAS handle and the workspace).
#ifndef KVSERVE_KERNELS_CUDA_CUDA_BACKEND_H_
#define KVSERVE_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace kvserve::kernels::cuda {

// A CUDA backend on the current device; null with `error` set when there is no usable device or
// cuBLAS cannot start.
std::unique_ptr<Backend> CreateCudaBackend(std::string* error);

// Registers "cuda" (CreateCudaBackend) in the backend registry; idempotent, thread-safe.
void RegisterCudaBackend();

}  // namespace kvserve::kernels::cuda

#endif  // KVSERVE_KERNELS_CUDA_CUDA_BACKEND_H_
