#!/usr/bin/env bash
# Checks that tsan_absl_sync.cc is needed and sufficient with the installed Abseil: the program
# tsan_absl_sync_check.cc, built with TSan against the system Abseil, must get a (false) race
# report without the interposition and none with it. Run by scripts/sanitize.sh thread.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$dir/../.." && pwd)"
cxx="${CXX:-c++}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
libs=(-labsl_synchronization -labsl_time -labsl_base -ldl -lpthread)
"$cxx" -std=c++20 -O1 -g -fsanitize=thread "$dir/tsan_absl_sync_check.cc" -o "$out/plain" "${libs[@]}"
"$cxx" -std=c++20 -O1 -g -fsanitize=thread -I"$root" "$dir/tsan_absl_sync_check.cc" \
  "$dir/tsan_absl_sync.cc" -o "$out/shim" "${libs[@]}"
if TSAN_OPTIONS=halt_on_error=1 "$out/plain" >"$out/plain.log" 2>&1; then
  echo "check_tsan_absl: no report without the interposition: the installed Abseil may be" \
    "instrumented; tsan_absl_sync.cc may not be needed" >&2
else
  grep -q "WARNING: ThreadSanitizer" "$out/plain.log"
  echo "check_tsan_absl: without the interposition TSan reports a false race (as expected)"
fi
if ! TSAN_OPTIONS=halt_on_error=1 "$out/shim" >"$out/shim.log" 2>&1; then
  cat "$out/shim.log" >&2
  echo "check_tsan_absl: FAILED: TSan reports with tsan_absl_sync.cc" >&2
  exit 1
fi
echo "check_tsan_absl: with tsan_absl_sync.cc: no report"
