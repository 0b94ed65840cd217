#!/usr/bin/env bash
# Runs every libFuzzer target for SECONDS each (default 60), PARALLEL at a time (default 1), at
# low CPU priority. Exit status non-zero when any target found a problem.
#
#   tests/fuzz/run_all.sh [SECONDS] [PARALLEL]
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${1:-60}"
parallel="${2:-1}"
targets=(gguf_fuzz llama2c_model_fuzz llama2c_tokenizer_fuzz tokenizer_fuzz config_fuzz request_fuzz
         openai_request_fuzz chat_template_fuzz)
root="$(cd "$dir/../.." && pwd)"
build="${KVSERVE_FUZZ_BUILD_DIR:-$root/build-fuzz}"
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DKVSERVE_FUZZ=ON -DKVSERVE_CUDA=OFF >/dev/null
fi
# kvserve_tools too: the clang build checks every lock annotation (-Werror=thread-safety), and the
# fuzz targets do not link the tools.
cmake --build "$build" --target "${targets[@]}" kvserve_tools -j "${KVSERVE_JOBS:-$(nproc)}" >/dev/null
export KVSERVE_FUZZ_NO_BUILD=1
failed=0
printf '%s\n' "${targets[@]}" |
  xargs -P "$parallel" -I{} nice -n 19 "$dir/run.sh" {} "$seconds" || failed=1
exit "$failed"
