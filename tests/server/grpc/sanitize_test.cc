#include "server/grpc/sanitize.h"

#include "gtest/gtest.h"

namespace kvserve::server {
namespace {

TEST(SanitizeForLogTest, PrintableTextIsKeptUtf8Included) {
  EXPECT_EQ(SanitizeForLog("sliding_window"), "sliding_window");
  EXPECT_EQ(SanitizeForLog("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 'x' \"y\""),
            "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 'x' \"y\"");
}

TEST(SanitizeForLogTest, ControlsAndEscapesAreEscaped) {
  EXPECT_EQ(SanitizeForLog("a\n[fake] b\r\tc"), "a\\n[fake] b\\r\\tc");
  EXPECT_EQ(SanitizeForLog("\x1b[31mred\x1b]0;title\x07"), "\\x1b[31mred\\x1b]0;title\\x07");
  EXPECT_EQ(SanitizeForLog(std::string("nul\0del\x7f", 8)), "nul\\x00del\\x7f");
  EXPECT_EQ(SanitizeForLog("back\\slash"), "back\\\\slash");
}

TEST(SanitizeForLogTest, InvalidUtf8AndInvisibleControlsAreEscaped) {
  EXPECT_EQ(SanitizeForLog("\xFF\xC3"), "\\xff\\xc3");
  EXPECT_EQ(SanitizeForLog("\xC0\xAF"), "\\xc0\\xaf");  // overlong '/'
  EXPECT_EQ(SanitizeForLog("\xC2\x9B"
                           "2J"),
            "\\u{009B}2J");  // C1 CSI
  EXPECT_EQ(SanitizeForLog("a\xE2\x80\xAE"
                           "b"),
            "a\\u{202E}b");                                // right-to-left override
  EXPECT_EQ(SanitizeForLog("\xE2\x80\xA8"), "\\u{2028}");  // line separator
}

}  // namespace
}  // namespace kvserve::server
