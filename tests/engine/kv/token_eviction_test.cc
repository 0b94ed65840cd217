// Token eviction policies: hand-worked cases, and properties over random inputs.
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/kv/token_eviction/token_eviction_policy.h"
#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

std::unique_ptr<TokenEvictionPolicy> Make(const std::string& name, int32_t sinks = 4,
                                          int32_t recent = -1, int32_t slack = 0) {
  TokenEvictionOptions o;
  o.sink_tokens = sinks;
  o.recent_window = recent;
  o.slack_tokens = slack;
  auto p = CreateTokenEvictionPolicy(name, o);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

std::vector<int32_t> Keep(const TokenEvictionPolicy& p, int32_t slots,
                          const std::vector<float>& scores, int32_t budget) {
  auto plan = p.Plan(slots, scores, budget);
  EXPECT_TRUE(plan.ok()) << plan.status();
  if (!plan.ok()) return {};
  EXPECT_TRUE(plan->evict);
  return plan->keep;
}

//                                     slot: 0  1  2  3  4  5  6  7  8  9
const std::vector<float> kScores = {5, 1, 9, 0, 3, 3, 2, 8, 0, 1};

TEST(TokenEvictionTest, RegistryKnowsThePoliciesAndValidatesOptions) {
  EXPECT_EQ(TokenEvictionPolicyNames(),
            (std::vector<std::string>{"attention", "h2o", "none", "sliding_window"}));
  auto bad = CreateTokenEvictionPolicy("lru");
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("attention, h2o, none, sliding_window"), std::string::npos);
  TokenEvictionOptions o;
  o.slack_tokens = -1;
  EXPECT_NE(CreateTokenEvictionPolicy("h2o", o).status().message().find("slack_tokens"),
            std::string::npos);
  EXPECT_EQ((*CreateTokenEvictionPolicy(kDefaultTokenEvictionPolicy))->name(), "none");
  EXPECT_FALSE(Make("sliding_window")->needs_attention_scores());
  EXPECT_TRUE(Make("h2o")->needs_attention_scores());
  EXPECT_TRUE(Make("attention")->needs_attention_scores());
}

TEST(TokenEvictionTest, NoneNeverEvicts) {
  auto plan = Make("none")->Plan(1000, {}, 10);
  ASSERT_TRUE(plan.ok());
  EXPECT_FALSE(plan->evict);
}

TEST(TokenEvictionTest, NothingHappensWithinTheBudget) {
  for (const char* name : {"sliding_window", "h2o", "attention"}) {
    auto plan = Make(name, 2)->Plan(6, std::vector<float>(6, 1.0f), 6);
    ASSERT_TRUE(plan.ok()) << name;
    EXPECT_FALSE(plan->evict) << name;
  }
}

