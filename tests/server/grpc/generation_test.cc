// Generation over gRPC against the real server: greedy output equals the offline
// `kvserve generate`, under concurrency and under KV memory pressure (preemption).
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

const std::vector<std::string>& Prompts() {
  static const std::vector<std::string>* const prompts = new std::vector<std::string>{
      "Once upon a time",
      "The little dog",
      "Lily and Tom went to the park. They",
      "One day, a big red ball",
      "Sam was sad because",
      "The sun was shining and the birds",
      "Mom said",
      "There was a tiny frog who lived in a pond. Every day",
  };
  return *prompts;
}

TEST(GrpcGenerationTest, GreedyCompleteAndGenerateMatchOfflineGenerate) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  auto stub = server.Stub();
  for (size_t i = 0; i < 4; ++i) {
    const std::string& prompt = Prompts()[i];
    const int max_tokens = 16 + 8 * static_cast<int>(i);
    const std::string expected = OfflineGreedy(prompt, max_tokens);
    ASSERT_FALSE(expected.empty());

    grpc::ClientContext context;
    v1::CompleteResponse response;
    grpc::Status status = stub->Complete(&context, GreedyRequest(prompt, max_tokens), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(prompt + response.text() + "\n", expected) << prompt;
    EXPECT_EQ(response.usage().completion_tokens(), response.token_ids_size());
    EXPECT_LE(response.token_ids_size(), max_tokens);
    EXPECT_GT(response.usage().prompt_tokens(), 1);
    EXPECT_NE(response.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
    EXPECT_FALSE(response.request_id().empty());
    EXPECT_GT(response.kv_usage().peak_blocks(), 0);
    EXPECT_GT(response.kv_usage().peak_bytes(), 0);

    StreamResult stream = ReadStream(*stub, GreedyRequest(prompt, max_tokens));
    ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
    EXPECT_EQ(prompt + stream.text + "\n", expected) << prompt;
    EXPECT_EQ(stream.token_ids.size(), static_cast<size_t>(response.token_ids_size()));
    EXPECT_EQ(stream.last.finish_reason(), response.finish_reason());
    EXPECT_EQ(stream.last.usage().completion_tokens(), response.usage().completion_tokens());
    EXPECT_GE(stream.messages, 1);
  }
}

TEST(GrpcGenerationTest, MaxTokensReachedEndsWithLength) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  v1::GenerateRequest request = GreedyRequest("Once upon a time", 7);
  request.set_ignore_eos(true);
  StreamResult stream = ReadStream(*server.Stub(), request);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  EXPECT_EQ(stream.token_ids.size(), 7u);
  EXPECT_EQ(stream.last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(stream.last.usage().completion_tokens(), 7);
  EXPECT_GT(stream.last.timings().total().seconds() * 1000000000LL +
                stream.last.timings().total().nanos(),
            0);
}

struct Job {
  v1::GenerateRequest request;
  std::string expected_text;
  std::vector<int32_t> expected_ids;
};

// 32 jobs over the prompts with different lengths; the expected output of each is what the
// server produces for it alone.
std::vector<Job> MakeJobs(v1::Generation::Stub& stub) {
  std::vector<Job> jobs;
  for (int i = 0; i < 32; ++i) {
    Job job;
    job.request = GreedyRequest(Prompts()[i % Prompts().size()], 12 + (i * 5) % 29);
    job.request.set_request_id("job-" + std::to_string(i));
    grpc::ClientContext context;
    v1::CompleteResponse response;
    grpc::Status status = stub.Complete(&context, job.request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    job.expected_text = response.text();
    job.expected_ids.assign(response.token_ids().begin(), response.token_ids().end());
    jobs.push_back(std::move(job));
  }
  return jobs;
}

// Runs every job on its own stream at once; returns the results in job order.
std::vector<StreamResult> RunConcurrently(const ServerProcess& server,
                                          const std::vector<Job>& jobs) {
  std::vector<StreamResult> results(jobs.size());
  std::vector<std::thread> threads;
  auto channel = server.Channel();
  for (size_t i = 0; i < jobs.size(); ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::Generation::NewStub(channel);
      results[i] = ReadStream(*stub, jobs[i].request, absl::Seconds(120));
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

TEST(GrpcGenerationTest, ConcurrentStreamsEqualSequentialOutput) {
  ServerProcess server;
  ASSERT_TRUE(server.Start());
  auto stub = server.Stub();
  const std::vector<Job> jobs = MakeJobs(*stub);
  // The sequential reference itself agrees with the offline command.
  EXPECT_EQ(Prompts()[0] + jobs[0].expected_text + "\n",
            OfflineGreedy(Prompts()[0], jobs[0].request.max_tokens()));
  const std::vector<StreamResult> results = RunConcurrently(server, jobs);
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].text, jobs[i].expected_text) << "job " << i;
    EXPECT_EQ(results[i].token_ids, jobs[i].expected_ids) << "job " << i;
    EXPECT_EQ(results[i].last.request_id(), "job-" + std::to_string(i));
  }
}

TEST(GrpcGenerationTest, PreemptionUnderASmallKvBudgetKeepsEveryOutput) {
  // The expected outputs come from a server with plenty of memory.
  std::vector<Job> jobs;
  {
    ServerProcess reference;
    ASSERT_TRUE(reference.Start());
    jobs = MakeJobs(*reference.Stub());
  }
  // 0.2 MiB of fp32 blocks (20 KiB each for this model) is 10 blocks of 16 tokens: a handful of
  // the 32 streams fit at once, so running ones must be preempted as they grow.
  ServerProcess server;
  ASSERT_TRUE(server.Start({"kv_cache.budget_mb=0.2"}));
  const std::vector<StreamResult> results = RunConcurrently(server, jobs);
  int preempted = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].text, jobs[i].expected_text) << "job " << i;
    EXPECT_EQ(results[i].token_ids, jobs[i].expected_ids) << "job " << i;
    EXPECT_LE(results[i].last.kv_usage().peak_blocks(), 10);
    preempted += results[i].last.preemptions() > 0 ? 1 : 0;
  }
  EXPECT_GT(preempted, 0) << "no stream was preempted; the budget is not small enough";
}

}  // namespace
}  // namespace kvserve::server::testing
