// The vocab-only GGUF fixtures of ../shared/vocab and their test vectors (FILE.inp / FILE.out,
// see the README there): shared by the library and `kvserve tokenize` tests.
#ifndef KVSERVE_TESTS_ENGINE_TOKENIZER_VOCAB_VECTORS_H_
#define KVSERVE_TESTS_ENGINE_TOKENIZER_VOCAB_VECTORS_H_

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace kvserve::engine::testing {

inline std::string VocabDir() { return std::string(KVSERVE_SOURCE_DIR) + "/../shared/vocab"; }

// Every vocab fixture, by file name.
inline const std::vector<std::string>& VocabFiles() {
  static const std::vector<std::string> files = {
      "ggml-vocab-llama-spm.gguf",
      "ggml-vocab-phi-3.gguf",
      "ggml-vocab-gpt-2.gguf",
      "ggml-vocab-starcoder.gguf",
      "ggml-vocab-refact.gguf",
      "ggml-vocab-falcon.gguf",
      "ggml-vocab-mpt.gguf",
      "ggml-vocab-deepseek-coder.gguf",
      "ggml-vocab-llama-bpe.derived.gguf",
  };
  return files;
}

struct VocabVector {
  std::string text;
  std::vector<int32_t> ids;
};

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The vectors of `file` (a name from VocabFiles()); empty when the files are missing.
inline std::vector<VocabVector> ReadVocabVectors(const std::string& file) {
  const std::string inp = ReadWholeFile(VocabDir() + "/" + file + ".inp");
  const std::string out = ReadWholeFile(VocabDir() + "/" + file + ".out");
  std::vector<VocabVector> vectors;
  const std::string separator = "\n__ggml_vocab_test__\n";
  for (size_t pos = 0; pos < inp.size();) {
    const size_t end = inp.find(separator, pos);
    if (end == std::string::npos) break;
    vectors.push_back({inp.substr(pos, end - pos), {}});
    pos = end + separator.size();
  }
  std::istringstream lines(out);
  std::string line;
  for (VocabVector& v : vectors) {
    if (!std::getline(lines, line)) {
      vectors.clear();
      return vectors;
    }
    std::istringstream ids(line);
    int64_t id;
    while (ids >> id) v.ids.push_back(static_cast<int32_t>(id));
  }
  return vectors;
}

}  // namespace kvserve::engine::testing

#endif  // KVSERVE_TESTS_ENGINE_TOKENIZER_VOCAB_VECTORS_H_
