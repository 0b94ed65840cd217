#!/usr/bin/env bash
# Runs clang-tidy (the checks in .clang-tidy, and engine/.clang-tidy's function-size limit) on every
# C++ source of engine/, kernels/, server/ and tools/, with the compile commands of a build
# (${KVSERVE_BUILD_DIR:-build}/compile_commands.json, written by scripts/build.sh). Exits non-zero
# on any warning, printing them, and also when clang-tidy itself fails on a file (not found,
# crashed, no compile command): a file that was not checked is never reported as clean.
#
#   scripts/check_tidy.sh              # the whole tree (7.5 minutes on 2 cores, up to 13 while other builds run)
#   scripts/check_tidy.sh FILE...      # only these files
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${KVSERVE_BUILD_DIR:-$root/build}"
tidy="${CLANG_TIDY:-clang-tidy}"
command -v "$tidy" >/dev/null || {
  echo "check_tidy: $tidy not found (set CLANG_TIDY)" >&2
  exit 1
}
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
[[ ${#files[@]} -gt 0 ]] || {
  echo "check_tidy: no files to check" >&2
  exit 1
}
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# One clang-tidy per file, each writing its own report, so that parallel output never interleaves
# and every file leaves a record. A run that exits non-zero without a finding in its report failed
# (clang-tidy exits 1 on any finding, as WarningsAsErrors is '*'). The wrapper itself always exits
# 0, so xargs never stops early (it would on an exit status of 255).
printf '%s\0' "${files[@]}" |
  xargs -0 -r -P "$(nproc)" -n 1 bash -c '
    tidy="$1"; build="$2"; out="$3"; file="$4"
    report="$out/$(printf "%s" "$file" | tr "/" "_").log"
    rc=0
    "$tidy" -p "$build" --quiet "$file" >"$report" 2>"$report.err" || rc=$?
    if [[ $rc -ne 0 ]] && ! grep -q "warning:\|error:" "$report"; then
      { echo "$file: clang-tidy exited $rc without a finding:"; cat "$report.err"; } >"$out/$(printf "%s" "$file" | tr "/" "_").failed"
    fi
    echo "$file" >"$report.done"
    exit 0' _ "$tidy" "$build" "$out"
done_count=$(find "$out" -name '*.done' | wc -l)
status=0
if compgen -G "$out/*.failed" >/dev/null; then
  cat "$out"/*.failed >&2
  echo "check_tidy: clang-tidy failed on $(compgen -G "$out/*.failed" | wc -l) file(s)" >&2
  status=1
fi
if [[ $done_count -ne ${#files[@]} ]]; then
  echo "check_tidy: only $done_count of ${#files[@]} files were checked" >&2
  status=1
fi
# Counted once each: a header's finding shows in every file that includes it.
findings=$(cat "$out"/*.log | { grep "warning:\|error:" || true; } | sort -u | wc -l)
if [[ $findings -gt 0 ]]; then
  cat "$out"/*.log | grep -A3 "warning:\|error:" | awk '/(warning|error):/ { show = !seen[$0]++ } show'
  echo "check_tidy: $findings finding(s) in ${#files[@]} files" >&2
  status=1
fi
[[ $status -eq 0 ]] && echo "check_tidy: ${#files[@]} files clean"
exit "$status"
