#include "trainer/cli.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "kernels/check.h"
#include "trainer/cli/score.h"
#include "trainer/commands.h"
#include "trainer/config.h"
#include "trainer/dump_step.h"

namespace sy {
namespace {

std::vector<ConfigKind>& config_kinds() {
  static std::vector<ConfigKind> kinds;
  return kinds;
}

// `switchyard config`: shows exactly what a run with these flags would use, defaults spelt out,
// so a config can be checked (and diffed) before spending GPU time on it.
absl::Status run_config_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags("switchyard config", "--config FILE [--set TEXT]...",
                "Loads and validates an experiment config, then prints it fully resolved: every "
                "field,\nwith defaults included, in Protobuf text format. An RL config (one that "
                "sets\nrl.init_checkpoint) is checked as `switchyard rl` checks it and printed "
                "with the model\nof that run.");
  ExperimentFlags experiment_flags;
  add_experiment_flags(flags, &experiment_flags);
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  SY_RETURN_IF_ERROR(flags.require("config"));
  SY_ASSIGN_OR_RETURN(const switchyard::Experiment parsed,
                      parse_experiment(experiment_flags.config_path, experiment_flags.overrides));
  for (const ConfigKind& kind : config_kinds()) {
    if (!kind.claims(parsed)) continue;
    SY_ASSIGN_OR_RETURN(const std::string text, kind.resolved_text(experiment_flags.config_path,
                                                                   experiment_flags.overrides));
    out << text;
    return absl::OkStatus();
  }
  SY_ASSIGN_OR_RETURN(switchyard::Experiment experiment,
                      load_experiment_from_flags(flags, experiment_flags));
  out << resolved_experiment_text(experiment);
  return absl::OkStatus();
}

std::string usage() {
  std::string text = "usage: switchyard <subcommand> [flags]\n\nsubcommands:\n";
  size_t width = 0;
  for (const Subcommand& command : subcommands()) width = std::max(width, command.name.size());
  for (const Subcommand& command : subcommands()) {
    absl::StrAppend(&text, "  ", command.name, std::string(width - command.name.size() + 3, ' '),
                    command.summary, "\n");
  }
  absl::StrAppend(&text, "\nRun 'switchyard <subcommand> --help' for its flags.\n");
  return text;
}

std::string subcommand_names() {
  std::vector<std::string> names;
  for (const Subcommand& command : subcommands()) names.push_back(command.name);
  return absl::StrJoin(names, ", ");
}

// Every line gets the prefix, so multi-line messages (several validation errors, a source
// excerpt with a caret) stay greppable and their columns stay aligned.
void print_error(std::ostream& err, absl::string_view message) {
  for (absl::string_view line : absl::StrSplit(message, '\n')) {
    err << "switchyard: error: " << line << "\n";
  }
}

std::vector<Subcommand>& subcommand_table() {
  static std::vector<Subcommand> table = {
      {"train", "train a model (or --resume a run) from an experiment config", run_train_command},
      {"generate", "continue a prompt with a trained model (--checkpoint RUN_DIR)", run_generate_command},
      {"data", "tokenize text or JSONL files into token shards (--tokenizer DIR)",
       run_data_command},
      {"score", "per-token log-probs of JSONL texts under a run's model", run_score_command},
      {"config", "print the resolved experiment config (defaults included)", run_config_command},
      {"dump-step", "write one step's logits, losses and gradients for bench/oracle.py",
       run_dump_step_command},
  };
  return table;
}

}  // namespace

const std::vector<Subcommand>& subcommands() { return subcommand_table(); }

void register_subcommand(Subcommand command) { subcommand_table().push_back(std::move(command)); }

void register_config_kind(ConfigKind kind) { config_kinds().push_back(std::move(kind)); }

void add_experiment_flags(FlagSet& flags, ExperimentFlags* target) {
  flags.add_string("config", "FILE", &target->config_path,
                   "experiment config in Protobuf text format (required)");
  flags.add_strings("set", "TEXT", &target->overrides,
                    "text-format override, e.g. 'optimizer { lr: 1e-3 }'; later ones win");
}

absl::StatusOr<switchyard::Experiment> load_experiment_from_flags(const FlagSet& flags,
                                                                  const ExperimentFlags& values) {
  SY_RETURN_IF_ERROR(flags.require("config"));
  return load_experiment(values.config_path, values.overrides);
}

int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  if (args.empty()) {
    err << usage();
    return 1;
  }
  const std::string& name = args[0];
  if (name == "--help" || name == "-h" || name == "help") {
    out << usage();
    return 0;
  }
  const std::vector<Subcommand>& table = subcommands();
  auto command = std::find_if(table.begin(), table.end(),
                              [&](const Subcommand& entry) { return entry.name == name; });
  if (command == table.end()) {
    print_error(err, absl::StrCat("unknown subcommand '", name, "'; available subcommands: ",
                                  subcommand_names(), " (see 'switchyard --help')"));
    return 1;
  }
  absl::Status status = command->run(std::vector<std::string>(args.begin() + 1, args.end()), out);
  if (!status.ok()) {
    print_error(err, status.message());
    return 1;
  }
  return 0;
}

}  // namespace sy
