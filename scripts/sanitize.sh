#!/usr/bin/env bash
# Builds kvserve with a sanitizer into its own build directory and runs tests there.
#
#   scripts/sanitize.sh address [ctest args...]   ASan + UBSan into build-asan (whole suite)
#   scripts/sanitize.sh thread  [ctest args...]   TSan into build-tsan (default: the scheduler,
#                                                 engine, block-pool and server tests)
#
# Built at -O1 -g1 (RelWithDebInfo with its flags replaced); benchmarks are not built. Any
# sanitizer report fails the test that triggered it (the runtime options below make every report
# fatal). Extra ctest arguments replace the default selection,
# e.g. scripts/sanitize.sh thread -R 'BlockPool'.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kind="${1:-}"
shift || true
case "$kind" in
  address) build="${KVSERVE_BUILD_DIR:-$root/build-asan}" ;;
  thread) build="${KVSERVE_BUILD_DIR:-$root/build-tsan}" ;;
  *)
    echo "usage: $0 address|thread [ctest args...]" >&2
    exit 2
    ;;
esac
jobs="${KVSERVE_JOBS:-$(nproc)}"
if [[ "$kind" == thread ]]; then
  "$root/tests/sanitizers/check_tsan_absl.sh"
fi
# -O1 -g1: several times faster to build than -O2 -g with the sanitizers, still fast enough to run
# the suite (the kernels at -O2 under ASan take minutes per file).
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" -DKVSERVE_SANITIZE="$kind" \
  -DKVSERVE_BUILD_BENCH=OFF -DKVSERVE_CUDA=OFF >/dev/null
cmake --build "$build" -j "$jobs"

supp="$root/tests/sanitizers"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp"

cd "$build"
if (($# == 0)) && [[ "$kind" == thread ]]; then
  # The engine's concurrent parts (scheduler, engine, block pool, request streams, prefix
  # admission), then every server and kvserve-command (tools) test but the two dashboard suites:
  # they read protobuf map fields that the uninstrumented libprotobuf filled, and protobuf's
  # headers give MapFieldBase two more members under TSan than the library was built with
  # (docs/reliability.md).
  ctest --output-on-failure -j "$jobs" --timeout 1800 \
    -R 'Scheduler|BlockPool|Engine|RequestStream|Prefix|TokenEvictionServing|KvCapacity' -E soak
  ctest --output-on-failure -j "$jobs" --timeout 1800 -L 'server|tools' \
    -E 'GrafanaDashboardTest|DashboardAgainstServerTest'
  exit 0
fi
ctest --output-on-failure -j "$jobs" --timeout 1800 "$@"
