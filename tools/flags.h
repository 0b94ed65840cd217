// A small command-line flag parser for the kvserve subcommands.
//
// Accepts `--name value`, `--name=value` and boolean `--name`. Every flag must be declared; an
// unknown flag, a missing value or a value of the wrong type is an InvalidArgument error naming
// the flag, which the caller turns into usage + exit code 2.
#ifndef KVSERVE_TOOLS_FLAGS_H_
#define KVSERVE_TOOLS_FLAGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvserve::tools {

class FlagSet {
 public:
  explicit FlagSet(std::string command) : command_(std::move(command)) {}

  // Declarations. `help` is printed by Usage().
  void String(const std::string& name, std::string default_value, std::string help);
  void Int(const std::string& name, int64_t default_value, std::string help);
  void Float(const std::string& name, double default_value, std::string help);
  void Bool(const std::string& name, std::string help);      // false unless given
  void Repeated(const std::string& name, std::string help);  // may be given several times
  void Required(const std::string& name);

  // Parses argv (without the program and command words). Positional arguments are refused.
  absl::Status Parse(const std::vector<std::string>& args);

  std::string GetString(const std::string& name) const;
  int64_t GetInt(const std::string& name) const;
  double GetFloat(const std::string& name) const;
  bool GetBool(const std::string& name) const;
  std::vector<std::string> GetRepeated(const std::string& name) const;
  bool IsSet(const std::string& name) const;

  std::string Usage() const;
  // True when --help was given (Parse then skips the required-flag check).
  bool help_requested() const { return help_; }

 private:
  enum class Kind { kString, kInt, kFloat, kBool, kRepeated };
  struct Flag {
    Kind kind;
    std::string value;
    std::vector<std::string> values;
    std::string help;
    bool required = false;
    bool set = false;
  };
  absl::Status SetValue(const std::string& name, Flag& flag, const std::string& value);

  std::string command_;
  std::map<std::string, Flag> flags_;
  std::vector<std::string> order_;
  bool help_ = false;
};

}  // namespace kvserve::tools

#endif  // KVSERVE_TOOLS_FLAGS_H_
