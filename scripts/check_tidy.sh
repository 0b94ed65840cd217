#!/usr/bin/env bash
# Runs clang-tidy (the checks in .clang-tidy, and engine/.clang-tidy's function-size limit) on every
# C++ source of engine/, kernels/, server/ and tools/, with the compile commands of a build
# (${KVSERVE_BUILD_DIR:-build}/compile_commands.json, written by scripts/build.sh). Exits non-zero
# on any warning, printing them.
#
#   scripts/check_tidy.sh              # the whole tree (a few minutes on 2 cores)
#   scripts/check_tidy.sh FILE...      # only these files
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVSERVE_BUILD_DIR:-$root/build}"
tidy="${CLANG_TIDY:-clang-tidy}"
[[ -f "$build/compile_commands.json" ]] || {
  echo "check_tidy: $build/compile_commands.json is missing; run scripts/build.sh first" >&2
  exit 1
}
cd "$root"
if [[ $# -gt 0 ]]; then
  files=("$@")
else
  mapfile -t files < <(git ls-files 'engine/*.cc' 'kernels/*.cc' 'server/*.cc' 'tools/*.cc')
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
printf '%s\n' "${files[@]}" |
  xargs -P "$(nproc)" -n 4 bash -c \
    'tidy="$1"; build="$2"; shift 2; "$tidy" -p "$build" --quiet "$@" 2>/dev/null || true' \
    _ "$tidy" "$build" >"$log"
if grep -q "warning:\|error:" "$log"; then
  grep -A3 "warning:\|error:" "$log"
  echo "check_tidy: $(grep -c 'warning:\|error:' "$log") finding(s) in ${#files[@]} files" >&2
  exit 1
fi
echo "check_tidy: ${#files[@]} files clean"
