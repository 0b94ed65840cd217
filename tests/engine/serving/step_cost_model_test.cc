// The step cost model against steps whose cost follows a known linear law: the fitted model must
// recover the law (worked out by hand below) and predict unseen shapes with it.
#include "engine/serving/step_cost_model.h"

#include <cmath>

#include "gtest/gtest.h"

namespace kvserve::engine {
namespace {

// 2 ms fixed, 1.5 ms per decode token, 0.25 ms per prefill token, 0.5 ms per 1,024 slots a
// prefill attends to; decode context free.
double LawMs(const StepShape& s) {
  return 2.0 + 1.5 * s.decode_tokens + 0.25 * s.prefill_tokens + 0.5 * s.prefill_context / 1024.0;
}

StepShape Shape(int decodes, int64_t decode_pos, int64_t prefill_start, int prefill) {
  StepShape s;
  for (int i = 0; i < decodes; ++i) s.AddDecode(decode_pos + i);
  if (prefill > 0) s.AddPrefill(prefill_start, prefill);
  return s;
}

TEST(StepCostModelTest, NothingObservedNothingEstimated) {
  LinearStepCostModel m;
  EXPECT_FALSE(m.Estimate(Shape(4, 10, 0, 0)).has_value());
}

TEST(StepCostModelTest, RecoversALinearLawAndPredictsUnseenShapes) {
  LinearStepCostModel m(0.99);
  for (int i = 0; i < 200; ++i) {
    const StepShape s =
        Shape(1 + i % 32, 50 + i, (i * 37) % 900, (i % 3 == 0) ? 0 : (i * 13) % 300);
    m.Observe(s, absl::Microseconds(std::llround(LawMs(s) * 1000)));
  }
  const auto& c = m.coefficients();
  // In the model's terms: 0.25 ms per token, 1.5 - 0.25 = 1.25 ms more per decode token.
  EXPECT_NEAR(c[0], 2.0, 0.05);
  EXPECT_NEAR(c[1], 0.25, 0.01);
  EXPECT_NEAR(c[2], 1.25, 0.01);
  EXPECT_NEAR(c[3], 0.0, 0.01);
  EXPECT_NEAR(c[4], 0.5, 0.05);
  // 32 decodes and a 512-token chunk from position 1,024: 2 + 48 + 128 + 0.5 * 655,616 / 1,024
  // = 498.125 ms.
  const StepShape unseen = Shape(32, 2000, 1024, 512);
  ASSERT_NEAR(LawMs(unseen), 498.125, 1e-9);
  EXPECT_NEAR(absl::ToDoubleMilliseconds(*m.Estimate(unseen)), 498.125, 2.0);
}

// Costs that fall as work grows (noise) never make a coefficient negative.
TEST(StepCostModelTest, CoefficientsStayNonNegative) {
  LinearStepCostModel m;
  for (int i = 0; i < 50; ++i) {
    const StepShape s = Shape(1 + i % 8, 10, 0, 8 * (i % 5));
    m.Observe(s, absl::Milliseconds(100 - i % 5));  // slightly cheaper with more prefill
  }
  for (double c : m.coefficients()) EXPECT_GE(c, 0.0);
  EXPECT_GT(absl::ToDoubleMilliseconds(*m.Estimate(Shape(4, 10, 0, 16))), 90.0);
}

// The model follows a change of speed (another load on the machine): older steps fade.
TEST(StepCostModelTest, FollowsAChangeOfSpeed) {
  LinearStepCostModel m(0.95);
  for (int i = 0; i < 100; ++i) {
    const StepShape s = Shape(1 + i % 16, 100, 0, (i % 4) * 32);
    m.Observe(s, absl::Microseconds(std::llround(LawMs(s) * 1000)));
  }
  for (int i = 0; i < 200; ++i) {
    const StepShape s = Shape(1 + i % 16, 100, 0, (i % 4) * 32);
    m.Observe(s, absl::Microseconds(std::llround(2 * LawMs(s) * 1000)));
  }
  const StepShape probe = Shape(8, 100, 0, 64);
  EXPECT_NEAR(absl::ToDoubleMilliseconds(*m.Estimate(probe)), 2 * LawMs(probe),
              0.02 * 2 * LawMs(probe));
}

}  // namespace
}  // namespace kvserve::engine
