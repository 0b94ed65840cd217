#include "tools/bench_workload.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tools/bench_json.h"

namespace kvserve::tools {
namespace {

// Uniform over the vocabulary without BOS and EOS.
class TokenSource {
 public:
  TokenSource(const ModelLimits& limits, uint64_t seed)
      : limits_(limits), rng_(seed), dist_(0, std::max(limits.vocab_size - 3, 0)) {}
  int32_t Next() {
    int32_t id = dist_(rng_);
    // Map [0, vocab - 2) onto the vocabulary skipping bos and eos.
    const int32_t a = std::min(limits_.bos_id, limits_.eos_id);
    const int32_t b = std::max(limits_.bos_id, limits_.eos_id);
    if (id >= a) ++id;
    if (id >= b) ++id;
    return id;
  }
  std::vector<int32_t> Ids(int32_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t& id : ids) id = Next();
    return ids;
  }
  std::mt19937_64& rng() { return rng_; }

 private:
  ModelLimits limits_;
  std::mt19937_64 rng_;
  std::uniform_int_distribution<int32_t> dist_;
};

absl::Status CheckFits(const std::string& what, int64_t prompt, int64_t output,
                       const ModelLimits& limits) {
  if (output < 1)
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": output length ", output, " must be >= 1"));
  if (prompt < 1)
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": prompt length ", prompt, " must be >= 1"));
  if (limits.context_length > 0 && prompt + output > limits.context_length) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": prompt ", prompt, " + output ", output,
                                                   " tokens exceed the model's context of ",
                                                   limits.context_length));
  }
  if (limits.max_prompt_tokens > 0 && prompt > limits.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": prompt of ", prompt,
                                                   " tokens exceeds the server's limit of ",
                                                   limits.max_prompt_tokens));
  }
  if (limits.max_tokens_limit > 0 && output > limits.max_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": output of ", output,
                                                   " tokens exceeds the server's max_tokens limit "
                                                   "of ",
                                                   limits.max_tokens_limit));
  }
  return absl::OkStatus();
}

// Uniform integer in [len * (1 - r), len * (1 + r)], at least 1.
int32_t Around(std::mt19937_64& rng, int32_t len, double r) {
  const int32_t lo = std::max<int32_t>(1, static_cast<int32_t>(std::floor(len * (1.0 - r))));
  const int32_t hi = std::max<int32_t>(lo, static_cast<int32_t>(std::floor(len * (1.0 + r))));
  return std::uniform_int_distribution<int32_t>(lo, hi)(rng);
}

}  // namespace

