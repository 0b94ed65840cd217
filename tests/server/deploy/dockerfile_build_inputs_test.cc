// The Dockerfile's build stages copy everything the build reads. The CMake files are read as
// CMake would for the image's configuration (tests, benchmarks, fuzzing and sanitizers off; CUDA
// off for `build`, on for `build-cuda`): every include() (OPTIONAL ones too) and
// add_subdirectory() target, every file or folder named in the CMake code, every file(GLOB)
// folder, and every repository script a RUN of the stage executes must have been COPYed into the
// stage (at the same path under WORKDIR) before the RUN that needs it, and must not be excluded
// by .dockerignore.
#include <fnmatch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/server/grpc/server_process.h"

namespace kvserve::server::testing {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---- CMake ------------------------------------------------------------------------------------

// One CMake command: its name (lower case) and its arguments (quotes removed).
struct Command {
  std::string name;
  std::vector<std::string> args;
};

// The commands of a CMake file (comments dropped; nested parentheses kept inside arguments).
std::vector<Command> ParseCMake(const std::string& text) {
  std::vector<Command> out;
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    if (text[i] == '#') {
      while (i < n && text[i] != '\n') ++i;
      continue;
    }
    if (!(std::isalpha(static_cast<unsigned char>(text[i])) || text[i] == '_')) {
      ++i;
      continue;
    }
    size_t start = i;
    while (i < n && (std::isalnum(static_cast<unsigned char>(text[i])) || text[i] == '_')) ++i;
    Command cmd;
    cmd.name = absl::AsciiStrToLower(text.substr(start, i - start));
    while (i < n && (text[i] == ' ' || text[i] == '\t')) ++i;
    if (i >= n || text[i] != '(') continue;
    ++i;
    int depth = 1;
    std::string arg;
    auto flush = [&] {
      if (!arg.empty()) cmd.args.push_back(arg);
      arg.clear();
    };
    while (i < n && depth > 0) {
      const char c = text[i];
      if (c == '"') {
        ++i;
        while (i < n && text[i] != '"') {
          if (text[i] == '\\' && i + 1 < n) arg += text[i++];
          arg += text[i++];
        }
        ++i;
        continue;
      }
      if (c == '#') {
        while (i < n && text[i] != '\n') ++i;
        continue;
      }
      if (c == '(') {
        ++depth;
      } else if (c == ')') {
        if (--depth == 0) break;
      }
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        flush();
      } else {
        arg += c;
      }
      ++i;
    }
    flush();
    ++i;
    out.push_back(std::move(cmd));
  }
  return out;
}

// The values of the cache variables in the image's configuration (scripts/build.sh -D flags and
// the defaults the Dockerfile relies on). Conditions on anything else are taken both ways.
using Options = std::map<std::string, std::string>;

bool Truthy(const std::string& v) {
  const std::string u = absl::AsciiStrToUpper(v);
  return !(u.empty() || u == "OFF" || u == "0" || u == "FALSE" || u == "NO" || u == "N" ||
           u == "IGNORE" || u == "NOTFOUND" || absl::EndsWith(u, "-NOTFOUND"));
}

// true/false when the condition is decided by `options`, nullopt when unknown.
std::optional<bool> Evaluate(const std::vector<std::string>& args, const Options& options) {
  if (args.size() == 1 && options.contains(args[0])) return Truthy(options.at(args[0]));
  if (args.size() == 2 && args[0] == "NOT" && options.contains(args[1])) {
    return !Truthy(options.at(args[1]));
  }
  if (args.size() == 3 && args[1] == "STREQUAL" && options.contains(args[0])) {
    return options.at(args[0]) == args[2];
  }
  return std::nullopt;
}

struct CMakeInputs {
  std::set<std::string> paths;   // repository paths the configure step reads
  std::vector<std::string> log;  // where each came from (for failure messages)
};

void CollectCMakeInputs(const fs::path& root, const fs::path& file, const Options& options,
                        CMakeInputs& out);

std::string Relative(const fs::path& root, const fs::path& p) {
  return p.lexically_normal().lexically_relative(root).generic_string();
}

