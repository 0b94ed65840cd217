// BuildEngineRequest: defaults, limits and the field named by each error, with a small vocabulary.
#include "server/grpc/request_validation.h"

#include <cmath>
#include <string>

#include "gtest/gtest.h"

namespace kvserve::server {
namespace {

engine::Tokenizer SmallTokenizer() {
  engine::Vocabulary vocab;
  using T = engine::TokenType;
  auto add = [&vocab](std::string piece, float score, T type) {
    vocab.pieces.push_back(std::move(piece));
    vocab.scores.push_back(score);
    vocab.types.push_back(type);
  };
  add("<unk>", 0, T::kUnknown);
  add("<s>", 0, T::kControl);
  add("</s>", 0, T::kControl);
  add(" ", -1, T::kNormal);
  add("a", -1, T::kNormal);
  add("b", -1, T::kNormal);
  add(" a", -0.5f, T::kNormal);  // 7 tokens in all
  vocab.bos_id = 1;
  vocab.eos_id = 2;
  vocab.unk_id = 0;
  return engine::Tokenizer(std::move(vocab));
}

const RequestLimits kLimits{/*max_prompt_tokens=*/8, /*max_tokens_limit=*/100,
                            /*default_max_tokens=*/20};

absl::StatusOr<engine::EngineRequest> Build(const v1::GenerateRequest& r) {
  static const engine::Tokenizer* const tokenizer = new engine::Tokenizer(SmallTokenizer());
  return BuildEngineRequest(r, *tokenizer, kLimits, /*random_seed=*/1234, absl::InfiniteFuture());
}

void ExpectInvalid(const v1::GenerateRequest& r, const std::string& field) {
  auto built = Build(r);
  ASSERT_FALSE(built.ok()) << field;
  EXPECT_EQ(built.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(built.status().message()).rfind(field + ": ", 0), 0u)
      << built.status().message();
}

TEST(RequestValidationTest, TextPromptWithDefaults) {
  v1::GenerateRequest r;
  r.set_text("ab a");
  auto built = Build(r);
  ASSERT_TRUE(built.ok()) << built.status();
  // BOS, then " a" "b" " a" after the dummy prefix " ".
  EXPECT_EQ(built->prompt, (std::vector<int32_t>{1, 6, 5, 6}));
  EXPECT_EQ(built->max_tokens, 20);
  EXPECT_FLOAT_EQ(built->sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(built->sampling.top_p, 1.0f);
  EXPECT_EQ(built->sampling.top_k, 0);
  EXPECT_FLOAT_EQ(built->sampling.min_p, 0.0f);
  EXPECT_FLOAT_EQ(built->sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(built->sampling.presence_penalty, 0.0f);
  EXPECT_EQ(built->sampling.frequency_penalty, 0.0f);
  EXPECT_EQ(built->logprobs, -1);
  EXPECT_EQ(built->sampling.seed, 1234u);
  EXPECT_EQ(built->deadline, absl::InfiniteFuture());
  EXPECT_TRUE(built->id.empty());
}

TEST(RequestValidationTest, EverythingSetIsCarriedOver) {
  v1::GenerateRequest r;
  r.set_request_id("abc-1");
  r.mutable_token_ids()->add_ids(1);
  r.mutable_token_ids()->add_ids(4);
  r.set_max_tokens(100);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_sampling()->set_top_k(5);
  r.mutable_sampling()->set_top_p(0.5f);
  r.mutable_sampling()->set_min_p(0.1f);
  r.mutable_sampling()->set_repetition_penalty(1.2f);
  r.mutable_sampling()->set_seed(7);
  r.mutable_sampling()->set_presence_penalty(-1.5f);
  r.mutable_sampling()->set_frequency_penalty(2.0f);
  r.set_logprobs(20);
  r.add_stop("ba");
  r.set_priority(3);
  r.set_cache_salt("tenant");
  r.set_ignore_eos(true);
  auto* hint = r.add_retention();
  hint->set_start_token(0);
  hint->set_end_token(2);
  hint->set_priority(90);
  hint->mutable_duration()->set_seconds(30);
  r.add_retention()->set_start_token(1);
  auto built = Build(r);
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_EQ(built->id, "abc-1");
  EXPECT_EQ(built->prompt, (std::vector<int32_t>{1, 4}));
  EXPECT_EQ(built->max_tokens, 100);
  EXPECT_EQ(built->sampling.top_k, 5);
  EXPECT_EQ(built->sampling.seed, 7u);
  EXPECT_EQ(built->sampling.presence_penalty, -1.5f);
  EXPECT_EQ(built->sampling.frequency_penalty, 2.0f);
  EXPECT_EQ(built->logprobs, 20);
  EXPECT_EQ(built->stop, std::vector<std::string>{"ba"});
  EXPECT_EQ(built->priority, 3);
  EXPECT_EQ(built->cache_salt, "tenant");
  EXPECT_TRUE(built->ignore_eos);
  ASSERT_EQ(built->retention.size(), 2u);
  EXPECT_EQ(built->retention[0].end_token, 2);
  EXPECT_EQ(built->retention[0].priority, 90);
  EXPECT_EQ(built->retention[0].duration, absl::Seconds(30));
  EXPECT_EQ(built->retention[1].end_token, -1);
  EXPECT_EQ(built->retention[1].priority, kDefaultRetentionPriority);
  EXPECT_EQ(built->retention[1].duration, absl::InfiniteDuration());
}

TEST(RequestValidationTest, EachBadFieldIsNamed) {
  auto base = [] {
    v1::GenerateRequest r;
    r.set_text("ab");
    return r;
  };
  ExpectInvalid(v1::GenerateRequest(), "prompt");
  v1::GenerateRequest r = base();
  r.set_text("");
  ExpectInvalid(r, "text");
  r = base();
  r.set_text("a\xc0\x80");  // an overlong NUL
  ExpectInvalid(r, "text");
  r = base();
  r.set_text("aaaaaaaaaaaa");  // 13 tokens with BOS, limit 8
  ExpectInvalid(r, "text");
  r = base();
  r.mutable_token_ids();
  ExpectInvalid(r, "token_ids.ids");
  r = base();
  r.mutable_token_ids()->add_ids(1);
  r.mutable_token_ids()->add_ids(7);
  ExpectInvalid(r, "token_ids.ids[1]");
  r = base();
  for (int i = 0; i < 9; ++i) r.mutable_token_ids()->add_ids(4);
  ExpectInvalid(r, "token_ids.ids");
  for (int v : {0, -1, 101}) {
    r = base();
    r.set_max_tokens(v);
    ExpectInvalid(r, "max_tokens");
  }
  for (float v : {-0.01f, std::nanf(""), INFINITY}) {
    r = base();
    r.mutable_sampling()->set_temperature(v);
    ExpectInvalid(r, "sampling.temperature");
  }
  for (float v : {0.0f, -0.5f, 1.0001f, std::nanf("")}) {
    r = base();
    r.mutable_sampling()->set_top_p(v);
    ExpectInvalid(r, "sampling.top_p");
  }
  for (float v : {1.0f, -0.1f}) {
    r = base();
    r.mutable_sampling()->set_min_p(v);
    ExpectInvalid(r, "sampling.min_p");
  }
  r = base();
  r.mutable_sampling()->set_top_k(-2);
  ExpectInvalid(r, "sampling.top_k");
  for (float v : {0.0f, -1.0f}) {
    r = base();
    r.mutable_sampling()->set_repetition_penalty(v);
    ExpectInvalid(r, "sampling.repetition_penalty");
  }
  for (float v : {2.01f, -3.0f, std::nanf(""), INFINITY}) {
    r = base();
    r.mutable_sampling()->set_presence_penalty(v);
    ExpectInvalid(r, "sampling.presence_penalty");
    r = base();
    r.mutable_sampling()->set_frequency_penalty(v);
    ExpectInvalid(r, "sampling.frequency_penalty");
  }
  for (int v : {-1, 21}) {
    r = base();
    r.set_logprobs(v);
    ExpectInvalid(r, "logprobs");
  }
  r = base();
  r.add_stop("ok");
  r.add_stop(std::string(kMaxStopBytes + 1, 'x'));
  ExpectInvalid(r, "stop[1]");
  r = base();
  for (int i = 0; i <= kMaxStopStrings; ++i) r.add_stop("s");
  ExpectInvalid(r, "stop");
  r = base();
  r.set_request_id(std::string(kMaxRequestIdBytes + 1, 'x'));
  ExpectInvalid(r, "request_id");
  r = base();
  r.set_request_id("tab\there");
  ExpectInvalid(r, "request_id");
  r = base();
  r.set_cache_salt(std::string(kMaxCacheSaltBytes + 1, 's'));
  ExpectInvalid(r, "cache_salt");
  for (int v : {-1, 101}) {
    r = base();
    r.add_retention()->set_priority(v);
    ExpectInvalid(r, "retention[0].priority");
  }
  r = base();
  r.add_retention()->set_start_token(-1);
  ExpectInvalid(r, "retention[0].start_token");
  r = base();
  r.add_retention()->mutable_duration()->set_seconds(-5);
  ExpectInvalid(r, "retention[0].duration");
}

TEST(RequestValidationTest, LimitsAreInclusive) {
  v1::GenerateRequest r;
  for (int i = 0; i < 8; ++i) r.mutable_token_ids()->add_ids(4);
  r.set_max_tokens(100);
  r.add_retention()->set_priority(100);
  r.add_retention()->set_priority(0);
  r.mutable_sampling()->set_presence_penalty(2.0f);
  r.mutable_sampling()->set_frequency_penalty(-2.0f);
  r.set_logprobs(0);
  EXPECT_TRUE(Build(r).ok());
  r.set_logprobs(engine::kMaxTopLogprobs);
  EXPECT_TRUE(Build(r).ok());
}

TEST(RequestValidationTest, DefaultMaxTokensIsCappedAtTheLimit) {
  static const engine::Tokenizer* const tokenizer = new engine::Tokenizer(SmallTokenizer());
  v1::GenerateRequest r;
  r.set_text("a");
  auto built =
      BuildEngineRequest(r, *tokenizer, RequestLimits{8, 10, 256}, 1, absl::InfiniteFuture());
  ASSERT_TRUE(built.ok());
  EXPECT_EQ(built->max_tokens, 10);
}

}  // namespace
}  // namespace kvserve::server
