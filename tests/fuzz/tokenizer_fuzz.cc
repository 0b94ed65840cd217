// Fuzzes the BPE tokenizer and the streaming detokenizer on arbitrary bytes. The first input byte
// chooses the vocabulary (even: stories260K's tok512.bin, with byte fallback; odd: BabyLlama's
// tok105.bin, without) and whether BOS is added; the rest is the text.
//
// Properties (tokenizer.h): every id is valid; with byte fallback Decode(Encode(text)) == text;
// the streaming detokenizer emits well-formed UTF-8 only and, when Decode() is well-formed UTF-8,
// exactly Decode()'s text.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "engine/tokenizer/llama2c_tokenizer_file.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using kvserve::engine::Tokenizer;

// RFC 3629 well-formedness, written apart from the code under test.
bool IsWellFormedUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    int n = 0;
    uint32_t cp = 0;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      n = 1, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      n = 2, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      n = 3, cp = b & 0x07;
    } else {
      return false;
    }
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

std::unique_ptr<Tokenizer> Load(const std::string& file, int32_t size) {
  auto vocab = kvserve::engine::ReadLlama2cTokenizer(kvserve::fuzz::ModelsDir() + "/" + file, size);
  FUZZ_CHECK(vocab.ok(), "%s", std::string(vocab.status().message()).c_str());
  auto tokenizer = Tokenizer::Create(*std::move(vocab));
  FUZZ_CHECK(tokenizer.ok());
  return std::make_unique<Tokenizer>(*std::move(tokenizer));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<Tokenizer> with_bytes = Load("tok512.bin", 512);
  static const std::unique_ptr<Tokenizer> without_bytes = Load("babyllama/tok105.bin", 105);
  if (size < 1) return 0;
  const Tokenizer& tokenizer = (data[0] & 1) == 0 ? *with_bytes : *without_bytes;
  const bool add_bos = (data[0] & 2) != 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);

  const std::vector<int32_t> ids = tokenizer.Encode(text, add_bos);
  for (int32_t id : ids) FUZZ_CHECK(tokenizer.IsValidId(id), "id %d", id);
  const std::string decoded = tokenizer.Decode(ids);
  if (tokenizer.has_byte_fallback()) {
    FUZZ_CHECK(decoded == text, "round trip of %zu bytes gave %zu bytes", text.size(),
               decoded.size());
  }
  kvserve::engine::StreamingDetokenizer detokenizer(tokenizer);
  std::string streamed;
  for (int32_t id : ids) {
    std::string delta = detokenizer.Feed(id);
    FUZZ_CHECK(IsWellFormedUtf8(delta));
    streamed += delta;
  }
  std::string tail = detokenizer.Flush();
  FUZZ_CHECK(IsWellFormedUtf8(tail));
  streamed += tail;
  if (IsWellFormedUtf8(decoded)) FUZZ_CHECK(streamed == decoded);
  return 0;
}
