// The threaded serving engine: submission, streaming, cancellation, deadlines, queue limits,
// priorities and shutdown.
#include "engine/runtime/engine.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

EngineOptions StoriesOptions() {
  EngineOptions o;
  o.model.model_path = std::string(KVSERVE_MODELS_DIR) + "/stories260K.gguf";
  o.model.kv_budget_bytes = 16 << 20;
  return o;
}

struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  StreamEvent final_event;
  int events = 0;
};

Collected Collect(RequestStream& s, absl::Duration timeout = absl::Seconds(60)) {
  Collected c;
  const absl::Time end = absl::Now() + timeout;
  std::vector<StreamEvent> ev;
  while (absl::Now() < end) {
    ev.clear();
    const bool done = s.WaitAndTake(&ev, absl::Milliseconds(100));
    for (auto& e : ev) {
      ++c.events;
      c.tokens.insert(c.tokens.end(), e.token_ids.begin(), e.token_ids.end());
      c.text += e.text;
      if (e.final) c.final_event = e;
    }
    if (done) return c;
  }
  ADD_FAILURE() << "stream did not finish";
  return c;
}

EngineRequest Greedy(const Engine& e, const std::string& prompt, int max_tokens) {
  EngineRequest r;
  r.prompt = e.tokenizer().Encode(prompt, true);
  r.max_tokens = max_tokens;
  return r;
}

TEST(EngineTest, StreamsThePublishedGreedyText) {
  auto engine = Engine::Create(StoriesOptions());
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto stream = (*engine)->Submit(Greedy(**engine, "Once upon a time", 30));
  ASSERT_TRUE(stream.ok()) << stream.status();
  Collected c = Collect(**stream);
  EXPECT_TRUE(c.final_event.status.ok()) << c.final_event.status;
  EXPECT_EQ(c.text.rfind(", there was a little girl named Lily. She loved to play", 0), 0u)
      << c.text;
  EXPECT_EQ(c.final_event.finish_reason, FinishReason::kLength);
  EXPECT_EQ(c.final_event.usage.completion_tokens, 30);
  EXPECT_EQ(c.final_event.usage.prompt_tokens, 5);
  EXPECT_EQ(c.tokens.size(), 30u);
  EXPECT_GT(c.final_event.kv.peak_blocks, 0);
  EXPECT_GE(c.final_event.timings.total, c.final_event.timings.time_to_first_token);
  ASSERT_TRUE((*engine)->WaitIdle(absl::Seconds(10)));
  const EngineStats st = (*engine)->Stats();
  EXPECT_EQ(st.kv_used_blocks, st.kv_cached_blocks);  // only reusable prefix blocks remain
  EXPECT_EQ(st.requests_finished, 1);
  EXPECT_EQ(st.generated_tokens, 30);
}

