// Fuzzes the GGUF reader and the llama model builder on arbitrary bytes.
//
// Properties: parsing never crashes; a parsed file's tensors lie inside the input; a file that
// builds a model has a vocabulary the tokenizer accepts or rejects with a status.
#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/types/span.h"
#include "engine/model/gguf.h"
#include "engine/model/gguf_model.h"
#include "engine/tokenizer/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using kvserve::engine::GgufFile;
  auto file = GgufFile::Parse(absl::MakeConstSpan(data, size), "fuzz.gguf");
  if (!file.ok()) {
    FUZZ_CHECK(!file.status().message().empty());
    return 0;
  }
  for (const auto& tensor : file->tensors()) {
    FUZZ_CHECK(tensor.file_offset <= size && tensor.num_bytes <= size - tensor.file_offset,
               "tensor %s at %llu + %llu bytes outside a file of %zu bytes", tensor.name.c_str(),
               static_cast<unsigned long long>(tensor.file_offset),
               static_cast<unsigned long long>(tensor.num_bytes), size);
    FUZZ_CHECK(tensor.num_bytes == 0 || tensor.data == data + tensor.file_offset);
  }
  for (const auto& kv : file->metadata()) {
    (void)file->FindValue(kv.key);
  }
  (void)kvserve::engine::ReadGgufVocabulary(*file);
  auto model = kvserve::engine::LoadGgufModel(*std::move(file));
  if (model.ok()) {
    (void)kvserve::engine::Tokenizer::Create((*model)->vocab());
  }
  return 0;
}
