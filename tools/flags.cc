#include "tools/flags.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kvserve::tools {

void FlagSet::String(const std::string& name, std::string default_value, std::string help) {
  flags_[name] = Flag{Kind::kString, std::move(default_value), {}, std::move(help)};
  order_.push_back(name);
}
void FlagSet::Int(const std::string& name, int64_t default_value, std::string help) {
  flags_[name] = Flag{Kind::kInt, std::to_string(default_value), {}, std::move(help)};
  order_.push_back(name);
}
void FlagSet::Float(const std::string& name, double default_value, std::string help) {
  flags_[name] = Flag{Kind::kFloat, absl::StrFormat("%g", default_value), {}, std::move(help)};
  order_.push_back(name);
}
void FlagSet::Bool(const std::string& name, std::string help) {
  flags_[name] = Flag{Kind::kBool, "false", {}, std::move(help)};
  order_.push_back(name);
}
void FlagSet::Repeated(const std::string& name, std::string help) {
  flags_[name] = Flag{Kind::kRepeated, "", {}, std::move(help)};
  order_.push_back(name);
}
void FlagSet::Required(const std::string& name) { flags_.at(name).required = true; }

absl::Status FlagSet::SetValue(const std::string& name, Flag& flag, const std::string& value) {
  switch (flag.kind) {
    case Kind::kInt: {
      errno = 0;
      char* end = nullptr;
      std::strtoll(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || errno != 0) {
        return absl::InvalidArgumentError(
            absl::StrFormat("--%s: expected an integer, got '%s'", name, value));
      }
      break;
    }
    case Kind::kFloat: {
      errno = 0;
      char* end = nullptr;
      const double d = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || errno != 0 || !std::isfinite(d)) {
        return absl::InvalidArgumentError(
            absl::StrFormat("--%s: expected a number, got '%s'", name, value));
      }
      break;
    }
    case Kind::kBool:
      if (value != "true" && value != "false" && value != "1" && value != "0") {
        return absl::InvalidArgumentError(
            absl::StrFormat("--%s: expected true or false, got '%s'", name, value));
      }
      break;
    case Kind::kRepeated:
      flag.values.push_back(value);
      flag.set = true;
      return absl::OkStatus();
    case Kind::kString:
      break;
  }
  flag.value =
      (flag.kind == Kind::kBool) ? ((value == "true" || value == "1") ? "true" : "false") : value;
  flag.set = true;
  return absl::OkStatus();
}

absl::Status FlagSet::Parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      help_ = true;
      return absl::OkStatus();
    }
    if (arg.size() < 3 || arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrFormat("unexpected argument '%s'", arg));
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = flags_.find(name);
    if (it == flags_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat("unknown flag --%s", name));
    }
    Flag& flag = it->second;
    if (!has_value) {
      if (flag.kind == Kind::kBool) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrFormat("--%s needs a value", name));
      }
    }
    if (absl::Status s = SetValue(name, flag, value); !s.ok()) return s;
  }
  for (const auto& [name, flag] : flags_) {
    if (flag.required && !flag.set) {
      return absl::InvalidArgumentError(absl::StrFormat("--%s is required", name));
    }
  }
  return absl::OkStatus();
}

std::string FlagSet::GetString(const std::string& name) const { return flags_.at(name).value; }
int64_t FlagSet::GetInt(const std::string& name) const {
  return std::strtoll(flags_.at(name).value.c_str(), nullptr, 10);
}
double FlagSet::GetFloat(const std::string& name) const {
  return std::strtod(flags_.at(name).value.c_str(), nullptr);
}
bool FlagSet::GetBool(const std::string& name) const { return flags_.at(name).value == "true"; }
std::vector<std::string> FlagSet::GetRepeated(const std::string& name) const {
  return flags_.at(name).values;
}
bool FlagSet::IsSet(const std::string& name) const { return flags_.at(name).set; }

std::string FlagSet::Usage() const {
  std::string out = absl::StrCat("usage: kvserve ", command_, " [flags]\n");
  for (const std::string& name : order_) {
    const Flag& f = flags_.at(name);
    std::string left = absl::StrCat("  --", name);
    switch (f.kind) {
      case Kind::kString:
        absl::StrAppend(&left, " STR");
        break;
      case Kind::kInt:
        absl::StrAppend(&left, " N");
        break;
      case Kind::kFloat:
        absl::StrAppend(&left, " X");
        break;
      case Kind::kRepeated:
        absl::StrAppend(&left, " STR (repeatable)");
        break;
      case Kind::kBool:
        break;
    }
    std::string dflt;
    if (f.required) {
      dflt = " (required)";
    } else if (f.kind != Kind::kBool && f.kind != Kind::kRepeated && !f.value.empty()) {
      dflt = absl::StrCat(" (default ", f.value, ")");
    }
    absl::StrAppend(&out, absl::StrFormat("%-30s %s%s\n", left, f.help, dflt));
  }
  return out;
}

}  // namespace kvserve::tools
