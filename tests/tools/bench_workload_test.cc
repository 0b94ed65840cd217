// The serving benchmark's workloads: arrival process rates, generated requests and trace parsing.
#include "tools/bench_workload.h"

#include <cmath>
#include <limits>
#include <numeric>

#include "gtest/gtest.h"

namespace kvserve::tools {
namespace {

ModelLimits Limits() {
  ModelLimits l;
  l.vocab_size = 512;
  l.bos_id = 1;
  l.eos_id = 2;
  l.context_length = 512;
  l.max_prompt_tokens = 511;
  l.max_tokens_limit = 512;
  return l;
}

// Mean and coefficient of variation of the gaps between arrivals.
void GapStats(const std::vector<double>& t, double* mean, double* cv) {
  std::vector<double> gaps;
  double prev = 0;
  for (double x : t) {
    gaps.push_back(x - prev);
    prev = x;
  }
  *mean = std::accumulate(gaps.begin(), gaps.end(), 0.0) / gaps.size();
  double var = 0;
  for (double g : gaps) var += (g - *mean) * (g - *mean);
  var /= gaps.size() - 1;
  *cv = std::sqrt(var) / *mean;
}

TEST(ArrivalTimesTest, PoissonHasTheRequestedRate) {
  // 20,000 exponential gaps of mean 10 ms: the sample mean is within 3 standard errors
  // (10 ms / sqrt(20000) = 0.07 ms) of 10 ms; an exponential's CV is 1.
  const std::vector<double> t = ArrivalTimes(20000, 100.0, 1.0, 42);
  ASSERT_EQ(t.size(), 20000u);
  EXPECT_TRUE(std::is_sorted(t.begin(), t.end()));
  double mean, cv;
  GapStats(t, &mean, &cv);
  EXPECT_NEAR(mean, 0.010, 3 * 0.010 / std::sqrt(20000.0));
  EXPECT_NEAR(cv, 1.0, 0.05);
  EXPECT_NEAR(20000 / t.back(), 100.0, 2.5);
}

TEST(ArrivalTimesTest, BurstinessKeepsTheRateAndChangesTheSpread) {
  // Gamma gaps of shape k and mean 1/rate have CV 1/sqrt(k): k = 0.25 -> 2, k = 4 -> 0.5.
  for (double k : {0.25, 4.0}) {
    const std::vector<double> t = ArrivalTimes(40000, 50.0, k, 7);
    double mean, cv;
    GapStats(t, &mean, &cv);
    const double se = (1.0 / 50.0) / std::sqrt(k) / std::sqrt(40000.0);
    EXPECT_NEAR(mean, 0.02, 4 * se) << "k = " << k;
    EXPECT_NEAR(cv, 1.0 / std::sqrt(k), 0.06 / std::sqrt(k)) << "k = " << k;
  }
}

TEST(ArrivalTimesTest, InfiniteRateSendsEverythingAtOnceAndSeedsRepeat) {
  const std::vector<double> t = ArrivalTimes(5, std::numeric_limits<double>::infinity(), 1.0, 1);
  EXPECT_EQ(t, std::vector<double>(5, 0.0));
  EXPECT_EQ(ArrivalTimes(100, 10, 1, 3), ArrivalTimes(100, 10, 1, 3));
  EXPECT_NE(ArrivalTimes(100, 10, 1, 3), ArrivalTimes(100, 10, 1, 4));
}

TEST(GenerateWorkloadTest, RandomLengthsStayInRangeAndIdsAvoidControlTokens) {
  WorkloadOptions o;
  o.num_requests = 200;
  o.input_len = 100;
  o.output_len = 20;
  o.range_ratio = 0.5;
  o.seed = 3;
  auto w = GenerateWorkload(o, Limits());
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(w->size(), 200u);
  int min_in = 1 << 30, max_in = 0;
  for (const BenchRequest& r : *w) {
    min_in = std::min<int>(min_in, r.prompt_ids.size());
    max_in = std::max<int>(max_in, r.prompt_ids.size());
    EXPECT_GE(r.output_len, 10);
    EXPECT_LE(r.output_len, 30);
    EXPECT_EQ(r.prompt_ids[0], 1);
    for (size_t i = 1; i < r.prompt_ids.size(); ++i) {
      EXPECT_NE(r.prompt_ids[i], 1);
      EXPECT_NE(r.prompt_ids[i], 2);
      EXPECT_GE(r.prompt_ids[i], 0);
      EXPECT_LT(r.prompt_ids[i], 512);
    }
  }
  EXPECT_GE(min_in, 50);
  EXPECT_LE(max_in, 150);
  EXPECT_LT(min_in, 60);  // 200 draws over [50, 150] reach both ends
  EXPECT_GT(max_in, 140);
}

TEST(GenerateWorkloadTest, SharedPrefixRequestsShareTheirPrefix) {
  WorkloadOptions o;
  o.kind = "shared-prefix";
  o.num_requests = 6;
  o.prefix_len = 40;
  o.suffix_len = 8;
  o.num_prefixes = 3;
  o.output_len = 4;
  auto w = GenerateWorkload(o, Limits());
  ASSERT_TRUE(w.ok()) << w.status();
  auto prefix = [&](int i) {
    return std::vector<int32_t>((*w)[i].prompt_ids.begin(), (*w)[i].prompt_ids.begin() + 40);
  };
  EXPECT_EQ((*w)[0].prompt_ids.size(), 48u);
  EXPECT_EQ(prefix(0), prefix(3));
  EXPECT_EQ(prefix(1), prefix(4));
  EXPECT_NE(prefix(0), prefix(1));
  EXPECT_NE((*w)[0].prompt_ids, (*w)[3].prompt_ids);  // suffixes differ
}

TEST(GenerateWorkloadTest, LongContextFillsTheContext) {
  WorkloadOptions o;
  o.kind = "long-context";
  o.num_requests = 20;
  o.output_len = 16;
  auto w = GenerateWorkload(o, Limits());
  ASSERT_TRUE(w.ok()) << w.status();
  for (const BenchRequest& r : *w) {
    EXPECT_GE(r.prompt_ids.size(), 256u);
    EXPECT_LE(r.prompt_ids.size() + r.output_len, 512u);
  }
}

TEST(GenerateWorkloadTest, TooLongRequestsNameTheOption) {
  WorkloadOptions o;
  o.num_requests = 1;
  o.input_len = 500;
  o.output_len = 100;
  auto w = GenerateWorkload(o, Limits());
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("exceed the model's context of 512"), std::string::npos)
      << w.status();
  o.kind = "bogus";
  EXPECT_NE(GenerateWorkload(o, Limits()).status().message().find("--workload"), std::string::npos);
}

TEST(ParseTraceTest, ParsesEveryPromptForm) {
  const std::string text =
      "# a comment\n"
      "{\"timestamp\": 0.0, \"prompt\": \"Once upon a time\", \"output_len\": 8}\n"
      "\n"
      "{\"timestamp\": 0.5, \"prompt_token_ids\": [1, 300, 301], \"output_len\": 4}\n"
      "{\"timestamp\": 0.5, \"input_len\": 20, \"output_len\": 2}\n";
  auto t = ParseTrace(text, "t.jsonl", Limits(), 0);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 3u);
  EXPECT_EQ((*t)[0].prompt_text, "Once upon a time");
  EXPECT_EQ((*t)[0].output_len, 8);
  EXPECT_EQ((*t)[1].prompt_ids, (std::vector<int32_t>{1, 300, 301}));
  EXPECT_DOUBLE_EQ(*(*t)[1].arrival_s, 0.5);
  EXPECT_EQ((*t)[2].prompt_ids.size(), 20u);
}

