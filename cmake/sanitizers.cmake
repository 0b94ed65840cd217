# Sanitizer and fuzzing builds.
#
#   -DKVSERVE_SANITIZE=address   AddressSanitizer + UndefinedBehaviorSanitizer (gcc or clang)
#   -DKVSERVE_SANITIZE=thread    ThreadSanitizer (gcc or clang)
#   -DKVSERVE_FUZZ=ON            libFuzzer targets under tests/fuzz (clang only), built with
#                                ASan + UBSan; the unit tests and benchmarks are left out.
#
# Every target of the project is instrumented (flags are added globally, so include this file
# before any target is defined). The Debian libraries we link (gRPC, protobuf, Abseil, spdlog,
# yaml-cpp) are not instrumented: ASan still sees their heap through its malloc interceptors; TSan
# cannot see synchronisation inside them, which tsan.supp documents where it matters. Use a separate
# build directory per sanitizer (scripts/sanitize.sh uses build-asan and build-tsan).
set(KVSERVE_SANITIZE "" CACHE STRING "Sanitizer build: address (ASan+UBSan), thread (TSan) or empty")
set_property(CACHE KVSERVE_SANITIZE PROPERTY STRINGS "" address thread)
option(KVSERVE_FUZZ "Build the libFuzzer targets in tests/fuzz (clang only; implies ASan+UBSan)" OFF)

set(KVSERVE_SANITIZER_FLAGS "")
if(KVSERVE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "KVSERVE_FUZZ=ON needs clang (libFuzzer): configure with "
                        "-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++")
  endif()
  if(KVSERVE_SANITIZE STREQUAL "thread")
    message(FATAL_ERROR "KVSERVE_FUZZ=ON builds with ASan+UBSan; it cannot be combined with "
                        "KVSERVE_SANITIZE=thread")
  endif()
  list(APPEND KVSERVE_SANITIZER_FLAGS -fsanitize=fuzzer-no-link,address,undefined
       -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
  set(KVSERVE_BUILD_TESTS OFF)
  set(KVSERVE_BUILD_BENCH OFF)
elseif(KVSERVE_SANITIZE STREQUAL "address")
  list(APPEND KVSERVE_SANITIZER_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined
       -fno-omit-frame-pointer -g)
elseif(KVSERVE_SANITIZE STREQUAL "thread")
  list(APPEND KVSERVE_SANITIZER_FLAGS -fsanitize=thread -fno-omit-frame-pointer -g)
elseif(NOT KVSERVE_SANITIZE STREQUAL "")
  message(FATAL_ERROR "KVSERVE_SANITIZE must be address, thread or empty, got '${KVSERVE_SANITIZE}'")
endif()

if(KVSERVE_SANITIZER_FLAGS)
  add_compile_options(${KVSERVE_SANITIZER_FLAGS})
  # The fuzzer runtime itself is linked only into the fuzz executables (tests/fuzz).
  list(TRANSFORM KVSERVE_SANITIZER_FLAGS REPLACE "fuzzer-no-link," "")
  add_link_options(${KVSERVE_SANITIZER_FLAGS})
  if(KVSERVE_SANITIZE STREQUAL "thread")
    # Tells TSan about the ordering that the (uninstrumented) system Abseil's Mutex, CondVar and
    # Notification provide; see the file. Whole-archived into every executable defined later.
    add_library(kvserve_tsan_absl STATIC ${CMAKE_CURRENT_LIST_DIR}/../tests/sanitizers/tsan_absl_sync.cc)
    target_include_directories(kvserve_tsan_absl PRIVATE ${CMAKE_CURRENT_LIST_DIR}/..)
    # It calls into libabsl_synchronization itself (Condition::Eval), so executables that use no
    # Abseil synchronization of their own (kernels_test) still need the library on their link line.
    # The name resolves once find_package(absl) has run.
    target_link_libraries(kvserve_tsan_absl PUBLIC absl::synchronization ${CMAKE_DL_LIBS})
    # Once every directory is configured, whole-archive it into each executable (only there: a
    # static library carrying it would put it on a link line twice).
    function(kvserve_link_tsan_absl dir)
      get_property(targets DIRECTORY ${dir} PROPERTY BUILDSYSTEM_TARGETS)
      foreach(t IN LISTS targets)
        get_target_property(type ${t} TYPE)
        if(type STREQUAL "EXECUTABLE")
          target_link_libraries(${t} PRIVATE "$<LINK_LIBRARY:WHOLE_ARCHIVE,kvserve_tsan_absl>")
        endif()
      endforeach()
      get_property(subdirs DIRECTORY ${dir} PROPERTY SUBDIRECTORIES)
      foreach(sub IN LISTS subdirs)
        kvserve_link_tsan_absl(${sub})
      endforeach()
    endfunction()
    cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL kvserve_link_tsan_absl
                   ${CMAKE_SOURCE_DIR})
  endif()
  message(STATUS "kvserve: sanitizer flags ${KVSERVE_SANITIZER_FLAGS} (fuzz targets: ${KVSERVE_FUZZ})")
endif()
