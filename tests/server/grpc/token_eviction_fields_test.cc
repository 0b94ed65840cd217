// Token eviction at the server edge: the request's override reaches the engine request, an
// over-long policy name is refused naming the field, and the engine's counters reach MemoryStats.
#include <string>

#include "gtest/gtest.h"
#include "server/grpc/memory_stats.h"
#include "server/grpc/request_validation.h"

namespace kvserve::server {
namespace {

engine::Tokenizer TinyTokenizer() {
  engine::Vocabulary vocab;
  using T = engine::TokenType;
  for (const char* p : {"<unk>", "<s>", "</s>", " ", "a"}) {
    vocab.pieces.push_back(p);
    vocab.scores.push_back(-1);
    vocab.types.push_back(std::string(p).size() > 1 && p[0] == '<' ? T::kControl : T::kNormal);
  }
  vocab.types[0] = T::kUnknown;
  vocab.bos_id = 1;
  vocab.eos_id = 2;
  vocab.unk_id = 0;
  return engine::Tokenizer(std::move(vocab));
}

absl::StatusOr<engine::EngineRequest> Build(const v1::GenerateRequest& r) {
  static const engine::Tokenizer* const tokenizer = new engine::Tokenizer(TinyTokenizer());
  const RequestLimits limits{/*max_prompt_tokens=*/8, /*max_tokens_limit=*/100,
                             /*default_max_tokens=*/20};
  return BuildEngineRequest(r, *tokenizer, limits, /*random_seed=*/1, absl::InfiniteFuture());
}

TEST(TokenEvictionFieldsTest, OverrideReachesTheEngineRequest) {
  v1::GenerateRequest r;
  r.set_text("a a");
  auto plain = Build(r);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->token_eviction.policy, "");
  EXPECT_EQ(plain->token_eviction.budget_tokens, 0);
  r.mutable_token_eviction()->set_policy("h2o");
  r.mutable_token_eviction()->set_budget_tokens(96);
  auto set = Build(r);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->token_eviction.policy, "h2o");
  EXPECT_EQ(set->token_eviction.budget_tokens, 96);
  r.mutable_token_eviction()->set_policy(std::string(65, 'x'));
  auto bad = Build(r);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(bad.status().message()).rfind("token_eviction.policy: ", 0), 0u)
      << bad.status();
}

TEST(TokenEvictionFieldsTest, CountersReachMemoryStats) {
  engine::EngineStats s;
  s.token_eviction_policy = "sliding_window";
  s.token_eviction_budget = 128;
  s.tokens_evicted = {{"h2o", 40}, {"sliding_window", 7}};
  s.token_eviction_events = 5;
  const v1::MemoryStats m = ToMemoryStats(s, absl::UnixEpoch());
  EXPECT_EQ(m.token_eviction_policy(), "sliding_window");
  EXPECT_EQ(m.token_eviction_budget_tokens(), 128);
  ASSERT_EQ(m.tokens_evicted_size(), 2);
  EXPECT_EQ(m.tokens_evicted(0).policy(), "h2o");
  EXPECT_EQ(m.tokens_evicted(0).tokens(), 40);
  EXPECT_EQ(m.tokens_evicted(1).policy(), "sliding_window");
  EXPECT_EQ(m.tokens_evicted(1).tokens(), 7);
  EXPECT_EQ(m.token_eviction_events(), 5);
}

}  // namespace
}  // namespace kvserve::server
