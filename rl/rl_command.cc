#include "rl/rl_command.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "rl/rl_loop.h"
#include "trainer/cli.h"
#include "trainer/commands.h"
#include "trainer/config.h"
#include "trainer/train.h"

namespace sy {

absl::Status run_rl_command(const std::vector<std::string>& args, std::ostream& out) {
  FlagSet flags(
      "switchyard rl", "--config FILE [--set TEXT]... [--run_dir DIR]",
      "Fine-tunes the latest checkpoint of rl.init_checkpoint (a pretraining run) with\n"
      "GRPO or PPO on the config's task. The model comes from that run's config; the\n"
      "run directory gets the resolved config, metrics.jsonl and the final policy, which\n"
      "`switchyard generate --checkpoint DIR` loads.");
  ExperimentFlags experiment_flags;
  add_experiment_flags(flags, &experiment_flags);
  std::string run_dir;
  flags.add_string("run_dir", "DIR", &run_dir, "run directory (overrides the config's run_dir)");
  SY_RETURN_IF_ERROR(flags.parse(args));
  if (flags.help_requested()) {
    out << flags.help();
    return absl::OkStatus();
  }
  SY_RETURN_IF_ERROR(flags.require("config"));
  SY_ASSIGN_OR_RETURN(
      switchyard::Experiment rl_config,
      load_experiment(experiment_flags.config_path, experiment_flags.overrides, ConfigUse::kRl));
  SY_ASSIGN_OR_RETURN(switchyard::Experiment config, rl::resolve_rl_experiment(rl_config));
  rl::RlRunOptions options{.run_dir = run_dir.empty() ? config.run_dir() : run_dir};
  if (std::filesystem::path(options.run_dir).lexically_normal() ==
      std::filesystem::path(config.rl().init_checkpoint()).lexically_normal()) {
    return absl::InvalidArgumentError(
        absl::StrCat("run_dir ", options.run_dir,
                     " is rl.init_checkpoint; write the RL run elsewhere "
                     "(set run_dir or pass --run_dir)"));
  }

  return run_as_job(config, out, [&](Communicator* world) { return rl::run_rl(config, options, out, world); });
}

}  // namespace sy