void AddInput(const fs::path& root, const fs::path& p, const std::string& why, CMakeInputs& out) {
  const std::string rel = Relative(root, p);
  // The repository itself (include directories) or outside it (../shared).
  if (rel.empty() || rel == "." || absl::StartsWith(rel, "..")) return;
  if (out.paths.insert(rel).second) out.log.push_back(rel + " (" + why + ")");
}

void CollectCMakeInputs(const fs::path& root, const fs::path& file, const Options& options,
                        CMakeInputs& out) {
  AddInput(root, file, "read by CMake", out);
  const fs::path dir = file.parent_path();
  const std::string where = Relative(root, file);
  // Active branches: a stack of (this branch taken?, some earlier branch of this if taken?).
  struct Frame {
    bool active;
    bool decided_taken;
    bool parent_active;
  };
  std::vector<Frame> stack;
  auto active = [&] { return stack.empty() || stack.back().active; };
  auto expand = [&](std::string s) {
    return absl::StrReplaceAll(s, {{"${CMAKE_CURRENT_SOURCE_DIR}", dir.string()},
                                   {"${CMAKE_CURRENT_LIST_DIR}", dir.string()},
                                   {"${PROJECT_SOURCE_DIR}", root.string()},
                                   {"${CMAKE_SOURCE_DIR}", root.string()}});
  };
  for (const Command& cmd : ParseCMake(ReadFile(file))) {
    if (cmd.name == "if") {
      const bool parent = active();
      const std::optional<bool> v = Evaluate(cmd.args, options);
      stack.push_back({parent && v.value_or(true), v.value_or(false), parent});
      continue;
    }
    if (cmd.name == "elseif" || cmd.name == "else") {
      if (stack.empty()) continue;
      Frame& f = stack.back();
      if (f.decided_taken) {
        f.active = false;
        continue;
      }
      const std::optional<bool> v =
          cmd.name == "else" ? std::optional<bool>(true) : Evaluate(cmd.args, options);
      f.active = f.parent_active && v.value_or(true);
      f.decided_taken = v.value_or(false);
      continue;
    }
    if (cmd.name == "endif") {
      if (!stack.empty()) stack.pop_back();
      continue;
    }
    if (!active()) continue;
    if (cmd.name == "include" && !cmd.args.empty()) {
      const std::string target = expand(cmd.args[0]);
      // CMake's own modules (CheckLanguage, GoogleTest) have no path and no .cmake suffix.
      if (target.find('/') == std::string::npos && !absl::EndsWith(target, ".cmake")) continue;
      const fs::path p = fs::path(target).is_absolute() ? fs::path(target) : root / target;
      AddInput(root, p, "include() in " + where, out);
      if (fs::is_regular_file(p)) CollectCMakeInputs(root, p, options, out);
      continue;
    }
    if (cmd.name == "add_subdirectory" && !cmd.args.empty()) {
      const fs::path sub = dir / expand(cmd.args[0]);
      AddInput(root, sub / "CMakeLists.txt", "add_subdirectory() in " + where, out);
      if (fs::is_regular_file(sub / "CMakeLists.txt")) {
        CollectCMakeInputs(root, sub / "CMakeLists.txt", options, out);
      }
      continue;
    }
    if (cmd.name == "file" && !cmd.args.empty() && absl::StartsWith(cmd.args[0], "GLOB")) {
      // file(GLOB[_RECURSE] VAR [options] patterns...): the folder of each pattern.
      for (size_t a = 2; a < cmd.args.size(); ++a) {
        const std::string pattern = expand(cmd.args[a]);
        if (pattern.find('*') == std::string::npos) continue;
        const fs::path p = fs::path(pattern).is_absolute() ? fs::path(pattern) : dir / pattern;
        AddInput(root, p.parent_path(), "file(GLOB) in " + where, out);
      }
      continue;
    }
    // Any other argument naming a file or folder of the repository (sources, scripts).
    for (const std::string& arg : cmd.args) {
      const std::string e = expand(arg);
      if (e.empty() || e.find("${") != std::string::npos || e.find('$') != std::string::npos) {
        continue;
      }
      if (e.find('/') == std::string::npos && e.find('.') == std::string::npos) continue;
      const fs::path p = fs::path(e).is_absolute() ? fs::path(e) : dir / e;
      if (fs::exists(p)) AddInput(root, p, cmd.name + "() in " + where, out);
    }
  }
}

