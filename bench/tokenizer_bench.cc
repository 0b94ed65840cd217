// Tokenizer throughput on one thread: MB/s of Encode over the evaluation text, for Llama 3's
// byte-level BPE vocabulary and the SentencePiece (llama-spm) vocabulary side by side, the median
// of several runs.
//
//   build/bench/tokenizer_bench [--runs N] [--text FILE]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/model/gguf_model.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"

namespace {

using kvserve::engine::EncodeOptions;
using kvserve::engine::Tokenizer;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

int Bench(const std::string& label, const std::string& vocab_path, const std::string& text,
          int runs) {
  auto vocab = kvserve::engine::ReadGgufVocabularyFile(vocab_path);
  if (!vocab.ok()) {
    std::fprintf(stderr, "%s\n", vocab.status().ToString().c_str());
    return 1;
  }
  auto tok = Tokenizer::Create(*std::move(vocab));
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", tok.status().ToString().c_str());
    return 1;
  }
  std::vector<double> seconds;
  size_t tokens = 0;
  tokens = tok->Encode(text, EncodeOptions{}).size();  // warm-up
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    tokens = tok->Encode(text, EncodeOptions{}).size();
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  const double mb = static_cast<double>(text.size()) / 1e6;
  std::printf("%-28s %10.2f MB  %9zu tokens  median %8.1f ms  %7.2f MB/s  %6.2f Mtok/s\n",
              label.c_str(), mb, tokens, median * 1e3, mb / median,
              static_cast<double>(tokens) / median / 1e6);
  return 0;
}

// The same BPE with every pre-tokenizer stage on ICU's regex engine (the reference splitter).
int BenchRegexEngine(const std::string& vocab_path, const std::string& text, int runs) {
  auto vocab = kvserve::engine::ReadGgufVocabularyFile(vocab_path);
  if (!vocab.ok()) return 1;
  auto bpe =
      kvserve::engine::BpeTokenizer::Create(*vocab, kvserve::engine::PreTokenizer::Engine::kRegex);
  if (!bpe.ok()) return 1;
  std::vector<double> seconds;
  size_t tokens = 0;
  for (int i = 0; i < runs; ++i) {
    std::vector<int32_t> ids;
    const auto start = std::chrono::steady_clock::now();
    bpe->Encode(text, &ids);
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    tokens = ids.size();
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  const double mb = static_cast<double>(text.size()) / 1e6;
  std::printf("%-28s %10.2f MB  %9zu tokens  median %8.1f ms  %7.2f MB/s  %6.2f Mtok/s\n",
              "llama-bpe, ICU regex split", mb, tokens, median * 1e3, mb / median,
              static_cast<double>(tokens) / median / 1e6);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 7;
  std::string text_path = std::string(KVSERVE_EVAL_DIR) + "/tinystories_valid_a.txt";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--runs") {
      runs = std::max(1, std::atoi(argv[i + 1]));
    } else if (flag == "--text") {
      text_path = argv[i + 1];
    } else {
      std::fprintf(stderr, "usage: tokenizer_bench [--runs N] [--text FILE]\n");
      return 2;
    }
  }
  const std::string text = ReadFile(text_path);
  if (text.empty()) {
    std::fprintf(stderr, "tokenizer_bench: cannot read %s\n", text_path.c_str());
    return 1;
  }
  const std::string vocab_dir = std::string(KVSERVE_SOURCE_DIR) + "/../shared/vocab/";
  std::printf("text %s, %d runs, one thread\n", text_path.c_str(), runs);
  int rc = Bench("llama-bpe (Llama 3, BPE)", vocab_dir + "ggml-vocab-llama-bpe.derived.gguf", text,
                 runs);
  rc |= BenchRegexEngine(vocab_dir + "ggml-vocab-llama-bpe.derived.gguf", text, runs);
  rc |= Bench("llama-spm (SentencePiece)", vocab_dir + "ggml-vocab-llama-spm.gguf", text, runs);
  return rc;
}