TEST(TokenEvictionTest, SlidingWindowKeepsSinksAndTheMostRecentSlots) {
  EXPECT_EQ(Keep(*Make("sliding_window", 2), 10, {}, 6), (std::vector<int32_t>{0, 1, 6, 7, 8, 9}));
  // Slack 2: down to 4 slots, so the next two tokens fit without another eviction.
  EXPECT_EQ(Keep(*Make("sliding_window", 2, -1, 2), 10, {}, 6), (std::vector<int32_t>{0, 1, 8, 9}));
  EXPECT_EQ(Keep(*Make("sliding_window", 0), 10, {}, 3), (std::vector<int32_t>{7, 8, 9}));
  // Sinks must leave room for at least one recent slot.
  EXPECT_EQ(Make("sliding_window", 4)->Plan(10, {}, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Make("sliding_window", 1, -1, 6)->Plan(10, {}, 6).status().code(),
            absl::StatusCode::kInvalidArgument);  // slack leaves nothing
}

TEST(TokenEvictionTest, H2oSplitsTheBudgetBetweenHeavyHittersAndRecentSlots) {
  // Recent window 2: slots 8, 9. Heavy hitters, 4 of slots 0..7 by score: 2 (9), 7 (8), 0 (5),
  // then slots 4 and 5 tie at 3 and the more recent, 5, wins.
  EXPECT_EQ(Keep(*Make("h2o", 0, 2), 10, kScores, 6), (std::vector<int32_t>{0, 2, 5, 7, 8, 9}));
  // Default split, budget 8: recent 4 (slots 6..9); heavy 4 of slots 0..5: 2, 0, 5, 4.
  EXPECT_EQ(Keep(*Make("h2o", 0, -1), 10, kScores, 8),
            (std::vector<int32_t>{0, 2, 4, 5, 6, 7, 8, 9}));
  // A window as large as the budget degenerates to recency only.
  EXPECT_EQ(Keep(*Make("h2o", 0, 10), 10, kScores, 6), (std::vector<int32_t>{4, 5, 6, 7, 8, 9}));
  // No window: heavy hitters only, like `attention`.
  EXPECT_EQ(Keep(*Make("h2o", 0, 0), 10, kScores, 4), (std::vector<int32_t>{0, 2, 5, 7}));
}

TEST(TokenEvictionTest, H2oKeepsSinksBeforeSplittingTheRest) {
  // Sinks 0, 1; recent 8, 9; 2 heavy hitters of slots 2..7: 2 (9) and 7 (8).
  EXPECT_EQ(Keep(*Make("h2o", 2, 2), 10, kScores, 6), (std::vector<int32_t>{0, 1, 2, 7, 8, 9}));
  // Sink 0; budget 8 leaves 7: recent 3 (7, 8, 9), 4 heavy of slots 1..6 (scores 1 9 0 3 3 2):
  // 2, then 4 and 5 (3), then 6 (2).
  EXPECT_EQ(Keep(*Make("h2o", 1, -1), 10, kScores, 8),
            (std::vector<int32_t>{0, 2, 4, 5, 6, 7, 8, 9}));
  // More sinks than the budget keeps: the sinks alone.
  EXPECT_EQ(Keep(*Make("h2o", 5, -1), 10, kScores, 3), (std::vector<int32_t>{0, 1, 2}));
}

TEST(TokenEvictionTest, GranularityAndNormalizationNames) {
  EXPECT_EQ(*ParseTokenEvictionGranularity("sequence"), TokenEvictionGranularity::kSequence);
  EXPECT_EQ(*ParseTokenEvictionGranularity("layer"), TokenEvictionGranularity::kLayer);
  EXPECT_EQ(*ParseTokenEvictionGranularity("head"), TokenEvictionGranularity::kHead);
  EXPECT_FALSE(ParseTokenEvictionGranularity("token").ok());
  EXPECT_EQ(*ParseTokenScoreNormalization("none"), TokenScoreNormalization::kNone);
  EXPECT_EQ(*ParseTokenScoreNormalization("age"), TokenScoreNormalization::kAge);
  EXPECT_FALSE(ParseTokenScoreNormalization("mean").ok());
}

TEST(TokenEvictionTest, AttentionKeepsTheTopScoresWithTiesGoingToTheMoreRecentSlot) {
  EXPECT_EQ(Keep(*Make("attention"), 10, kScores, 5), (std::vector<int32_t>{0, 2, 4, 5, 7}));
  EXPECT_EQ(Keep(*Make("attention"), 10, kScores, 4), (std::vector<int32_t>{0, 2, 5, 7}));
  EXPECT_EQ(Keep(*Make("attention"), 6, std::vector<float>(6, 1.0f), 3),
            (std::vector<int32_t>{3, 4, 5}));
  EXPECT_EQ(Keep(*Make("attention", 4, -1, 1), 10, kScores, 4), (std::vector<int32_t>{0, 2, 7}));
}

TEST(TokenEvictionTest, ScorePoliciesCheckTheirScores) {
  EXPECT_EQ(Make("h2o")->Plan(10, {}, 6).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> nan = kScores;
  nan[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(Make("attention")->Plan(10, nan, 6).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Make("attention")->Plan(10, kScores, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Policies without scores ignore them.
  EXPECT_TRUE(Make("sliding_window", 1)->Plan(10, nan, 6).ok());
}

// Random sizes, budgets, slacks and scores with many ties. Independent checks: the plan keeps
// exactly budget - slack slots (never more than the budget), ascending, in range; sliding_window
// keeps sinks + the newest; attention keeps a set where every kept slot beats every dropped one
// by (score, recency); h2o does so among the slots older than its window, which it keeps whole.
TEST(TokenEvictionTest, RandomPlansRespectBudgetOrderAndRanking) {
  std::mt19937 rng(3);
  auto uniform = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto beats = [](const std::vector<float>& s, int32_t a, int32_t b) {
    return s[a] != s[b] ? s[a] > s[b] : a > b;
  };
  for (int iter = 0; iter < 600; ++iter) {
    const int32_t slots = uniform(2, 120);
    const int32_t budget = uniform(1, slots - 1);
    const int32_t slack = uniform(0, budget - 1);
    const int32_t target = budget - slack;
    const int32_t sinks = uniform(0, 4);
    const int32_t window = uniform(-1, 8);
    std::vector<float> scores(slots);
    for (float& s : scores) s = static_cast<float>(uniform(0, 5));
    for (const std::string name : {"sliding_window", "h2o", "attention"}) {
      SCOPED_TRACE(name + " slots " + std::to_string(slots) + " budget " + std::to_string(budget));
      auto plan = Make(name, sinks, window, slack)->Plan(slots, scores, budget);
      if (name == "sliding_window" && target <= sinks) {
        EXPECT_FALSE(plan.ok());
        continue;
      }
      ASSERT_TRUE(plan.ok()) << plan.status();
      ASSERT_TRUE(plan->evict);
      const std::vector<int32_t>& keep = plan->keep;
      ASSERT_EQ(static_cast<int32_t>(keep.size()), target);
      EXPECT_LE(static_cast<int32_t>(keep.size()), budget);
      for (size_t i = 0; i < keep.size(); ++i) {
        ASSERT_GE(keep[i], 0);
        ASSERT_LT(keep[i], slots);
        if (i > 0) {
          ASSERT_LT(keep[i - 1], keep[i]);
        }
      }
      std::vector<bool> kept(slots, false);
      for (int32_t s : keep) kept[s] = true;
      if (name == "sliding_window") {
        for (int32_t s = 0; s < slots; ++s) {
          EXPECT_EQ(kept[s], s < sinks || s >= slots - (target - sinks)) << s;
        }
        continue;
      }
      // h2o keeps min(sinks, target) sinks; its window splits what is left.
      const int32_t kept_sinks = name == "attention" ? 0 : std::min(sinks, target);
      const int32_t rest = target - kept_sinks;
      const int32_t recent = name == "attention" ? 0
                             : window < 0        ? rest / 2
                                                 : std::min(window, rest);
      for (int32_t s = 0; s < kept_sinks; ++s) EXPECT_TRUE(kept[s]) << s;
      for (int32_t s = slots - recent; s < slots; ++s) EXPECT_TRUE(kept[s]) << s;
      for (int32_t a = kept_sinks; a < slots - recent; ++a) {
        for (int32_t d = kept_sinks; d < slots - recent; ++d) {
          if (kept[a] && !kept[d]) {
            ASSERT_TRUE(beats(scores, a, d)) << a << " vs " << d;
          }
        }
      }
    }
  }
}

// A stream of 100 tokens under sliding_window (2 sinks, budget 16, slack 4), planned before each
// token is appended so that the cache never holds more than 16 slots: eviction runs once every
// 5 tokens instead of at every token, and the survivors are the sinks and the newest tokens.
TEST(TokenEvictionTest, SlackBatchesEvictionAndCompactionKeepsOrder) {
  auto policy = Make("sliding_window", 2, -1, 4);
  std::vector<int32_t> positions;  // original position of the token in each slot
  int evictions = 0;
  for (int32_t t = 0; t < 100; ++t) {
    auto plan = policy->Plan(static_cast<int32_t>(positions.size()), {}, /*budget=*/16 - 1);
    ASSERT_TRUE(plan.ok());
    if (plan->evict) {
      ++evictions;
      CompactKept(plan->keep, &positions);
      ASSERT_EQ(positions.size(), 11u);
    }
    positions.push_back(t);
    ASSERT_LE(positions.size(), 16u);
  }
  EXPECT_EQ(evictions, 17);  // before tokens 16, 21, ..., 96
  std::vector<int32_t> expected = {0, 1};
  for (int32_t p = 87; p < 100; ++p) expected.push_back(p);
  EXPECT_EQ(positions, expected);
}

TEST(TokenEvictionTest, CompactKeptCarriesScoresAlong) {
  std::vector<float> scores = kScores;
  auto plan = Make("h2o", 0, 2)->Plan(10, scores, 6);
  ASSERT_TRUE(plan.ok());
  CompactKept(plan->keep, &scores);
  EXPECT_EQ(scores, (std::vector<float>{5, 9, 3, 8, 0, 1}));  // slots 0, 2, 5, 7, 8, 9
}

}  // namespace
}  // namespace kvserve::engine
