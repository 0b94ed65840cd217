// Fuzzes the llama2.c checkpoint loader: arbitrary bytes written to a file, loaded with the
// stories260K tokenizer (tok512.bin).
//
// Properties: loading never crashes; a loaded model's weights lie inside the file and its shapes
// agree with the file size.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/common/mapped_file.h"
#include "engine/model/llama2c_model.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvserve;
  static const std::string tokenizer = fuzz::ModelsDir() + "/tok512.bin";
  const std::filesystem::path path = fuzz::ScratchDir() / "model.bin";
  fuzz::WriteFile(path, std::string_view(reinterpret_cast<const char*>(data), size));
  auto file = engine::MappedFile::Open(path.string());
  FUZZ_CHECK(file.ok(), "%s", std::string(file.status().message()).c_str());
  auto model = engine::LoadLlama2cModel(*std::move(file), tokenizer);
  if (!model.ok()) {
    FUZZ_CHECK(!model.status().message().empty());
    return 0;
  }
  const engine::ModelConfig& c = (*model)->config();
  FUZZ_CHECK(c.dim > 0 && c.num_layers > 0 && c.num_heads > 0 && c.num_kv_heads > 0 &&
             c.vocab_size == 512 && c.head_dim * c.num_heads == c.dim);
  const int64_t embedding_bytes = int64_t{4} * c.vocab_size * c.dim;
  FUZZ_CHECK(embedding_bytes + kvserve::engine::kLlama2cHeaderBytes <= static_cast<int64_t>(size));
  return 0;
}