TEST(EngineTest, CancelFreesBlocksAndKeepsServing) {
  EngineOptions o = StoriesOptions();
  o.stream_buffer_tokens = 4;  // the unread stream pauses the request quickly
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok());
  EngineRequest r = Greedy(**engine, "Once upon a time", 400);
  r.ignore_eos = true;
  auto stream = (*engine)->Submit(r);
  ASSERT_TRUE(stream.ok());
  // Wait until it holds blocks, then cancel.
  for (int i = 0; i < 200 && (*engine)->Stats().kv_used_blocks == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_GT((*engine)->Stats().kv_used_blocks, 0);
  (*stream)->Cancel();
  Collected c = Collect(**stream);
  EXPECT_EQ(c.final_event.status.code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE((*engine)->WaitIdle(absl::Seconds(10)));
  EXPECT_EQ((*engine)->Stats().kv_used_blocks, (*engine)->Stats().kv_cached_blocks);
  EXPECT_EQ((*engine)->Stats().requests_cancelled, 1);
  auto again = (*engine)->Submit(Greedy(**engine, "Once upon a time", 5));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(Collect(**again).final_event.status.ok());
}

// A consumer that waits only for the listener, never polling: an event pushed without a Notify
// would leave it waiting out the 30-second guard.
Collected CollectByListener(RequestStream& s) {
  struct Calls {
    absl::Mutex mu;
    int n ABSL_GUARDED_BY(mu) = 0;
  } calls;
  s.SetListener([&calls] {
    absl::MutexLock lock(&calls.mu);
    ++calls.n;
  });
  Collected c;
  int seen = 0;
  std::vector<StreamEvent> ev;
  while (true) {
    {
      absl::MutexLock lock(&calls.mu);
      auto called = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(calls.mu) { return calls.n > seen; };
      if (!calls.mu.AwaitWithTimeout(absl::Condition(&called), absl::Seconds(30))) {
        ADD_FAILURE() << "no notification for 30 s after " << c.events << " events";
        break;
      }
      seen = calls.n;
    }
    ev.clear();
    const bool done = s.Take(&ev);
    for (auto& e : ev) {
      ++c.events;
      c.tokens.insert(c.tokens.end(), e.token_ids.begin(), e.token_ids.end());
      if (e.final) c.final_event = e;
    }
    if (done) break;
  }
  s.SetListener(nullptr);
  return c;
}

TEST(EngineTest, EveryEventIsNotifiedToTheListener) {
  EngineOptions o = StoriesOptions();
  o.stream_buffer_tokens = 4;
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok());
  // Generation: events of each step.
  auto stream = (*engine)->Submit(Greedy(**engine, "Once upon a time", 20));
  ASSERT_TRUE(stream.ok());
  Collected c = CollectByListener(**stream);
  EXPECT_TRUE(c.final_event.status.ok()) << c.final_event.status;
  EXPECT_EQ(c.tokens.size(), 20u);
  // A request that ends in a step with nothing to compute: its deadline has passed.
  EngineRequest late = Greedy(**engine, "Once upon a time", 20);
  late.deadline = absl::Now() - absl::Milliseconds(1);
  auto expired = (*engine)->Submit(late);
  ASSERT_TRUE(expired.ok());
  EXPECT_EQ(CollectByListener(**expired).final_event.status.code(),
            absl::StatusCode::kDeadlineExceeded);
  // Shutdown ends a running request (AbortAll); unread, its stream has paused it.
  EngineRequest r = Greedy(**engine, "Once upon a time", 400);
  r.ignore_eos = true;
  auto running = (*engine)->Submit(r);
  ASSERT_TRUE(running.ok());
  std::vector<StreamEvent> first;
  ASSERT_FALSE((*running)->WaitAndTake(&first, absl::Seconds(30)));
  ASSERT_FALSE(first.empty());
  (*engine)->AbortAll(absl::UnavailableError("test shutdown"));
  EXPECT_EQ(CollectByListener(**running).final_event.status.code(), absl::StatusCode::kUnavailable);
}

