// Fuzzes the llama2.c tokenizer file reader. The first two input bytes choose the vocabulary size
// the caller expects (1..65536); the rest is the file.
//
// Properties: reading never crashes; a vocabulary that reads back has exactly the expected number
// of pieces, finite scores, and either builds a Tokenizer or is rejected with a status; a built
// tokenizer encodes and decodes a fixed text without crashing.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/tokenizer/llama2c_tokenizer_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvserve;
  if (size < 2) return 0;
  const int32_t expected = 1 + (data[0] | (data[1] << 8));
  std::string_view contents(reinterpret_cast<const char*>(data) + 2, size - 2);
  auto vocab = engine::ParseLlama2cTokenizer(contents, "fuzz.bin", expected);
  if (!vocab.ok()) {
    FUZZ_CHECK(!vocab.status().message().empty());
    return 0;
  }
  FUZZ_CHECK(vocab->size() == expected, "%d pieces, expected %d", vocab->size(), expected);
  for (float score : vocab->scores) FUZZ_CHECK(std::isfinite(score));
  auto tokenizer = engine::Tokenizer::Create(*std::move(vocab));
  if (!tokenizer.ok()) return 0;
  std::vector<int32_t> ids = tokenizer->Encode("Once upon a time, \xff\xfe there was", true);
  for (int32_t id : ids) FUZZ_CHECK(tokenizer->IsValidId(id));
  (void)tokenizer->Decode(ids);
  return 0;
}
