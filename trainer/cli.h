#pragma once
// The `switchyard <subcommand> [flags]` command line.
//
// Subcommands live in one table (subcommands() in cli.cc). To add one, say `train`:
//   1. write `absl::Status run_train_command(const std::vector<std::string>& args,
//      std::ostream& out)` in its own trainer/ file, with a FlagSet for its flags (and
//      add_experiment_flags() if it loads a config), printing flags.help() on --help;
//   2. add `{"train", "<one-line summary>", run_train_command}` to the table.
// run_cli() does the rest: dispatch, usage, and turning an error Status into
// `switchyard: error: <message>` on stderr with exit code 1.
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "configs/switchyard.pb.h"
#include "trainer/flags.h"

namespace sy {

struct Subcommand {
  std::string name;
  // One line for the usage listing.
  std::string summary;
  // Gets the arguments after the subcommand name; writes its results to `out`. A user error
  // (bad flag, bad config, missing file) is returned, never thrown or aborted on.
  std::function<absl::Status(const std::vector<std::string>& args, std::ostream& out)> run;
};

// Every subcommand, in the order the usage text lists them.
const std::vector<Subcommand>& subcommands();

// Appends a subcommand implemented above trainer/ (folders import only those to their left,
// so `rl` lives in rl/ and the binary's main() registers it before calling run_cli).
void register_subcommand(Subcommand command);

// The whole program: `args` are argv[1..]. Returns the exit code: 0 on success (and for
// --help), 1 on any error, after printing `switchyard: error: ` before each line of the
// message on `err`.
int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

// How `switchyard config` checks and prints a config that a layer above trainer/ runs (rl/
// registers one for configs that set rl.init_checkpoint: they take their model from that
// run). `claims` sees the config as parsed, before any validation; the first kind that claims
// it prints it, else it is loaded as a training config.
struct ConfigKind {
  std::string name;
  std::function<bool(const switchyard::Experiment& parsed)> claims;
  std::function<absl::StatusOr<std::string>(const std::string& config_path,
                                            const std::vector<std::string>& overrides)>
      resolved_text;
};
void register_config_kind(ConfigKind kind);

// --config FILE and --set TEXT, shared by every subcommand that runs an experiment.
struct ExperimentFlags {
  std::string config_path;
  std::vector<std::string> overrides;
};
void add_experiment_flags(FlagSet& flags, ExperimentFlags* target);
// Requires --config, then load_experiment() with the overrides.
absl::StatusOr<switchyard::Experiment> load_experiment_from_flags(const FlagSet& flags,
                                                                  const ExperimentFlags& values);

}  // namespace sy
