// Prefix reuse at admission: requests submitted together with one long system prompt compute it
// once (the others wait for its blocks to reach the cache) with output identical to the cache
// off; a request that ends in the step that computed its prompt still leaves its blocks cached.
#include <memory>
#include <string>
#include <vector>

#include "engine/runtime/engine.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

EngineOptions Options(bool prefix_cache) {
  EngineOptions o;
  o.model.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.model.kv_budget_bytes = 32 << 20;
  o.model.num_threads = 2;
  o.model.prefix_cache = prefix_cache;
  return o;
}

struct Result {
  std::vector<int32_t> tokens;
  StreamEvent final_event;
};

Result Drain(RequestStream& s) {
  Result r;
  std::vector<StreamEvent> ev;
  const absl::Time end = absl::Now() + absl::Seconds(60);
  bool done = false;
  while (!done && absl::Now() < end) {
    ev.clear();
    done = s.WaitAndTake(&ev, absl::Milliseconds(100));
    for (auto& e : ev) {
      r.tokens.insert(r.tokens.end(), e.token_ids.begin(), e.token_ids.end());
      if (e.final) r.final_event = e;
    }
  }
  EXPECT_TRUE(done) << "stream did not finish";
  return r;
}

std::vector<EngineRequest> SharedPromptRequests(const Engine& e, int n) {
  std::vector<int32_t> system = e.tokenizer().Encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside.", true);
  while (system.size() < 200) system.insert(system.end(), system.begin() + 1, system.begin() + 20);
  system.resize(200);
  const char* suffixes[] = {" The dog", " One day", " Tom said", " The sun",
                            " A bird",  " Mom was", " They ran", " It was"};
  std::vector<EngineRequest> out;
  for (int i = 0; i < n; ++i) {
    EngineRequest r;
    r.prompt = system;
    const std::vector<int32_t> s = e.tokenizer().Encode(suffixes[i % 8], false);
    r.prompt.insert(r.prompt.end(), s.begin(), s.end());
    r.max_tokens = 12;
    r.ignore_eos = true;
    out.push_back(r);
  }
  return out;
}

TEST(PrefixAdmissionTest, SimultaneousRequestsComputeTheSharedPromptOnce) {
  std::vector<std::vector<int32_t>> outputs[2];
  int64_t cached[2] = {0, 0};
  int64_t prompt_tokens_computed[2] = {0, 0};
  for (int on = 0; on < 2; ++on) {
    auto engine = Engine::Create(Options(on == 1));
    ASSERT_TRUE(engine.ok()) << engine.status();
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (EngineRequest& r : SharedPromptRequests(**engine, 8)) {
      auto s = (*engine)->Submit(r);
      ASSERT_TRUE(s.ok()) << s.status();
      streams.push_back(*s);
    }
    for (auto& s : streams) {
      Result r = Drain(*s);
      ASSERT_TRUE(r.final_event.status.ok()) << r.final_event.status;
      outputs[on].push_back(r.tokens);
      cached[on] += r.final_event.usage.cached_prompt_tokens;
    }
    ASSERT_TRUE((*engine)->WaitIdle(absl::Seconds(10)));
    prompt_tokens_computed[on] = (*engine)->Stats().prompt_tokens;
  }
  EXPECT_EQ(outputs[0], outputs[1]);
  EXPECT_EQ(cached[0], 0);
  // 200 shared tokens = 12 full blocks of 16 (192 tokens) for each of the 7 later requests.
  EXPECT_EQ(cached[1], 7 * 192);
  EXPECT_EQ(prompt_tokens_computed[0] - prompt_tokens_computed[1], 7 * 192);
}

TEST(PrefixAdmissionTest, ARequestEndingInItsPrefillStepStillCachesItsBlocks) {
  auto engine = Engine::Create(Options(true));
  ASSERT_TRUE(engine.ok()) << engine.status();
  std::vector<EngineRequest> reqs = SharedPromptRequests(**engine, 2);
  reqs[0].max_tokens = 1;  // finishes in the step that computes its prompt
  Result first = Drain(**(*engine)->Submit(reqs[0]));
  ASSERT_TRUE(first.final_event.status.ok());
  EXPECT_EQ(first.final_event.usage.cached_prompt_tokens, 0);
  Result second = Drain(**(*engine)->Submit(reqs[1]));
  ASSERT_TRUE(second.final_event.status.ok());
  EXPECT_EQ(second.final_event.usage.cached_prompt_tokens, 192);
}

}  // namespace
}  // namespace kvserve::engine
