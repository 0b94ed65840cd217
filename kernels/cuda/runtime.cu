// Device discovery, stream synchronization and the device KV arena.
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/runtime.h"

namespace kvserve::kernels::cuda {
namespace {

std::string ErrorText(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

__global__ void FillBlockPointers(uint8_t* base, int64_t block_bytes, int64_t n, uint8_t** out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = base + i * block_bytes;
  }
}

}  // namespace

std::string CudaVersions() {
  auto text = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);  // 0 when no driver is loaded
  cudaRuntimeGetVersion(&runtime);
  return (driver > 0 ? "driver supports CUDA " + text(driver)
                     : std::string("no CUDA driver loaded")) +
         ", this build's runtime is CUDA " + text(runtime);
}

int DeviceCount(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    if (why != nullptr) *why = ErrorText(e) + " (" + CudaVersions() + ")";
    return 0;
  }
  if (n == 0 && why != nullptr) *why = "no CUDA device (" + CudaVersions() + ")";
  return n;
}

bool QueryDevice(int ordinal, DeviceInfo* info, std::string* error) {
  cudaDeviceProp prop;
  cudaError_t e = cudaGetDeviceProperties(&prop, ordinal);
  if (e != cudaSuccess) {
    *error = "device " + std::to_string(ordinal) + ": " + ErrorText(e);
    return false;
  }
  int current = 0;
  cudaGetDevice(&current);
  size_t free_b = 0, total_b = 0;
  if (current == ordinal) {
    e = cudaMemGetInfo(&free_b, &total_b);
    if (e != cudaSuccess) {
      *error = "device " + std::to_string(ordinal) + ": cudaMemGetInfo: " + ErrorText(e);
      return false;
    }
  }
  info->name = prop.name;
  info->compute_capability = prop.major * 10 + prop.minor;
  info->total_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  info->free_bytes = static_cast<int64_t>(free_b);
  info->multiprocessors = prop.multiProcessorCount;
  return true;
}

bool Synchronize(Stream stream, std::string* error) {
  const cudaError_t e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) {
    *error = ErrorText(e);
    return false;
  }
  return true;
}

bool DeviceArena::Create(const ArenaSize& size, int64_t block_bytes, DeviceArena* arena,
                         std::string* error) {
  if (block_bytes <= 0) {
    *error = "KV arena: block size must be positive, got " + std::to_string(block_bytes) + " bytes";
    return false;
  }
  block_bytes = (block_bytes + 255) / 256 * 256;
  size_t free_b = 0, total_b = 0;
  cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
  if (e != cudaSuccess) {
    *error = "KV arena: cannot query device memory: " + ErrorText(e);
    return false;
  }
  int64_t bytes = size.bytes;
  if (bytes <= 0) {
    if (!(size.free_fraction > 0.0 && size.free_fraction <= 1.0)) {
      *error = "KV arena: set a byte size or a fraction of free memory in (0, 1], got fraction " +
               std::to_string(size.free_fraction);
      return false;
    }
    bytes = static_cast<int64_t>(static_cast<double>(free_b) * size.free_fraction);
  }
  const int64_t blocks = bytes / block_bytes;
  if (blocks <= 0) {
    *error = "KV arena: " + std::to_string(bytes) + " bytes hold no block of " +
             std::to_string(block_bytes) + " bytes";
    return false;
  }
  // The pointer table takes 8 bytes per block on top of the blocks.
  const int64_t want = blocks * block_bytes;
  DeviceArena a;
  e = cudaMalloc(reinterpret_cast<void**>(&a.base_), static_cast<size_t>(want));
  if (e != cudaSuccess) {
    cudaGetLastError();
    *error = "KV arena: cudaMalloc of " + std::to_string(want) + " bytes failed (" + ErrorText(e) +
             "); the device had " + std::to_string(free_b) + " of " + std::to_string(total_b) +
             " bytes free";
    return false;
  }
  e = cudaMalloc(reinterpret_cast<void**>(&a.block_pointers_),
                 static_cast<size_t>(blocks) * sizeof(uint8_t*));
  if (e != cudaSuccess) {
    cudaGetLastError();
    *error = "KV arena: cudaMalloc of the block table failed (" + ErrorText(e) + ")";
    return false;
  }
  a.block_bytes_ = block_bytes;
  a.num_blocks_ = blocks;
  FillBlockPointers<<<static_cast<unsigned>(std::min<int64_t>((blocks + 255) / 256, 4096)), 256>>>(
      a.base_, block_bytes, blocks, a.block_pointers_);
  e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    *error = "KV arena: initialising the block table failed (" + ErrorText(e) + ")";
    return false;
  }
  *arena = std::move(a);
  return true;
}

DeviceArena::DeviceArena(DeviceArena&& other) noexcept { *this = std::move(other); }

DeviceArena& DeviceArena::operator=(DeviceArena&& other) noexcept {
  if (this != &other) {
    Release();
    base_ = std::exchange(other.base_, nullptr);
    block_pointers_ = std::exchange(other.block_pointers_, nullptr);
    block_bytes_ = std::exchange(other.block_bytes_, 0);
    num_blocks_ = std::exchange(other.num_blocks_, 0);
  }
  return *this;
}

DeviceArena::~DeviceArena() { Release(); }

void DeviceArena::Release() {
  if (block_pointers_ != nullptr) cudaFree(block_pointers_);
  if (base_ != nullptr) cudaFree(base_);
  block_pointers_ = nullptr;
  base_ = nullptr;
  block_bytes_ = 0;
  num_blocks_ = 0;
}

}  // namespace kvserve::kernels::cuda
