// Minimal JSON for the serving benchmark: a parser for trace lines (objects, arrays, strings,
// numbers, true/false/null) and a streaming writer for the --json report.
#ifndef KVSERVE_TOOLS_BENCH_JSON_H_
#define KVSERVE_TOOLS_BENCH_JSON_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvserve::tools {

struct JsonValue {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<JsonValue> array;
  std::map<std::string, JsonValue> object;  // a repeated key keeps its last value
};

// Parses one JSON document (surrounding whitespace allowed). InvalidArgument naming the byte
// offset and what was expected. Nesting deeper than 64 levels is refused.
absl::StatusOr<JsonValue> ParseJson(std::string_view text);

// Appends JSON to a string. Calls must form a valid document: Key() before each value inside an
// object; commas are inserted automatically.
class JsonWriter {
 public:
  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  JsonWriter& Key(std::string_view key);
  JsonWriter& String(std::string_view s);
  // Non-finite numbers are written as null (JSON has no NaN or infinity).
  JsonWriter& Number(double v);
  JsonWriter& Int(int64_t v);
  JsonWriter& Bool(bool v);
  const std::string& str() const { return out_; }

 private:
  void Separate();
  std::string out_;
  std::vector<bool> first_;  // per open container: no element written yet
  bool after_key_ = false;
};

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_BENCH_JSON_H_
