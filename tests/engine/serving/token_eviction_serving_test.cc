// Token eviction in the serving engine: a request's KV stays within its budget while it
// generates ten times the budget (with a prompt longer than the budget, chunked prefill, several
// requests at once, quantized KV and the prefix cache on), the per-request override is checked
// against the configured limits, and the counters reach EngineStats.
#include <memory>
#include <string>
#include <vector>

#include "engine/kv/token_eviction/token_eviction_settings.h"
#include "engine/runtime/engine.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

EngineOptions Options(kernels::KvFormat format = kernels::KvFormat::kFp32) {
  EngineOptions o;
  o.model.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.model.kv_budget_bytes = 16 << 20;
  o.model.kv_format = format;
  o.model.num_threads = 2;
  o.token_eviction.policy = "sliding_window";
  o.token_eviction.budget_tokens = 48;
  o.token_eviction.min_budget_tokens = 16;
  o.token_eviction.max_budget_tokens = 256;
  o.token_eviction.options.sink_tokens = 4;
  return o;
}

StreamEvent RunToEnd(RequestStream& s) {
  std::vector<StreamEvent> ev;
  const absl::Time end = absl::Now() + absl::Seconds(120);
  StreamEvent final_event;
  int64_t tokens = 0;
  while (absl::Now() < end) {
    ev.clear();
    const bool done = s.WaitAndTake(&ev, absl::Milliseconds(100));
    for (auto& e : ev) {
      tokens += static_cast<int64_t>(e.token_ids.size());
      if (e.final) final_event = e;
    }
    if (done) return final_event;
  }
  ADD_FAILURE() << "stream did not finish";
  return final_event;
}

EngineRequest Long(const Engine& e, int prompt_tokens, int max_tokens, const std::string& policy,
                   int32_t budget) {
  EngineRequest r;
  r.prompt = e.tokenizer().Encode("Once upon a time, there was a little girl named Lily.", true);
  while (static_cast<int>(r.prompt.size()) < prompt_tokens) r.prompt.push_back(r.prompt[1]);
  r.prompt.resize(prompt_tokens);
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  r.token_eviction.policy = policy;
  r.token_eviction.budget_tokens = budget;
  return r;
}

TEST(TokenEvictionServingTest, KvStaysWithinBudgetWhileGeneratingTenTimesIt) {
  for (kernels::KvFormat format :
       {kernels::KvFormat::kFp32, kernels::KvFormat::kInt8, kernels::KvFormat::kInt4}) {
    SCOPED_TRACE(std::string(kernels::KvFormatName(format)));
    auto engine = Engine::Create(Options(format));
    ASSERT_TRUE(engine.ok()) << engine.status();
    const int block = (*engine)->options().model.block_size;
    struct Case {
      std::string policy;
      int32_t budget;
      int prompt;
    };
    // Budget 32: 10x is 320 generated tokens (+ prompt) within the 512-token context.
    const std::vector<Case> cases = {
        {"sliding_window", 32, 20}, {"h2o", 32, 70}, {"attention", 40, 12}, {"", 0, 100}};
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (const Case& c : cases) {
      auto s = (*engine)->Submit(Long(**engine, c.prompt, 320, c.policy, c.budget));
      ASSERT_TRUE(s.ok()) << s.status();
      streams.push_back(*s);
    }
    int64_t evicted_total = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
      const StreamEvent e = RunToEnd(*streams[i]);
      ASSERT_TRUE(e.status.ok()) << e.status;
      EXPECT_EQ(e.usage.completion_tokens, 320);
      const int32_t budget = cases[i].budget > 0 ? cases[i].budget : 48;  // server default
      // Never more blocks than the budget's slots need.
      EXPECT_LE(e.kv.peak_blocks, (budget + block - 1) / block) << cases[i].policy;
      // Everything past the budget was evicted (the last sampled token is never fed).
      EXPECT_GE(e.kv.evicted_tokens, cases[i].prompt + 320 - 1 - budget) << cases[i].policy;
      evicted_total += e.kv.evicted_tokens;
    }
    ASSERT_TRUE((*engine)->WaitIdle(absl::Seconds(10)));
    const EngineStats st = (*engine)->Stats();
    EXPECT_EQ(st.token_eviction_policy, "sliding_window");
    EXPECT_EQ(st.token_eviction_budget, 48);
    int64_t counted = 0;
    for (const auto& [policy, n] : st.tokens_evicted) counted += n;
    EXPECT_EQ(counted, evicted_total);
    EXPECT_GT(st.tokens_evicted.at("h2o"), 0);
    EXPECT_GT(st.tokens_evicted.at("sliding_window"), 0);
    EXPECT_GT(st.tokens_evicted.at("attention"), 0);
    EXPECT_GT(st.token_eviction_events, 0);
  }
}

