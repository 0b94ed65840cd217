# CUDA kernels: included by the top-level CMakeLists.txt when nvcc is found (KVSERVE_CUDA).
#
#   kvserve_kernels_cuda       attention, quantize-on-write, dense ops, device arena; static CUDA
#                              runtime, no library beyond kvserve_kernels (the CPU twins).
#   kvserve_kernels_cuda_blas  the cuBLAS GEMM wrapper (links the shared cuBLAS) and the "cuda"
#                              kernels::Backend built on all of them (cuda_backend.h).
# Few translation units on purpose: the kernels build for every architecture in
# KVSERVE_CUDA_ARCHS, and CI compiles them on every run.
set(KVSERVE_CUDA_ARCHS "80;90" CACHE STRING "CUDA architectures the kernels are compiled for")
# -DCMAKE_CUDA_ARCHITECTURES (the Dockerfile's CUDA_ARCHITECTURES) overrides the default list.
if(CMAKE_CUDA_ARCHITECTURES)
  set(KVSERVE_CUDA_ARCHS "${CMAKE_CUDA_ARCHITECTURES}")
else()
  set(CMAKE_CUDA_ARCHITECTURES ${KVSERVE_CUDA_ARCHS})
endif()
message(STATUS "CUDA kernels for architectures: ${KVSERVE_CUDA_ARCHS}")
if(KVSERVE_CCACHE AND KVSERVE_CCACHE_PROGRAM AND NOT CMAKE_CUDA_COMPILER_LAUNCHER)
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${KVSERVE_CCACHE_PROGRAM})
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
# CMake 3.25 does not know nvcc's C++20 dialect (nvcc >= 12 has it): declare it.
if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_COMPILE_FEATURES cuda_std_20)
  list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
endif()

# Options of the CUDA targets (replacing the directory's C++ warning flags, which nvcc does not
# take): host warnings through -Xcompiler, relaxed constexpr for kv_format.h's functions.
function(kvserve_cuda_target_options target)
  set_property(TARGET ${target} PROPERTY COMPILE_OPTIONS "")
  set_target_properties(${target} PROPERTIES
      CUDA_ARCHITECTURES "${KVSERVE_CUDA_ARCHS}"
      CUDA_STANDARD 20
      CUDA_STANDARD_REQUIRED ON
      CUDA_EXTENSIONS OFF
      CUDA_RUNTIME_LIBRARY Static
      POSITION_INDEPENDENT_CODE ON)
  target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr
          -Xcompiler=-Wall,-Wextra,-Wno-unused-parameter>
      $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>)
endfunction()

add_library(kvserve_kernels_cuda STATIC
    ${CMAKE_CURRENT_LIST_DIR}/runtime.cu
    ${CMAKE_CURRENT_LIST_DIR}/paged_attention.cu
    ${CMAKE_CURRENT_LIST_DIR}/kv_quantize.cu
    ${CMAKE_CURRENT_LIST_DIR}/ops.cu)
kvserve_cuda_target_options(kvserve_kernels_cuda)
# The encoders must round every product and sum on its own, as the CPU encoders do.
set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/kv_quantize.cu PROPERTIES
    COMPILE_OPTIONS "--fmad=false")
target_include_directories(kvserve_kernels_cuda PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(kvserve_kernels_cuda PUBLIC kvserve_kernels CUDA::cudart_static)
target_compile_definitions(kvserve_kernels_cuda PUBLIC KVSERVE_HAVE_CUDA=1)

add_library(kvserve_kernels_cuda_blas STATIC ${CMAKE_CURRENT_LIST_DIR}/gemm.cu
    ${CMAKE_CURRENT_LIST_DIR}/cuda_backend.cu)
kvserve_cuda_target_options(kvserve_kernels_cuda_blas)
target_link_libraries(kvserve_kernels_cuda_blas PUBLIC kvserve_kernels_cuda CUDA::cublas)

# The loadable module of the "cuda" backend (cuda_module.cc): built beside the kvserve binary,
# which loads it only when device cuda is asked for (kernels::RegisterBackendModule).
add_library(kvserve_cuda MODULE ${CMAKE_CURRENT_LIST_DIR}/cuda_module.cc)
kvserve_cuda_target_options(kvserve_cuda)
target_link_libraries(kvserve_cuda PRIVATE kvserve_kernels_cuda_blas)
set_target_properties(kvserve_cuda PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}
    CXX_VISIBILITY_PRESET hidden CUDA_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
# Static archives linked into the module must be position-independent.
set_target_properties(kvserve_kernels PROPERTIES POSITION_INDEPENDENT_CODE ON)
