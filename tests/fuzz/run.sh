#!/usr/bin/env bash
# Runs one libFuzzer target for a chosen time.
#
#   tests/fuzz/run.sh TARGET SECONDS [libFuzzer flags...]
#
# TARGET is one of: gguf_fuzz llama2c_model_fuzz llama2c_tokenizer_fuzz tokenizer_fuzz config_fuzz
# request_fuzz openai_request_fuzz chat_template_fuzz. The fuzz build (clang, -DKVSERVE_FUZZ=ON) goes to ${KVSERVE_FUZZ_BUILD_DIR:-build-fuzz}
# and is configured and brought up to date first. Seeds: tests/fuzz/corpus/TARGET (committed) plus,
# per target, the model fixtures in ../shared/models or the configs in configs/, copied into a
# temporary seed folder at run time. Inputs the fuzzer finds are kept in
# ${KVSERVE_FUZZ_WORK:-/tmp/kvserve-fuzz}/TARGET/corpus across runs; a crash, hang (> 10 s per
# input), leak, out-of-memory (> 2 GiB) or sanitizer report leaves the input in .../TARGET/artifacts
# and makes this script exit non-zero. The run's log is .../TARGET/last.log; its last lines (with
# the executions and their rate) are printed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if (($# < 2)); then
  echo "usage: $0 TARGET SECONDS [libFuzzer flags...]" >&2
  exit 2
fi
target="$1"
seconds="$2"
shift 2
build="${KVSERVE_FUZZ_BUILD_DIR:-$root/build-fuzz}"
work="${KVSERVE_FUZZ_WORK:-/tmp/kvserve-fuzz}/$target"
models="${KVSERVE_MODELS_DIR:-$root/../shared/models}"
export KVSERVE_MODELS_DIR="$models"

case "$target" in
  gguf_fuzz | llama2c_model_fuzz | llama2c_tokenizer_fuzz | tokenizer_fuzz | config_fuzz | request_fuzz) ;;
  openai_request_fuzz) ;;
  chat_template_fuzz) ;;
  *)
    echo "run.sh: unknown target '$target'" >&2
    exit 2
    ;;
esac

if [[ "${KVSERVE_FUZZ_NO_BUILD:-0}" != 1 ]]; then
  if [[ ! -f "$build/build.ninja" ]]; then
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DKVSERVE_FUZZ=ON -DKVSERVE_CUDA=OFF >/dev/null
  fi
  cmake --build "$build" --target "$target" -j "${KVSERVE_JOBS:-$(nproc)}" >/dev/null
fi
binary="$build/tests/fuzz/$target"

mkdir -p "$work/corpus" "$work/artifacts"
seeds="$(mktemp -d)"
trap 'rm -rf "$seeds"' EXIT
cp "$root/tests/fuzz/corpus/$target/"* "$seeds/" 2>/dev/null || true
max_len=4096
case "$target" in
  gguf_fuzz)
    cp "$models/stories260K.gguf" "$seeds/"
    max_len=$((1200 * 1024))
    ;;
  llama2c_model_fuzz)
    cp "$models/stories260K.bin" "$seeds/"
    max_len=$((1100 * 1024))
    ;;
  llama2c_tokenizer_fuzz)
    # Two bytes: the vocabulary size the caller expects, minus one, little-endian.
    { printf '\xff\x01'; cat "$models/tok512.bin"; } >"$seeds/tok512.bin"
    { printf '\x68\x00'; cat "$models/babyllama/tok105.bin"; } >"$seeds/tok105.bin"
    max_len=16384
    ;;
  tokenizer_fuzz)
    # The first byte picks the vocabulary and BOS; a few stories from the evaluation text.
    eval_text="$root/../shared/eval/tinystories_valid_a.txt"
    if [[ -f "$eval_text" ]]; then
      for i in 0 1 2 3; do
        { printf "\\x0$i"; head -c 2000 "$eval_text" | tail -c $((500 * (i + 1))); } >"$seeds/eval_$i.txt"
      done
    fi
    ;;
  config_fuzz)
    for f in "$root"/configs/*.yaml "$root"/configs/presets/*.yaml; do
      cp "$f" "$seeds/$(basename "$(dirname "$f")")_$(basename "$f")"
    done
    max_len=16384
    ;;
  request_fuzz) ;;
  openai_request_fuzz)
    # JSON bodies: the request bodies and chunks of docs/http.md, the committed seeds cover them.
    max_len=16384
    ;;
  chat_template_fuzz)
    # The real chat templates (../shared/chat-templates), each followed by two messages.
    for f in "$root"/../shared/chat-templates/*.jinja; do
      [[ -f "$f" ]] || continue
      { cat "$f"; printf '\0Hi <|im_start|>system\0Hello'; } >"$seeds/$(basename "$f").txt"
    done
    max_len=16384
    ;;
esac

start=$(date +%s)
status=0
"$binary" "$work/corpus" "$seeds" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -max_len="$max_len" -artifact_prefix="$work/artifacts/" -print_final_stats=1 "$@" \
  >"$work/last.log" 2>&1 || status=$?
elapsed=$(($(date +%s) - start))
runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/last.log" | grep -o '[0-9]*$' || echo "?")
echo "$target: ${elapsed} s, ${runs} executions, corpus $(ls "$work/corpus" | wc -l) inputs, exit ${status}"
if ((status != 0)); then
  grep -E 'ERROR|SUMMARY|property failed|Test unit written' "$work/last.log" | head -20 >&2 || true
  echo "$target: see $work/last.log and $work/artifacts" >&2
fi
exit "$status"