TEST(EngineTest, DeadlineExceeded) {
  auto engine = Engine::Create(StoriesOptions());
  ASSERT_TRUE(engine.ok());
  EngineRequest r = Greedy(**engine, "Once upon a time", 400);
  r.ignore_eos = true;
  r.deadline = absl::Now() - absl::Milliseconds(1);
  auto stream = (*engine)->Submit(r);
  ASSERT_TRUE(stream.ok());
  Collected c = Collect(**stream);
  EXPECT_EQ(c.final_event.status.code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE((*engine)->WaitIdle(absl::Seconds(10)));
  EXPECT_EQ((*engine)->Stats().kv_used_blocks, (*engine)->Stats().kv_cached_blocks);
}

TEST(EngineTest, FullQueueIsResourceExhaustedNamingTheLimit) {
  EngineOptions o = StoriesOptions();
  o.max_running_requests = 1;
  o.max_waiting_requests = 2;
  o.stream_buffer_tokens = 1;  // unread streams stall, so the queue stays full
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok());
  std::vector<std::shared_ptr<RequestStream>> streams;
  absl::Status last;
  for (int i = 0; i < 6; ++i) {
    EngineRequest r = Greedy(**engine, "Once upon a time", 300);
    r.ignore_eos = true;
    auto s = (*engine)->Submit(r);
    if (s.ok()) {
      streams.push_back(*s);
    } else {
      last = s.status();
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(last.message().find("max_waiting_requests"), std::string::npos) << last;
  for (auto& s : streams) s->Cancel();
  ASSERT_TRUE((*engine)->WaitIdle(absl::Seconds(10)));
  EXPECT_EQ((*engine)->Stats().kv_used_blocks, (*engine)->Stats().kv_cached_blocks);
}

TEST(EngineTest, ValidationNamesTheField) {
  auto engine = Engine::Create(StoriesOptions());
  ASSERT_TRUE(engine.ok());
  EngineRequest r;
  EXPECT_NE((*engine)->Submit(r).status().message().find("prompt"), std::string::npos);
  r = Greedy(**engine, "hi", 0);
  EXPECT_NE((*engine)->Submit(r).status().message().find("max_tokens"), std::string::npos);
  r = Greedy(**engine, "hi", 5);
  r.prompt.push_back(512);
  EXPECT_NE((*engine)->Submit(r).status().message().find("512"), std::string::npos);
  r = Greedy(**engine, "hi", 5);
  r.sampling.top_p = 0;
  EXPECT_NE((*engine)->Submit(r).status().message().find("top_p"), std::string::npos);
  r = Greedy(**engine, "hi", 5);
  r.prompt.assign(3000, 5);
  EXPECT_NE((*engine)->Submit(r).status().message().find("prompt"), std::string::npos);
  r = Greedy(**engine, "hi", 5);
  r.sampling.presence_penalty = 2.5f;
  EXPECT_NE((*engine)->Submit(r).status().message().find("presence_penalty"), std::string::npos);
  r = Greedy(**engine, "hi", 5);
  r.sampling.frequency_penalty = -3.0f;
  EXPECT_NE((*engine)->Submit(r).status().message().find("frequency_penalty"), std::string::npos);
  for (int32_t bad : {-2, kMaxTopLogprobs + 1}) {
    r = Greedy(**engine, "hi", 5);
    r.logprobs = bad;
    EXPECT_EQ((*engine)->Submit(r).status().message().rfind("logprobs:", 0), 0u) << bad;
  }
}

TEST(EngineTest, EveryEventCarriesTheLogprobsOfItsTokens) {
  auto engine = Engine::Create(StoriesOptions());
  ASSERT_TRUE(engine.ok()) << engine.status();
  for (int32_t logprobs : {-1, 0, 4}) {
    EngineRequest r = Greedy(**engine, "Once upon a time", 30);
    r.logprobs = logprobs;
    r.stop = {"Lily"};  // the greedy story names her within 30 tokens
    auto stream = (*engine)->Submit(r);
    ASSERT_TRUE(stream.ok()) << stream.status();
    std::vector<StreamEvent> events;
    bool done = false;
    const absl::Time end = absl::Now() + absl::Seconds(60);
    while (!done && absl::Now() < end) done = (*stream)->WaitAndTake(&events, absl::Seconds(1));
    ASSERT_TRUE(done);
    size_t tokens = 0;
    for (const StreamEvent& e : events) {
      tokens += e.token_ids.size();
      if (e.final) {
        EXPECT_EQ(e.finish_reason, FinishReason::kStop);
      }
      if (logprobs < 0) {
        EXPECT_TRUE(e.logprobs.empty());
        continue;
      }
      ASSERT_EQ(e.logprobs.size(), e.token_ids.size());
      for (size_t i = 0; i < e.token_ids.size(); ++i) {
        EXPECT_EQ(e.logprobs[i].token_id, e.token_ids[i]);
        EXPECT_EQ(e.logprobs[i].top.size(), static_cast<size_t>(logprobs));
      }
    }
    EXPECT_GT(tokens, 0u);
  }
}

TEST(EngineTest, PriorityPolicyRunsHigherPriorityFirst) {
  EngineOptions o = StoriesOptions();
  o.policy = SchedulingPolicy::kPriority;
  o.max_running_requests = 1;
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok());
  // Occupy the single running slot, then queue a low and a high priority request.
  // It is long enough never to finish on its own before both are queued; it is cancelled once
  // they are, so the order does not depend on the machine's speed.
  EngineRequest first = Greedy(**engine, "Once upon a time", 1900);
  first.ignore_eos = true;
  auto s0 = (*engine)->Submit(first);
  ASSERT_TRUE(s0.ok());
  for (int i = 0; i < 2000 && (*engine)->Stats().running_requests == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_EQ((*engine)->Stats().running_requests, 1);
  EngineRequest low = Greedy(**engine, "The little dog", 10);
  low.priority = 1;
  EngineRequest high = Greedy(**engine, "The little dog", 10);
  high.priority = 9;
  auto sl = (*engine)->Submit(low);
  auto sh = (*engine)->Submit(high);
  ASSERT_TRUE(sl.ok() && sh.ok());
  (*s0)->Cancel();
  Collect(**s0);
  Collected cl = Collect(**sl);
  Collected ch = Collect(**sh);
  EXPECT_LT(ch.final_event.timings.queued, cl.final_event.timings.queued);
}

TEST(EngineTest, ShutdownRefusesNewWorkAndAbortEndsStreams) {
  auto engine = Engine::Create(StoriesOptions());
  ASSERT_TRUE(engine.ok());
  EngineRequest r = Greedy(**engine, "Once upon a time", 400);
  r.ignore_eos = true;
  auto stream = (*engine)->Submit(r);
  ASSERT_TRUE(stream.ok());
  (*engine)->BeginShutdown();
  EXPECT_EQ((*engine)->Submit(Greedy(**engine, "hi", 3)).status().code(),
            absl::StatusCode::kUnavailable);
  (*engine)->AbortAll(absl::UnavailableError("draining took too long"));
  Collected c = Collect(**stream);
  EXPECT_TRUE(c.final_event.final);
  EXPECT_TRUE(c.final_event.status.ok() ||
              c.final_event.status.code() == absl::StatusCode::kUnavailable);
  EXPECT_EQ((*engine)->Stats().kv_used_blocks, (*engine)->Stats().kv_cached_blocks);
}

}  // namespace
}  // namespace kvserve::engine

