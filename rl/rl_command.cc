#include "rl/rl_command.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "rl/rl_config.h"
#include "rl/rl_run.h"
#include "trainer/cli.h"
#include "trainer/commands.h"
#include "trainer/config.h"
#include "trainer/train.h"

namespace sy {

absl::Status run_rl_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags(
      "switchyard rl", "--config FILE [--set TEXT]... [--run_dir DIR] | --resume DIR",
      "Fine-tunes the latest checkpoint of rl.init_checkpoint (a pretraining run) with\n"
      "GRPO or PPO on the config's task. The model comes from that run's config; the\n"
      "run directory gets the resolved config, metrics.jsonl and the final policy, which\n"
      "`switchyard generate --checkpoint DIR` loads. SIGTERM or SIGUSR1 writes a checkpoint\n"
      "and stops; --resume DIR continues from it with the config saved there (--set may\n"
      "still override it, e.g. rl { steps: N }).");
  ExperimentFlags experiment_flags;
  add_experiment_flags(flags, &experiment_flags);
  std::string run_dir, resume;
  flags.add_string("run_dir", "DIR", &run_dir, "run directory (overrides the config's run_dir)");
  flags.add_string("resume", "DIR", &resume,
                   "continue the RL run in DIR from its latest checkpoint");
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  switchyard::Experiment config;
  rl::RlRunOptions options;
  if (!resume.empty()) {
    // The saved config is resolved already: it holds the checkpoint's model.
    SY_ASSIGN_OR_RETURN(config, load_resume_config(flags, resume, experiment_flags.overrides,
                                                   rl::rl_experiment_rules()));
    if (config.rl().init_checkpoint().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--resume ", resume, ": its config has no rl.init_checkpoint; is it an RL run?"));
    }
    options = {.run_dir = resume, .resume = true};
  } else {
    SY_RETURN_IF_ERROR(flags.require("config"));
    SY_ASSIGN_OR_RETURN(
        switchyard::Experiment rl_config,
        rl::load_rl_config(experiment_flags.config_path, experiment_flags.overrides));
    SY_ASSIGN_OR_RETURN(config, rl::resolve_rl_experiment(rl_config));
    options.run_dir = run_dir.empty() ? config.run_dir() : run_dir;
  }
  if (std::filesystem::path(options.run_dir).lexically_normal() ==
      std::filesystem::path(config.rl().init_checkpoint()).lexically_normal()) {
    return absl::InvalidArgumentError(
        absl::StrCat("run_dir ", options.run_dir,
                     " is rl.init_checkpoint; write the RL run elsewhere "
                     "(set run_dir or pass --run_dir)"));
  }
  install_stop_signal_handlers();

  return run_as_job(config, out,
                    [&](Communicator* world) { return rl::run_rl(config, options, out, world); });
}

void register_rl_config_kind() {
  register_config_kind({.name = "rl",
                        .claims =
                            [](const switchyard::Experiment& parsed) {
                              return !parsed.rl().init_checkpoint().empty();
                            },
                        .resolved_text = rl::rl_config_text});
}

}  // namespace sy