absl::StatusOr<std::vector<BenchRequest>> GenerateWorkload(const WorkloadOptions& o,
                                                           const ModelLimits& limits) {
  if (o.num_requests < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--num-requests: ", o.num_requests, " must be >= 1"));
  }
  if (!(o.range_ratio >= 0.0 && o.range_ratio < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--range-ratio: ", o.range_ratio, " must be in [0, 1)"));
  }
  if (limits.vocab_size == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--workload ", o.kind,
                     " makes random token ids, but the model's vocabulary size is unknown (give "
                     "--vocab-size)"));
  }
  if (limits.vocab_size < 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("the server's vocabulary of ", limits.vocab_size, " tokens is too small"));
  }
  TokenSource tokens(limits, o.seed);
  std::vector<BenchRequest> out;
  out.reserve(static_cast<size_t>(o.num_requests));
  if (o.kind == "random") {
    const int32_t input_len = o.input_len > 0 ? o.input_len : 128;
    if (o.input_len < 0) return absl::InvalidArgumentError("--input-len must be >= 1");
    if (o.output_len < 1) return absl::InvalidArgumentError("--output-len must be >= 1");
    for (int64_t i = 0; i < o.num_requests; ++i) {
      const int32_t in = Around(tokens.rng(), input_len, o.range_ratio);
      const int32_t outn = Around(tokens.rng(), o.output_len, o.range_ratio);
      if (absl::Status s =
              CheckFits(absl::StrCat("--workload random, request ", i), in, outn, limits);
          !s.ok()) {
        return s;
      }
      BenchRequest r;
      r.prompt_ids = tokens.Ids(in);
      r.prompt_ids[0] = limits.bos_id;
      r.output_len = outn;
      out.push_back(std::move(r));
    }
    return out;
  }
  if (o.kind == "shared-prefix") {
    if (o.num_prefixes < 1) return absl::InvalidArgumentError("--num-prefixes must be >= 1");
    if (o.prefix_len < 1) return absl::InvalidArgumentError("--prefix-len must be >= 1");
    if (o.suffix_len < 0) return absl::InvalidArgumentError("--suffix-len must be >= 0");
    if (absl::Status s = CheckFits("--workload shared-prefix", int64_t{o.prefix_len} + o.suffix_len,
                                   o.output_len, limits);
        !s.ok()) {
      return s;
    }
    std::vector<std::vector<int32_t>> prefixes;
    for (int32_t p = 0; p < o.num_prefixes; ++p) {
      prefixes.push_back(tokens.Ids(o.prefix_len));
      prefixes.back()[0] = limits.bos_id;
    }
    for (int64_t i = 0; i < o.num_requests; ++i) {
      BenchRequest r;
      r.prompt_ids = prefixes[static_cast<size_t>(i % o.num_prefixes)];
      const std::vector<int32_t> suffix = tokens.Ids(o.suffix_len);
      r.prompt_ids.insert(r.prompt_ids.end(), suffix.begin(), suffix.end());
      r.output_len = o.output_len;
      out.push_back(std::move(r));
    }
    return out;
  }
  if (o.kind == "long-context") {
    if (o.output_len < 1) return absl::InvalidArgumentError("--output-len must be >= 1");
    if (limits.context_length <= 0) {
      return absl::InvalidArgumentError(
          "--workload long-context needs the model's context length, which is unknown (give "
          "--context-length)");
    }
    int32_t hi = limits.context_length - o.output_len;
    if (limits.max_prompt_tokens > 0) hi = std::min(hi, limits.max_prompt_tokens);
    int32_t lo = std::max(1, limits.context_length / 2);
    if (o.input_len > 0) lo = hi = o.input_len;
    if (lo > hi) lo = hi;
    if (absl::Status s = CheckFits("--workload long-context", hi, o.output_len, limits); !s.ok()) {
      return s;
    }
    for (int64_t i = 0; i < o.num_requests; ++i) {
      const int32_t in = std::uniform_int_distribution<int32_t>(lo, hi)(tokens.rng());
      BenchRequest r;
      r.prompt_ids = tokens.Ids(in);
      r.prompt_ids[0] = limits.bos_id;
      r.output_len = o.output_len;
      out.push_back(std::move(r));
    }
    return out;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--workload: '", o.kind, "' is not random, shared-prefix, long-context or trace"));
}