namespace kvserve::engine {
namespace {

TEST(EngineStatsTest, AccountingMatchesThePoolAndTopRequestsAreListed) {
  EngineOptions o = StoriesOptions();
  o.stream_buffer_tokens = 2;  // unread streams pause, so the requests stay live
  auto engine = Engine::Create(o);
  ASSERT_TRUE(engine.ok());
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 3; ++i) {
    EngineRequest r = Greedy(**engine, i == 0 ? "Once upon a time, there was a big dog" : "Hi", 50);
    r.id = "r" + std::to_string(i);
    r.ignore_eos = true;
    streams.push_back(*(*engine)->Submit(r));
  }
  EngineStats s;
  for (int i = 0; i < 400; ++i) {
    s = (*engine)->Stats();
    if (s.top_requests.size() == 3 && s.running_requests == 3) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(s.top_requests.size(), 3u);
  EXPECT_EQ(s.top_requests[0].id, "r0");  // the longest prompt holds the most blocks
  int64_t listed = 0;
  for (const auto& t : s.top_requests) listed += t.bytes;
  EXPECT_EQ(listed, s.kv.used_bytes);
  int64_t by_format = 0;
  for (const auto& u : s.kv.used_by_format) by_format += u.total();
  EXPECT_EQ(by_format, s.kv.used_bytes);
  EXPECT_EQ(s.kv.allocated_bytes, s.kv.used_bytes + s.kv.free_bytes);
  // FP32 KV: twice the FP16 bytes, so the "compression" ratio is 0.5.
  EXPECT_DOUBLE_EQ(s.kv.compression_ratio(), 0.5);
  for (auto& st : streams) st->Cancel();
  ASSERT_TRUE((*engine)->WaitIdle(absl::Seconds(10)));
  s = (*engine)->Stats();
  EXPECT_EQ(s.kv_used_blocks, s.kv_cached_blocks);
  EXPECT_TRUE(s.top_requests.empty());
}

}  // namespace
}  // namespace kvserve::engine