TEST(ParseTraceTest, ErrorsNameTheFileAndLine) {
  struct Case {
    std::string text;
    std::string expected;
  } cases[] = {
      {"{\"input_len\": 4, \"output_len\": 2}\n\n{\"input_len\": 4, \"output_len\": }\n",
       "t.jsonl:3: JSON: at byte 31"},
      {"{\"input_len\": 4}\n", "t.jsonl:1: \"output_len\" is missing"},
      {"{\"input_len\": 4, \"output_len\": 2}\n{\"input_len\": 4, \"output_len\": 2, \"x\": 1}\n",
       "t.jsonl:2: unknown key \"x\""},
      {"{\"prompt_token_ids\": [1, 512], \"output_len\": 2}\n",
       "t.jsonl:1: \"prompt_token_ids\"[1] is not a token id in [0, 512)"},
      {"{\"input_len\": 4, \"prompt\": \"a\", \"output_len\": 2}\n", "t.jsonl:1: exactly one of"},
      {"{\"input_len\": 4, \"output_len\": 2.5}\n", "t.jsonl:1: \"output_len\" must be an integer"},
      {"{\"timestamp\": 1, \"input_len\": 4, \"output_len\": 2}\n"
       "{\"input_len\": 4, \"output_len\": 2}\n",
       "t.jsonl:2: \"timestamp\" must be given on every line or on none"},
      {"{\"timestamp\": 2, \"input_len\": 4, \"output_len\": 2}\n"
       "{\"timestamp\": 1, \"input_len\": 4, \"output_len\": 2}\n",
       "t.jsonl:2: \"timestamp\" 1 is before"},
      {"{\"input_len\": 500, \"output_len\": 100}\n",
       "t.jsonl:1: request: prompt 500 + output 100"},
      {"[1, 2]\n", "t.jsonl:1: expected a JSON object"},
      {"# nothing\n", "t.jsonl: the trace has no requests"},
  };
  for (const Case& c : cases) {
    auto t = ParseTrace(c.text, "t.jsonl", Limits(), 0);
    ASSERT_FALSE(t.ok()) << c.text;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(t.status().message().find(c.expected), std::string::npos)
        << "got: " << t.status().message() << "\nwanted: " << c.expected;
  }
}

}  // namespace
}  // namespace kvserve::tools
