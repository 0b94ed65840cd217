// The server-sent events parser: events split anywhere across reads, every line ending, comments,
// multi-line data, and the closing "[DONE]" of an OpenAI stream.
#include "tools/sse_parser.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kvserve::tools {
namespace {

std::vector<SseEvent> FeedAll(const std::vector<std::string>& pieces) {
  SseParser parser;
  std::vector<SseEvent> events;
  for (const std::string& p : pieces) parser.Feed(p, &events);
  return events;
}

std::vector<std::string> Data(const std::vector<SseEvent>& events) {
  std::vector<std::string> out;
  out.reserve(events.size());
  for (const SseEvent& e : events) out.push_back(e.data);
  return out;
}

const char kStream[] =
    ": keep-alive\r\n"
    "\r\n"
    "data: {\"choices\":[{\"text\":\"a\"}]}\r\n"
    "\r\n"
    "data: {\"choices\":[{\"text\":\"b\"}]}\n"
    "\n"
    "data: {\"choices\":[],\"usage\":{}}\r"
    "\r"
    "data: [DONE]\r\n"
    "\r\n";

const std::vector<std::string> kExpected = {"{\"choices\":[{\"text\":\"a\"}]}",
                                            "{\"choices\":[{\"text\":\"b\"}]}",
                                            "{\"choices\":[],\"usage\":{}}", "[DONE]"};

TEST(SseParserTest, WholeStreamInOneRead) { EXPECT_EQ(Data(FeedAll({kStream})), kExpected); }

TEST(SseParserTest, EverySplitPointGivesTheSameEvents) {
  const std::string s = kStream;
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    EXPECT_EQ(Data(FeedAll({s.substr(0, cut), s.substr(cut)})), kExpected) << "cut at " << cut;
  }
}

TEST(SseParserTest, OneByteAtATime) {
  std::vector<std::string> bytes;
  for (char c : std::string(kStream)) bytes.emplace_back(1, c);
  EXPECT_EQ(Data(FeedAll(bytes)), kExpected);
}

TEST(SseParserTest, CrLfSplitBetweenReadsIsOneLineEnd) {
  // If the '\n' after a '\r' at the end of a read counted as a blank line, "a" would be an event
  // of its own.
  EXPECT_EQ(Data(FeedAll({"data: a\r", "\ndata: b\r", "\n\r", "\n"})),
            std::vector<std::string>{"a\nb"});
}

TEST(SseParserTest, CommentsAndOtherFieldsAreIgnored) {
  const auto events = FeedAll({": comment\nid: 7\nretry: 100\nfoo: bar\nevent: delta\ndata:x\n\n"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, "delta");
  EXPECT_EQ(events[0].data, "x");  // no space after the colon: nothing to drop
}

TEST(SseParserTest, MultiLineDataAndOnlyOneSpaceDropped) {
  EXPECT_EQ(Data(FeedAll({"data:  two spaces\ndata\ndata: end\n\n"})),
            std::vector<std::string>{" two spaces\n\nend"});
}

TEST(SseParserTest, EventsWithoutDataAreNotDispatched) {
  EXPECT_TRUE(FeedAll({"event: ping\n\n: only a comment\n\n\n\n"}).empty());
  // The type does not leak into the next event.
  const auto events = FeedAll({"event: ping\n\ndata: d\n\n"});
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, "");
}

TEST(SseParserTest, UnfinishedEventIsPendingAndNotDispatched) {
  SseParser parser;
  std::vector<SseEvent> events;
  parser.Feed("data: [DONE]\n", &events);
  EXPECT_TRUE(events.empty());
  EXPECT_TRUE(parser.HasPending());
  parser.Feed("\n", &events);
  EXPECT_EQ(Data(events), std::vector<std::string>{"[DONE]"});
  EXPECT_FALSE(parser.HasPending());
}

TEST(SseParserTest, ByteOrderMarkAtTheStartIsSkipped) {
  EXPECT_EQ(Data(FeedAll({"\xEF\xBB",
                          "\xBF"
                          "data: x\n\n"})),
            std::vector<std::string>{"x"});
  // Anywhere else it is data.
  EXPECT_EQ(Data(FeedAll({"data: \xEF\xBB\xBF\n\n"})), std::vector<std::string>{"\xEF\xBB\xBF"});
}

}  // namespace
}  // namespace kvserve::tools
