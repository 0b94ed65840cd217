// The CUDA runtime as the rest of kvserve sees it, without CUDA headers: streams as an opaque
// handle, device discovery, and the device KV arena.
//
// Thread-safety: the free functions are thread-safe; a DeviceArena is not (its owner serializes
// use, as the engine's block pool does).
#ifndef KVSERVE_KERNELS_CUDA_RUNTIME_H_
#define KVSERVE_KERNELS_CUDA_RUNTIME_H_

#include <cstdint>
#include <string>

struct CUstream_st;

namespace kvserve::kernels::cuda {

// A CUDA stream (cudaStream_t); nullptr is the legacy default stream.
using Stream = CUstream_st*;

// Number of CUDA devices usable by this process: 0 when there is no driver, no device, or a
// driver too old for this build's runtime. Then `why`, when given, says which, with the CUDA
// error and the driver's and the runtime's CUDA versions (e.g. "cudaErrorInsufficientDriver: CUDA
// driver version is insufficient for CUDA runtime version (driver supports CUDA 12.2, this build's
// runtime is CUDA 13.0)").
int DeviceCount(std::string* why = nullptr);
// "driver supports CUDA X.Y, this build's runtime is CUDA A.B" ("no CUDA driver loaded, ..."
// when there is none).
std::string CudaVersions();

struct DeviceInfo {
  std::string name;
  int compute_capability = 0;  // major * 10 + minor
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;
  int multiprocessors = 0;
};
// Properties of device `ordinal`; false (with `error` set) when it cannot be queried.
bool QueryDevice(int ordinal, DeviceInfo* info, std::string* error);

// Waits for the work on `stream`; false (with `error` naming the CUDA error) when a kernel
// failed.
bool Synchronize(Stream stream, std::string* error);

// How big the KV arena is: a byte count, or a fraction of the device's free memory at start-up.
struct ArenaSize {
  int64_t bytes = 0;           // used when > 0
  double free_fraction = 0.0;  // in (0, 1], used when bytes == 0
};

// The device memory of the paged KV cache: ONE cudaMalloc at start-up, cut into `block_bytes`
// blocks. Block b lives at base() + b * block_bytes(); block_pointers() is a device array of
// those addresses, the PagedKvLayerView::block_data the kernels take. Bookkeeping (which block is
// free, its format and owner) belongs to whoever hands out the indices; the engine's BlockPool
// does not place its blocks here yet (the serving engine runs on the CPU).
class DeviceArena {
 public:
  // Allocates the arena on the current device: bytes rounded down to whole blocks (block_bytes
  // rounded up to 256). False, with `error` naming the request and what the device had, when the
  // size is invalid or the allocation fails.
  static bool Create(const ArenaSize& size, int64_t block_bytes, DeviceArena* arena,
                     std::string* error);

  DeviceArena() = default;
  DeviceArena(DeviceArena&& other) noexcept;
  DeviceArena& operator=(DeviceArena&& other) noexcept;
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  ~DeviceArena();

  uint8_t* base() const { return base_; }
  int64_t block_bytes() const { return block_bytes_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t bytes() const { return block_bytes_ * num_blocks_; }        // what the arena holds
  uint8_t* const* block_pointers() const { return block_pointers_; }  // device [num_blocks]

 private:
  void Release();

  uint8_t* base_ = nullptr;
  uint8_t** block_pointers_ = nullptr;
  int64_t block_bytes_ = 0;
  int64_t num_blocks_ = 0;
};

}  // namespace kvserve::kernels::cuda

#endif  // KVSERVE_KERNELS_CUDA_RUNTIME_H_
