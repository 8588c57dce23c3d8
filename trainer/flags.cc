#include "trainer/flags.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/check.h"

namespace sy {

FlagSet::FlagSet(std::string command, std::string synopsis, std::string description)
    : command_(std::move(command)),
      synopsis_(std::move(synopsis)),
      description_(std::move(description)) {}

void FlagSet::add(Flag flag) {
  SY_CHECK(find(flag.name) == nullptr && flag.name != "help" && flag.name != "h")
      << command_ << ": flag --" << flag.name << " declared twice or reserved";
  SY_CHECK(flag.target != nullptr) << command_ << ": flag --" << flag.name << " has no target";
  flags_.push_back(std::move(flag));
}

void FlagSet::add_string(std::string name, std::string value_name, std::string* target,
                         std::string help) {
  add({std::move(name), std::move(value_name), std::move(help), Kind::kString, target});
}

void FlagSet::add_strings(std::string name, std::string value_name,
                          std::vector<std::string>* target, std::string help) {
  add({std::move(name), std::move(value_name), std::move(help), Kind::kStrings, target});
}

void FlagSet::add_int(std::string name, std::string value_name, int64_t* target, std::string help) {
  add({std::move(name), std::move(value_name), std::move(help), Kind::kInt, target});
}

void FlagSet::add_bool(std::string name, bool* target, std::string help) {
  add({std::move(name), "", std::move(help), Kind::kBool, target});
}

FlagSet::Flag* FlagSet::find(absl::string_view name) {
  auto it = std::find_if(flags_.begin(), flags_.end(),
                         [&](const Flag& flag) { return flag.name == name; });
  return it == flags_.end() ? nullptr : &*it;
}

bool FlagSet::was_given(absl::string_view name) const {
  return std::any_of(flags_.begin(), flags_.end(),
                     [&](const Flag& flag) { return flag.name == name && flag.given; });
}

absl::Status FlagSet::require(absl::string_view name) const {
  if (was_given(name)) return absl::OkStatus();
  auto it = std::find_if(flags_.begin(), flags_.end(),
                         [&](const Flag& flag) { return flag.name == name; });
  SY_CHECK(it != flags_.end()) << command_ << ": require() of undeclared flag --" << name;
  return usage_error(absl::StrCat("--", name, " ", it->value_name, " is required"));
}

std::string FlagSet::known_flags() const {
  std::vector<std::string> names;
  for (const Flag& flag : flags_) {
    std::string text = absl::StrCat("--", flag.name);
    if (flag.kind != Kind::kBool) absl::StrAppend(&text, " ", flag.value_name);
    if (flag.kind == Kind::kStrings) absl::StrAppend(&text, " (repeatable)");
    names.push_back(std::move(text));
  }
  names.push_back("--help");
  return absl::StrJoin(names, ", ");
}

absl::Status FlagSet::usage_error(absl::string_view what) const {
  return absl::InvalidArgumentError(absl::StrCat(
      command_, ": ", what, "; known flags: ", known_flags(), " (see '", command_, " --help')"));
}

absl::Status FlagSet::set_value(Flag& flag, absl::string_view value) {
  switch (flag.kind) {
    case Kind::kString:
      *static_cast<std::string*>(flag.target) = std::string(value);
      break;
    case Kind::kStrings:
      static_cast<std::vector<std::string>*>(flag.target)->emplace_back(value);
      break;
    case Kind::kInt:
      if (!absl::SimpleAtoi(value, static_cast<int64_t*>(flag.target))) {
        return usage_error(
            absl::StrCat("flag --", flag.name, " expects an integer, got '", value, "'"));
      }
      break;
    case Kind::kBool:
      if (!absl::SimpleAtob(value, static_cast<bool*>(flag.target))) {
        return usage_error(
            absl::StrCat("flag --", flag.name, " expects true or false, got '", value, "'"));
      }
      break;
  }
  return absl::OkStatus();
}

absl::Status FlagSet::parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    absl::string_view arg = args[i];
    if (arg == "--help" || arg == "-h") {
      help_requested_ = true;
      return absl::OkStatus();
    }
    if (!absl::StartsWith(arg, "--") || arg == "--") {
      return usage_error(absl::StrCat("unexpected argument '", arg,
                                      "'; this subcommand takes "
                                      "only flags"));
    }
    absl::string_view body = arg.substr(2);
    size_t equals = body.find('=');
    absl::string_view name = body.substr(0, equals);
    Flag* flag = find(name);
    if (flag == nullptr) return usage_error(absl::StrCat("unknown flag --", name));
    if (flag->given && flag->kind != Kind::kStrings) {
      return usage_error(absl::StrCat("flag --", name, " given more than once; give it once"));
    }
    flag->given = true;

    if (equals != absl::string_view::npos) {
      SY_RETURN_IF_ERROR(set_value(*flag, body.substr(equals + 1)));
    } else if (flag->kind == Kind::kBool) {
      *static_cast<bool*>(flag->target) = true;
    } else {
      // A value that looks like a flag is almost always a forgotten value ("--config --set
      // x"); a value that really starts with "--" can still be passed as --name=--value.
      if (i + 1 == args.size() || absl::StartsWith(args[i + 1], "--")) {
        return usage_error(absl::StrCat("flag --", name, " needs a value: --", name, " ",
                                        flag->value_name, " or --", name, "=", flag->value_name));
      }
      SY_RETURN_IF_ERROR(set_value(*flag, args[++i]));
    }
  }
  return absl::OkStatus();
}

std::string FlagSet::help() const {
  std::string text =
      absl::StrCat("usage: ", command_, " ", synopsis_, "\n\n", description_, "\n\nflags:\n");
  std::vector<std::pair<std::string, std::string>> rows;
  for (const Flag& flag : flags_) {
    std::string left = absl::StrCat("--", flag.name);
    if (flag.kind != Kind::kBool) absl::StrAppend(&left, " ", flag.value_name);
    rows.emplace_back(std::move(left), flag.kind == Kind::kStrings
                                           ? absl::StrCat(flag.help, " (repeatable)")
                                           : flag.help);
  }
  rows.emplace_back("--help", "show this help");
  size_t width = 0;
  for (const auto& row : rows) width = std::max(width, row.first.size());
  for (const auto& [left, right] : rows) {
    absl::StrAppend(&text, "  ", left, std::string(width - left.size() + 3, ' '), right, "\n");
  }
  return text;
}

}  // namespace sy
