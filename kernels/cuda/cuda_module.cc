// The "cuda" backend as a loadable module (libkvserve_cuda.so): the kvserve binary registers it
// with kernels::RegisterBackendModule and loads it, with the CUDA runtime and cuBLAS, only when
// a command asks for device cuda. Without that, a CPU run maps none of those libraries.
#include <memory>
#include <string>

#include "kernels/cuda/cuda_backend.h"

extern "C" __attribute__((visibility("default"))) kvserve::kernels::Backend*
kvserve_create_cuda_backend(std::string* error) {
  return kvserve::kernels::cuda::CreateCudaBackend(error).release();
}