TEST(TokenEvictionServingTest, NoEvictionLeavesGreedyOutputUnchanged) {
  EngineOptions o = Options();
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok()) << engine.status();
  // Within the budget nothing is evicted: the output equals the policy-less run.
  auto a = (*engine)->Submit(Long(**engine, 10, 30, "none", 0));
  auto b = (*engine)->Submit(Long(**engine, 10, 30, "sliding_window", 64));
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<int32_t> ta, tb;
  for (auto [s, t] : {std::pair{*a, &ta}, std::pair{*b, &tb}}) {
    std::vector<StreamEvent> ev;
    bool done = false;
    const absl::Time end = absl::Now() + absl::Seconds(60);
    while (!done && absl::Now() < end) {
      ev.clear();
      done = s->WaitAndTake(&ev, absl::Milliseconds(100));
      for (auto& e : ev) t->insert(t->end(), e.token_ids.begin(), e.token_ids.end());
    }
  }
  EXPECT_EQ(ta.size(), 30u);
  EXPECT_EQ(ta, tb);
}

TEST(TokenEvictionServingTest, RequestOverridesAreCheckedAgainstTheLimits) {
  auto engine = Engine::Create(Options());
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto code_and_message = [&](const std::string& policy, int32_t budget) {
    auto s = (*engine)->Submit(Long(**engine, 10, 5, policy, budget));
    return s.ok() ? std::string("ok") : std::string(s.status().message());
  };
  EXPECT_EQ(code_and_message("h2o", 64), "ok");
  EXPECT_EQ(code_and_message("", 0), "ok");  // the server's defaults
  EXPECT_NE(code_and_message("lru", 64).find("token_eviction.policy: unknown policy 'lru'"),
            std::string::npos);
  EXPECT_NE(code_and_message("h2o", 8).find("token_eviction.budget_tokens 8 is outside [16, 256]"),
            std::string::npos);
  EXPECT_NE(code_and_message("h2o", 300).find("outside [16, 256]"), std::string::npos);
  EXPECT_NE(code_and_message("sliding_window", -1).find("must be >= 0"), std::string::npos);
  EXPECT_NE(code_and_message("none", 32).find("the policy is none"), std::string::npos);
  // A budget the sinks leave no room in.
  EngineOptions o = Options();
  o.token_eviction.options.sink_tokens = 20;
  auto e2 = Engine::Create(o);
  ASSERT_TRUE(e2.ok()) << e2.status();
  auto s = (*e2)->Submit(Long(**e2, 10, 5, "sliding_window", 16));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("sink_tokens + slack_tokens + 1 = 21"), std::string::npos)
      << s.status();
}

TEST(TokenEvictionSettingsTest, ConfigErrorsNameTheKey) {
  auto err = [](TokenEvictionConfig c) {
    auto s = TokenEvictionSettings::Create(c, 512);
    return s.ok() ? std::string("ok") : std::string(s.status().message());
  };
  TokenEvictionConfig c;
  EXPECT_EQ(err(c), "ok");  // none, no budget
  c.policy = "h2o";
  EXPECT_NE(err(c).find("token_eviction.budget_tokens"), std::string::npos);
  c.budget_tokens = 600;
  EXPECT_NE(err(c).find("outside [16, 512]"), std::string::npos);  // max = context
  c.budget_tokens = 64;
  EXPECT_EQ(err(c), "ok");
  c.min_budget_tokens = 100;
  EXPECT_NE(err(c).find("outside [100, 512]"), std::string::npos);
  c.min_budget_tokens = 16;
  c.max_budget_tokens = 8;
  EXPECT_NE(err(c).find("token_eviction.min_budget_tokens (16) exceeds"), std::string::npos);
  c.max_budget_tokens = 0;
  c.policy = "fifo";
  EXPECT_NE(err(c).find("token_eviction.policy: unknown policy 'fifo'"), std::string::npos);
  c.policy = "h2o";
  c.options.recent_window = -2;
  EXPECT_NE(err(c).find("recent_window"), std::string::npos);
}

}  // namespace
}  // namespace kvserve::engine