absl::StatusOr<std::vector<BenchRequest>> ParseTrace(std::string_view text,
                                                     std::string_view file_name,
                                                     const ModelLimits& limits, uint64_t seed) {
  const std::string file(file_name);
  TokenSource tokens(limits, seed);
  std::vector<BenchRequest> out;
  int line_no = 0;
  int with_timestamp = 0;
  double last_timestamp = 0;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_no;
    const absl::string_view trimmed = absl::StripAsciiWhitespace(line);
    if (trimmed.empty() || trimmed[0] == '#') continue;
    auto error = [&](const std::string& message) {
      return absl::InvalidArgumentError(absl::StrCat(file, ":", line_no, ": ", message));
    };
    absl::StatusOr<JsonValue> parsed = ParseJson(std::string_view(trimmed.data(), trimmed.size()));
    if (!parsed.ok()) return error(std::string(parsed.status().message()));
    if (parsed->kind != JsonValue::Kind::kObject) return error("expected a JSON object");
    const auto& obj = parsed->object;
    for (const auto& [key, value] : obj) {
      if (key != "prompt" && key != "prompt_token_ids" && key != "input_len" &&
          key != "output_len" && key != "timestamp") {
        return error(absl::StrCat("unknown key \"", key,
                                  "\" (known: prompt, prompt_token_ids, input_len, output_len, "
                                  "timestamp)"));
      }
    }
    auto integer = [&](const char* key, int64_t lo, int64_t hi) -> absl::StatusOr<int64_t> {
      const JsonValue& v = obj.at(key);
      if (v.kind != JsonValue::Kind::kNumber || v.number != std::floor(v.number) ||
          v.number < static_cast<double>(lo) || v.number > static_cast<double>(hi)) {
        return error(absl::StrCat("\"", key, "\" must be an integer in [", lo, ", ", hi, "]"));
      }
      return static_cast<int64_t>(v.number);
    };
    BenchRequest r;
    if (!obj.count("output_len")) return error("\"output_len\" is missing");
    absl::StatusOr<int64_t> output_len = integer("output_len", 1, 1 << 24);
    if (!output_len.ok()) return output_len.status();
    r.output_len = static_cast<int32_t>(*output_len);
    const int prompts = static_cast<int>(obj.count("prompt") + obj.count("prompt_token_ids") +
                                         obj.count("input_len"));
    if (prompts != 1) {
      return error("exactly one of \"prompt\", \"prompt_token_ids\" and \"input_len\" is needed");
    }
    int64_t prompt_len = 1;  // unknown for text: the server tokenizes it
    if (obj.count("prompt")) {
      const JsonValue& v = obj.at("prompt");
      if (v.kind != JsonValue::Kind::kString || v.string.empty()) {
        return error("\"prompt\" must be a non-empty string");
      }
      r.prompt_text = v.string;
    } else if (obj.count("prompt_token_ids")) {
      const JsonValue& v = obj.at("prompt_token_ids");
      if (v.kind != JsonValue::Kind::kArray || v.array.empty()) {
        return error("\"prompt_token_ids\" must be a non-empty array of token ids");
      }
      for (size_t i = 0; i < v.array.size(); ++i) {
        const JsonValue& e = v.array[i];
        if (e.kind != JsonValue::Kind::kNumber || e.number != std::floor(e.number) ||
            e.number < 0 || e.number > std::numeric_limits<int32_t>::max() ||
            (limits.vocab_size > 0 && e.number >= limits.vocab_size)) {
          return error(limits.vocab_size > 0
                           ? absl::StrCat("\"prompt_token_ids\"[", i, "] is not a token id in [0, ",
                                          limits.vocab_size, ")")
                           : absl::StrCat("\"prompt_token_ids\"[", i, "] is not a token id"));
        }
        r.prompt_ids.push_back(static_cast<int32_t>(e.number));
      }
      prompt_len = static_cast<int64_t>(r.prompt_ids.size());
    } else {
      if (limits.vocab_size < 4) {
        return error(
            "\"input_len\" makes random token ids, but the model's vocabulary size is unknown "
            "(give --vocab-size)");
      }
      absl::StatusOr<int64_t> n = integer("input_len", 1, 1 << 24);
      if (!n.ok()) return n.status();
      r.prompt_ids = tokens.Ids(static_cast<int32_t>(*n));
      r.prompt_ids[0] = limits.bos_id;
      prompt_len = *n;
    }
    if (obj.count("timestamp")) {
      const JsonValue& v = obj.at("timestamp");
      if (v.kind != JsonValue::Kind::kNumber || v.number < 0 || !std::isfinite(v.number)) {
        return error("\"timestamp\" must be a number of seconds >= 0");
      }
      if (v.number < last_timestamp) {
        return error(absl::StrCat("\"timestamp\" ", v.number, " is before the previous line's ",
                                  last_timestamp));
      }
      last_timestamp = v.number;
      r.arrival_s = v.number;
      ++with_timestamp;
    }
    if (absl::Status s = CheckFits("request", prompt_len, r.output_len, limits); !s.ok()) {
      return error(std::string(s.message()));
    }
    out.push_back(std::move(r));
    if (with_timestamp != 0 && with_timestamp != static_cast<int>(out.size())) {
      return error("\"timestamp\" must be given on every line or on none");
    }
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": the trace has no requests"));
  }
  return out;
}

std::vector<double> ArrivalTimes(int64_t n, double rate, double burstiness, uint64_t seed) {
  std::vector<double> times(static_cast<size_t>(std::max<int64_t>(n, 0)), 0.0);
  if (!std::isfinite(rate) || rate <= 0) return times;
  std::mt19937_64 rng(seed ^ 0xA5A5A5A5DEADBEEFull);
  // Gamma(shape k, scale theta) has mean k * theta; theta = 1 / (rate * k) gives mean 1 / rate.
  std::gamma_distribution<double> gap(burstiness, 1.0 / (rate * burstiness));
  double t = 0;
  for (double& x : times) {
    t += gap(rng);
    x = t;
  }
  return times;
}

}  // namespace kvserve::tools
