#pragma once
// A small command-line parser for one subcommand's flags.
//
// Each subcommand declares its flags with a pointer to where the value goes, then parses the
// arguments that follow its name:
//
//   std::string config;
//   std::vector<std::string> sets;
//   FlagSet flags("switchyard config", "--config FILE [--set TEXT]...", "Prints ...");
//   flags.add_string("config", "FILE", &config, "experiment config");
//   flags.add_strings("set", "TEXT", &sets, "override, repeatable");
//   SY_RETURN_IF_ERROR(flags.parse(args));
//   if (flags.help_requested()) { out << flags.help(); return absl::OkStatus(); }
//
// Accepted forms: `--name value` and `--name=value`; a bool flag is `--name` (true) or
// `--name=true|false`. A singular flag may be given once; a repeated one collects its values in
// order. Mistakes (an unknown flag, a missing or malformed value, a stray argument) come back as
// an absl::Status whose message lists the known flags. Not supported on purpose: short flags
// other than -h, bundling, and positional arguments (no subcommand needs them yet).
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace sy {

class FlagSet {
 public:
  // `command` names the subcommand in messages ("switchyard config"); `synopsis` follows it on
  // the usage line ("--config FILE [--set TEXT]..."); `description` is a paragraph for --help.
  FlagSet(std::string command, std::string synopsis, std::string description);

  // `value_name` is the placeholder shown in help ("FILE", "N"). Targets keep their current
  // value when the flag is not given, so initialise them with the default.
  void add_string(std::string name, std::string value_name, std::string* target, std::string help);
  void add_strings(std::string name, std::string value_name, std::vector<std::string>* target,
                   std::string help);
  void add_int(std::string name, std::string value_name, int64_t* target, std::string help);
  void add_bool(std::string name, bool* target, std::string help);

  // Parses the arguments after the subcommand name into the targets. Stops at --help or -h,
  // after which help_requested() is true.
  absl::Status parse(const std::vector<std::string>& args);

  bool help_requested() const { return help_requested_; }
  // Whether flag `name` appeared on the command line.
  bool was_given(absl::string_view name) const;
  // An error naming the flag when it was not given.
  absl::Status require(absl::string_view name) const;

  // The --help text: usage line, description, one line per flag.
  std::string help() const;

 private:
  enum class Kind { kString, kStrings, kInt, kBool };
  struct Flag {
    std::string name;
    std::string value_name;
    std::string help;
    Kind kind;
    void* target;
    bool given = false;
  };

  void add(Flag flag);
  Flag* find(absl::string_view name);
  absl::Status set_value(Flag& flag, absl::string_view value);
  // "--config FILE, --set TEXT (repeatable), --help" for error messages.
  std::string known_flags() const;
  absl::Status usage_error(absl::string_view what) const;

  std::string command_;
  std::string synopsis_;
  std::string description_;
  std::vector<Flag> flags_;
  bool help_requested_ = false;
};

}  // namespace sy
