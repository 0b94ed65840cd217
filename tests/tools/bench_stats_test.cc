// The serving benchmark's statistics and JSON, against values worked out by hand.
#include "tools/bench_stats.h"

#include "gtest/gtest.h"
#include "tools/bench_json.h"

namespace kvserve::tools {
namespace {

TEST(BenchStatsTest, OneToTen) {
  // mean 55 / 10 = 5.5; ranks q/100 * 9: median 4.5 -> 5.5; p90 8.1 -> 9 + 0.1 = 9.1;
  // p99 8.91 -> 9 + 0.91 = 9.91.
  LatencySummary s = Summarize({10, 9, 8, 7, 6, 5, 4, 3, 2, 1});
  EXPECT_EQ(s.count, 10);
  EXPECT_DOUBLE_EQ(s.mean, 5.5);
  EXPECT_DOUBLE_EQ(s.median, 5.5);
  EXPECT_NEAR(s.p90, 9.1, 1e-12);
  EXPECT_NEAR(s.p99, 9.91, 1e-12);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 10);
}

TEST(BenchStatsTest, FiveUnevenSamples) {
  // sorted 15 20 35 40 50: mean 160 / 5 = 32; ranks q/100 * 4: median 2 -> 35;
  // p90 3.6 -> 40 + 0.6 * 10 = 46; p99 3.96 -> 40 + 0.96 * 10 = 49.6.
  LatencySummary s = Summarize({40, 15, 50, 35, 20});
  EXPECT_DOUBLE_EQ(s.mean, 32);
  EXPECT_DOUBLE_EQ(s.median, 35);
  EXPECT_NEAR(s.p90, 46, 1e-12);
  EXPECT_NEAR(s.p99, 49.6, 1e-12);
}

TEST(BenchStatsTest, EvenCountMedianIsTheMidpoint) {
  LatencySummary s = Summarize({1, 2, 3, 100});
  EXPECT_DOUBLE_EQ(s.median, 2.5);
  EXPECT_DOUBLE_EQ(s.mean, 26.5);
}

TEST(BenchStatsTest, SingleAndEmpty) {
  LatencySummary one = Summarize({7});
  EXPECT_DOUBLE_EQ(one.mean, 7);
  EXPECT_DOUBLE_EQ(one.median, 7);
  EXPECT_DOUBLE_EQ(one.p99, 7);
  LatencySummary none = Summarize({});
  EXPECT_EQ(none.count, 0);
  EXPECT_DOUBLE_EQ(none.p99, 0);
}

TEST(BenchStatsTest, PercentileEnds) {
  const std::vector<double> v = {2, 4, 8};
  EXPECT_DOUBLE_EQ(Percentile(v, 0), 2);
  EXPECT_DOUBLE_EQ(Percentile(v, 100), 8);
  EXPECT_DOUBLE_EQ(Percentile(v, 75), 6);  // rank 1.5
}

TEST(BenchJsonTest, ParsesObjectsArraysAndEscapes) {
  auto v = ParseJson(R"( {"a": [1, 2.5, -3e2], "s": "x\"y\\n\u00e9\ud83d\ude00", "t": true,
                         "n": null, "o": {}} )");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->kind, JsonValue::Kind::kObject);
  const JsonValue& a = v->object.at("a");
  ASSERT_EQ(a.array.size(), 3u);
  EXPECT_DOUBLE_EQ(a.array[1].number, 2.5);
  EXPECT_DOUBLE_EQ(a.array[2].number, -300);
  EXPECT_EQ(v->object.at("s").string, "x\"y\\n\xC3\xA9\xF0\x9F\x98\x80");
  EXPECT_TRUE(v->object.at("t").boolean);
  EXPECT_EQ(v->object.at("n").kind, JsonValue::Kind::kNull);
}

TEST(BenchJsonTest, ErrorsNameTheByteOffset) {
  auto v = ParseJson(R"({"a": 1,})");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("at byte 8"), std::string::npos) << v.status();
  auto w = ParseJson(R"({"a": tru})");
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("at byte 6"), std::string::npos) << w.status();
}

TEST(BenchJsonTest, WriterOutputParsesBack) {
  JsonWriter w;
  w.BeginObject().Key("k").String("a\"b\n").Key("v").BeginArray().Int(1).Number(0.5).Bool(false);
  w.EndArray().Key("nan").Number(std::nan("")).EndObject();
  EXPECT_EQ(w.str(), R"({"k":"a\"b\n","v":[1,0.5,false],"nan":null})");
  auto v = ParseJson(w.str());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->object.at("k").string, "a\"b\n");
}

}  // namespace
}  // namespace kvserve::tools
