// Differential test: every template in ../shared/chat-templates, rendered on generated
// conversations, must give exactly what Python's jinja2 gives (render_reference.py writes the
// expected renders at test time), and fail where jinja2 fails.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "engine/chat/chat_template.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvserve::engine::chat {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

const fs::path kTemplateDir = fs::path(KVSERVE_SOURCE_DIR) / ".." / "shared" / "chat-templates";

Value FromJson(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null:
      return Value::None();
    case Json::value_t::boolean:
      return Value::Bool(j.get<bool>());
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return Value::Int(j.get<int64_t>());
    case Json::value_t::number_float:
      return Value::Float(j.get<double>());
    case Json::value_t::string:
      return Value::String(j.get<std::string>());
    case Json::value_t::array: {
      ValueList items;
      for (const Json& x : j) items.push_back(FromJson(x));
      return Value::List(std::move(items));
    }
    case Json::value_t::object: {
      Value d = Value::Dict();
      for (auto it = j.begin(); it != j.end(); ++it) d.Set(it.key(), FromJson(it.value()));
      return d;
    }
    default:
      return Value();
  }
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs the reference script; empty when python3-jinja2 is missing.
std::string GenerateReference(int per_template) {
  // Per process: test runs of several checkouts may share the temporary directory.
  const fs::path out = fs::path(testing::TempDir()) /
                       ("chat_template_reference." + std::to_string(getpid()) + ".json");
  const fs::path script =
      fs::path(KVSERVE_SOURCE_DIR) / "tests" / "engine" / "chat" / "render_reference.py";
  const std::string cmd = "/usr/bin/python3 '" + script.string() + "' '" + kTemplateDir.string() +
                          "' '" + out.string() + "' " + std::to_string(per_template);
  const int rc = std::system(cmd.c_str());
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 3) return "";
  EXPECT_EQ(rc, 0) << cmd;
  std::string text = ReadFile(out);
  std::error_code ignored;
  fs::remove(out, ignored);
  return text;
}

TEST(ChatTemplateReferenceTest, MatchesJinja2OnGeneratedConversations) {
  if (!fs::exists(kTemplateDir)) GTEST_SKIP() << "no " << kTemplateDir;
  // KVSERVE_CHAT_REFERENCE_CASES=N renders N conversations per template instead of 40.
  const char* cases_env = std::getenv("KVSERVE_CHAT_REFERENCE_CASES");
  const int per_template = cases_env != nullptr ? std::atoi(cases_env) : 40;
  const std::string reference = GenerateReference(per_template > 0 ? per_template : 40);
  if (reference.empty()) {
    GTEST_SKIP() << "python3-jinja2 is not installed for /usr/bin/python3 "
                    "(scripts/install-deps.sh installs it)";
  }
  const Json cases = Json::parse(reference);
  ASSERT_GE(cases.size(), 8u * 40u);  // every template, at least 40 cases each
  std::map<std::string, ChatTemplate> templates;
  std::map<std::string, int> rendered, rejected;
  for (const Json& c : cases) {
    const std::string name = c["template"].get<std::string>();
    if (!templates.count(name)) {
      absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(ReadFile(kTemplateDir / name));
      ASSERT_TRUE(t.ok()) << name << ": " << t.status();
      templates.emplace(name, std::move(*t));
    }
    RenderOptions options;
    options.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    options.bos_token = c["bos_token"].get<std::string>();
    options.eos_token = c["eos_token"].get<std::string>();
    for (auto it = c["variables"].begin(); it != c["variables"].end(); ++it) {
      options.variables.emplace_back(it.key(), FromJson(it.value()));
    }
    absl::StatusOr<RenderedPrompt> got =
        templates.at(name).RenderValue(FromJson(c["messages"]), options);
    if (c.contains("error")) {
      EXPECT_FALSE(got.ok()) << name << " renders a case jinja2 rejects (" << c["error"]
                             << "): " << c["messages"].dump();
      ++rejected[name];
      continue;
    }
    ASSERT_TRUE(got.ok()) << name << ": " << got.status() << "\nmessages: " << c["messages"].dump()
                          << "\nvariables: " << c["variables"].dump();
    EXPECT_EQ(got->Text(), c["expected"].get<std::string>())
        << name << "\nmessages: " << c["messages"].dump()
        << "\nvariables: " << c["variables"].dump()
        << "\nadd_generation_prompt: " << c["add_generation_prompt"];
    ++rendered[name];
  }
  EXPECT_EQ(templates.size(), 8u);
  for (const auto& [name, t] : templates) EXPECT_GT(rendered[name], 0) << name;
  // Both outcomes are exercised where a template can reject a conversation.
  EXPECT_GT(rejected["google-gemma-2-2b-it.jinja"], 0);
  EXPECT_GT(rendered["google-gemma-2-2b-it.jinja"], 0);
}

}  // namespace
}  // namespace kvserve::engine::chat
