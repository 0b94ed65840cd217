// token_eviction.* keys: bad values fail naming the key, the file and the line; the checks that
// involve several keys name the one at fault.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/config/server_config.h"
#include "tests/server/config/config_test_util.h"

namespace kvserve::server {
namespace {

using config_test::ScratchDir;
using ::testing::AllOf;
using ::testing::HasSubstr;

class TokenEvictionConfigTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_.Write("m.gguf", "model bytes"); }

  absl::StatusOr<ServerConfig> Load(const std::string& section) {
    return LoadServerConfig(
        dir_.Write("te.yaml", "model:\n  path: m.gguf\ntoken_eviction:\n" + section));
  }
  std::string Error(const std::string& section) {
    absl::StatusOr<ServerConfig> config = Load(section);
    EXPECT_FALSE(config.ok()) << section;
    if (config.ok()) return "";
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << config.status();
    return std::string(config.status().message());
  }
  std::string At(int line) const { return dir_.Path("te.yaml") + ":" + std::to_string(line); }

  ScratchDir dir_;
};

TEST_F(TokenEvictionConfigTest, ValidSectionLoads) {
  absl::StatusOr<ServerConfig> c =
      Load("  policy: h2o\n  budget_tokens: 128\n  recent_window: 32\n  slack_tokens: 16\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->engine.token_eviction.policy, "h2o");
  EXPECT_EQ(c->engine.token_eviction.budget_tokens, 128);
  EXPECT_EQ(c->engine.token_eviction.options.recent_window, 32);
  EXPECT_EQ(c->engine.token_eviction.options.slack_tokens, 16);
}

TEST_F(TokenEvictionConfigTest, BadValuesNameTheKey) {
  EXPECT_THAT(Error("  policy: lru\n"), AllOf(HasSubstr(At(4)), HasSubstr("token_eviction.policy"),
                                              HasSubstr("sliding_window")));
  EXPECT_THAT(Error("  recent_window: -2\n"),
              AllOf(HasSubstr(At(4)), HasSubstr("token_eviction.recent_window")));
  EXPECT_THAT(Error("  sink_tokens: -1\n"), HasSubstr("token_eviction.sink_tokens"));
  EXPECT_THAT(Error("  min_budget_tokens: 0\n"), HasSubstr("token_eviction.min_budget_tokens"));
  EXPECT_THAT(Error("  granularity: token\n"),
              AllOf(HasSubstr(At(4)), HasSubstr("token_eviction.granularity"), HasSubstr("head")));
  EXPECT_THAT(Error("  score_normalization: mean\n"),
              AllOf(HasSubstr("token_eviction.score_normalization"), HasSubstr("age")));
}

TEST_F(TokenEvictionConfigTest, GranularityAndNormalizationDefaultToPerHeadAndAge) {
  absl::StatusOr<ServerConfig> c = Load("  policy: h2o\n  budget_tokens: 128\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->engine.token_eviction.options.granularity, engine::TokenEvictionGranularity::kHead);
  EXPECT_EQ(c->engine.token_eviction.options.score_normalization,
            engine::TokenScoreNormalization::kAge);
  c = Load("  granularity: sequence\n  score_normalization: none\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->engine.token_eviction.options.granularity,
            engine::TokenEvictionGranularity::kSequence);
  EXPECT_EQ(c->engine.token_eviction.options.score_normalization,
            engine::TokenScoreNormalization::kNone);
}

TEST_F(TokenEvictionConfigTest, CrossKeyChecksNameTheKeyAtFault) {
  EXPECT_THAT(Error("  policy: sliding_window\n"),
              AllOf(HasSubstr("token_eviction.budget_tokens"),
                    HasSubstr("must be set (> 0) when token_eviction.policy is sliding_window")));
  EXPECT_THAT(Error("  min_budget_tokens: 64\n  max_budget_tokens: 32\n"),
              HasSubstr("token_eviction.min_budget_tokens"));
  EXPECT_THAT(Error("  policy: h2o\n  budget_tokens: 8\n"),
              AllOf(HasSubstr("token_eviction.budget_tokens"), HasSubstr("(8)"),
                    HasSubstr("min_budget_tokens (16)")));
  EXPECT_THAT(
      Error("  policy: sliding_window\n  budget_tokens: 20\n  sink_tokens: 10\n"
            "  slack_tokens: 9\n"),
      AllOf(HasSubstr("token_eviction.budget_tokens"), HasSubstr("(20)"), HasSubstr("+ 1 (20)")));
}

}  // namespace
}  // namespace kvserve::server