// ---- Dockerfile -------------------------------------------------------------------------------

struct Stage {
  std::string name;
  std::string from;
  // Logical lines (continuations joined), comments dropped.
  std::vector<std::string> lines;
};

std::vector<Stage> ParseStages(const std::string& text) {
  std::vector<Stage> stages;
  const std::string joined = absl::StrReplaceAll(text, {{"\\\n", " "}});
  for (absl::string_view raw : absl::StrSplit(joined, '\n')) {
    const absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (line.empty() || line[0] == '#') continue;
    if (absl::StartsWith(line, "FROM ")) {
      std::vector<std::string> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
      Stage s;
      s.from = w.size() > 1 ? w[1] : "";
      s.name = w.size() > 3 && absl::AsciiStrToUpper(w[2]) == "AS" ? w[3] : "";
      stages.push_back(s);
      continue;
    }
    if (!stages.empty()) stages.back().lines.emplace_back(line);
  }
  return stages;
}

// .dockerignore patterns (negations are not used by this project).
std::vector<std::string> DockerIgnore(const fs::path& root) {
  std::vector<std::string> patterns;
  if (!fs::exists(root / ".dockerignore")) return patterns;
  for (absl::string_view line : absl::StrSplit(ReadFile(root / ".dockerignore"), '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    patterns.emplace_back(absl::StripPrefix(line, "/"));
  }
  return patterns;
}

// Whether `rel` or a folder above it matches an ignore pattern.
bool Ignored(const std::vector<std::string>& patterns, const std::string& rel) {
  std::string prefix;
  for (absl::string_view part : absl::StrSplit(rel, '/')) {
    prefix = prefix.empty() ? std::string(part) : absl::StrCat(prefix, "/", part);
    for (const std::string& p : patterns) {
      std::string pat = p;
      if (absl::StartsWith(pat, "**/")) {
        // Any depth: match the last component too.
        if (fnmatch(pat.substr(3).c_str(), std::string(part).c_str(), 0) == 0) return true;
      }
      if (fnmatch(pat.c_str(), prefix.c_str(), FNM_PATHNAME) == 0) return true;
    }
  }
  return false;
}

// Whether a path copied as `copied` (a file or folder) provides `needed`.
bool Provides(const std::set<std::string>& copied, const std::string& needed) {
  for (const std::string& c : copied) {
    if (needed == c || absl::StartsWith(needed, c + "/")) return true;
  }
  return false;
}

struct StageCheck {
  std::vector<std::string> missing;  // problems, each naming the path and why it is needed
};

// Checks the build stages of `dockerfile` (its text) against the repository at `root`.
// `stage_options`: stage name -> the CMake options of the build that stage runs.
std::vector<std::string> MissingBuildInputs(const fs::path& root, const std::string& dockerfile,
                                            const std::map<std::string, Options>& stage_options) {
  std::vector<std::string> problems;
  const std::vector<std::string> ignore = DockerIgnore(root);
  std::map<std::string, std::set<std::string>> copied_by_stage;
  std::map<std::string, std::string> workdir_of_stage;
  std::set<std::string> seen_stages;
  for (const Stage& stage : ParseStages(dockerfile)) {
    seen_stages.insert(stage.name);
    std::set<std::string> copied;
    std::string workdir = "/";
    if (copied_by_stage.contains(stage.from)) {
      copied = copied_by_stage[stage.from];
      workdir = workdir_of_stage[stage.from];
    }
    for (const std::string& line : stage.lines) {
      std::vector<std::string> w = absl::StrSplit(line, ' ', absl::SkipEmpty());
      const std::string instr = absl::AsciiStrToUpper(w[0]);
      if (instr == "WORKDIR" && w.size() > 1) {
        workdir = w[1];
        continue;
      }
      if (instr == "COPY" || instr == "ADD") {
        std::vector<std::string> args;
        bool from_other = false;
        for (size_t k = 1; k < w.size(); ++k) {
          if (absl::StartsWith(w[k], "--from=")) from_other = true;
          if (!absl::StartsWith(w[k], "--")) args.push_back(w[k]);
        }
        if (from_other || args.size() < 2) continue;
        const std::string dest = args.back();
        for (size_t k = 0; k + 1 < args.size(); ++k) {
          const std::string src = fs::path(args[k]).lexically_normal().generic_string();
          // Where it lands, relative to the build's source folder (WORKDIR).
          fs::path to = fs::path(dest).is_absolute() ? fs::path(dest) : fs::path(workdir) / dest;
          if (absl::EndsWith(dest, "/") || dest == "." || dest == "./") {
            to /= fs::path(src).filename();
          }
          const std::string landed =
              to.lexically_normal().lexically_relative(workdir).generic_string();
          if (landed != src) continue;  // not at its repository path (e.g. /tmp/install-deps.sh)
          copied.insert(src);
        }
        continue;
      }
      if (instr != "RUN") continue;
      // Repository files the command runs (scripts/...), relative to WORKDIR.
      std::vector<std::string> needed;
      for (size_t k = 1; k < w.size(); ++k) {
        std::string tok(absl::StripSuffix(absl::StripPrefix(w[k], "\""), "\""));
        if (tok.find('/') == std::string::npos || absl::StartsWith(tok, "/") ||
            absl::StartsWith(tok, "-")) {
          continue;
        }
        if (fs::is_regular_file(root / tok)) needed.push_back(tok);
      }
      // A RUN that runs the CMake build needs every input of its configuration.
      const bool builds = absl::StrContains(line, "scripts/build.sh");
      std::vector<std::string> why(needed.size(), "run by a RUN of stage " + stage.name);
      if (builds) {
        auto it = stage_options.find(stage.name);
        if (it == stage_options.end()) {
          problems.push_back("stage " + stage.name +
                             " runs scripts/build.sh: no CMake options "
                             "known for it (add them to the test)");
        } else {
          CMakeInputs inputs;
          CollectCMakeInputs(root, root / "CMakeLists.txt", it->second, inputs);
          for (const std::string& entry : inputs.log) {
            const size_t sp = entry.find(' ');
            needed.push_back(entry.substr(0, sp));
            why.push_back(entry.substr(sp + 1));
          }
        }
      }
      for (size_t k = 0; k < needed.size(); ++k) {
        if (!Provides(copied, needed[k])) {
          problems.push_back(absl::StrCat(needed[k], " ", why[k], " is not COPYed into stage ",
                                          stage.name, " before: ", line.substr(0, 80)));
        } else if (Ignored(ignore, needed[k])) {
          problems.push_back(absl::StrCat(needed[k], " ", why[k], " is excluded by .dockerignore"));
        }
      }
    }
    copied_by_stage[stage.name] = copied;
    workdir_of_stage[stage.name] = workdir;
  }
  for (const auto& [name, options] : stage_options) {
    if (!seen_stages.contains(name)) problems.push_back("no stage " + name + " in the Dockerfile");
  }
  return problems;
}

// The CMake configuration each build stage uses (its scripts/build.sh -D flags).
std::map<std::string, Options> ImageStages() {
  const Options common = {{"KVSERVE_BUILD_TESTS", "OFF"}, {"KVSERVE_BUILD_BENCH", "OFF"},
                          {"KVSERVE_FUZZ", "OFF"},        {"KVSERVE_SANITIZE", ""},
                          {"KVSERVE_NATIVE", "OFF"},      {"KVSERVE_SANITIZER_FLAGS", ""}};
  Options cpu = common;
  cpu["KVSERVE_CUDA"] = "OFF";
  cpu["KVSERVE_HAVE_CUDA"] = "OFF";
  Options cuda = common;
  cuda["KVSERVE_CUDA"] = "ON";
  cuda["KVSERVE_HAVE_CUDA"] = "ON";
  return {{"build", cpu}, {"build-cuda", cuda}};
}

TEST(DockerfileBuildInputsTest, BuildStagesCopyEverythingTheBuildReads) {
  const fs::path root = SourceDir();
  const std::string dockerfile = ReadFile(root / "Dockerfile");
  // The build stages pass the options assumed above.
  EXPECT_TRUE(absl::StrContains(dockerfile, "-DKVSERVE_BUILD_TESTS=OFF -DKVSERVE_BUILD_BENCH=OFF"));
  EXPECT_TRUE(absl::StrContains(dockerfile, "-DKVSERVE_CUDA=OFF"));
  EXPECT_TRUE(absl::StrContains(dockerfile, "-DKVSERVE_CUDA=ON"));
  const std::vector<std::string> problems = MissingBuildInputs(root, dockerfile, ImageStages());
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");
}

// The inputs found include the ones that matter, so the check above is not vacuous.
TEST(DockerfileBuildInputsTest, FindsTheIncludedAndGlobbedInputs) {
  const fs::path root = SourceDir();
  CMakeInputs cpu;
  CollectCMakeInputs(root, root / "CMakeLists.txt", ImageStages()["build"], cpu);
  for (const char* p :
       {"CMakeLists.txt", "cmake/sanitizers.cmake", "proto/CMakeLists.txt", "proto/kvserve/v1",
        "kernels", "kernels/cpu", "engine", "server", "tools", "tools/kvserve_main.cc"}) {
    EXPECT_TRUE(cpu.paths.contains(p)) << p << " not found among: " << absl::StrJoin(cpu.log, ", ");
  }
  // Tests, benchmarks, the TSan helper and the CUDA kernels are not read by this configuration.
  for (const char* p : {"tests/CMakeLists.txt", "bench/CMakeLists.txt",
                        "tests/sanitizers/tsan_absl_sync.cc", "kernels/cuda/cuda.cmake"}) {
    EXPECT_FALSE(cpu.paths.contains(p)) << p;
  }
  CMakeInputs cuda;
  CollectCMakeInputs(root, root / "CMakeLists.txt", ImageStages()["build-cuda"], cuda);
  EXPECT_TRUE(cuda.paths.contains("kernels/cuda/cuda.cmake"));  // include(... OPTIONAL)
}

// Removing any one COPY the build needs is reported, naming the path (cmake/ was once missing).
TEST(DockerfileBuildInputsTest, ReportsEachMissingCopy) {
  const fs::path root = SourceDir();
  const std::string dockerfile = ReadFile(root / "Dockerfile");
  for (const char* copy : {"COPY cmake cmake\n", "COPY proto proto\n", "COPY kernels kernels\n",
                           "COPY engine engine\n", "COPY server server\n", "COPY tools tools\n",
                           "COPY scripts scripts\n", "COPY CMakeLists.txt ./\n",
                           "COPY scripts/install-deps.sh scripts/install-deps.sh\n"}) {
    ASSERT_TRUE(absl::StrContains(dockerfile, copy)) << copy;
    const std::string broken = absl::StrReplaceAll(dockerfile, {{copy, "\n"}});
    const std::vector<std::string> problems = MissingBuildInputs(root, broken, ImageStages());
    const std::string path = std::vector<std::string>(absl::StrSplit(copy, ' '))[1];
    bool named = false;
    for (const std::string& p : problems) named |= absl::StartsWith(p, path);
    EXPECT_TRUE(named) << "without `" << absl::StripSuffix(copy, "\n") << "` nothing names " << path
                       << ": " << absl::StrJoin(problems, "\n");
  }
}

TEST(DockerfileBuildInputsTest, DockerIgnoreKeepsTheBuildInputs) {
  const std::vector<std::string> ignore = DockerIgnore(SourceDir());
  ASSERT_FALSE(ignore.empty()) << "no .dockerignore";
  EXPECT_TRUE(Ignored(ignore, ".git"));
  EXPECT_TRUE(Ignored(ignore, "build/kvserve"));
  EXPECT_TRUE(Ignored(ignore, "build-asan/CMakeCache.txt"));
  EXPECT_FALSE(Ignored(ignore, "cmake/sanitizers.cmake"));
  EXPECT_FALSE(Ignored(ignore, "tools/kvserve_main.cc"));
  EXPECT_FALSE(Ignored(ignore, "configs/server.yaml"));
}

}  // namespace
}  // namespace kvserve::server::testing
