#pragma once
// What an RL config is: its own rules (the rl message's ranges, and that a fine-tuning config
// takes its model from rl.init_checkpoint), how it becomes a whole experiment (the
// checkpoint's model and training settings under the config's), and the task it names.
//
// Two stages of the same config: as written (configs/grpo_arith.textproto: no model, loaded
// with rl_config_rules) and resolved (with the checkpoint's model: what `switchyard rl` runs,
// writes to its run directory and reads back on --resume, checked with rl_experiment_rules).
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "configs/switchyard.pb.h"
#include "rl/tasks.h"
#include "trainer/config.h"

namespace sy::rl {

// The rules of an RL config as written: rl.init_checkpoint set, no model, moe or mtp block
// (the checkpoint fixes them), no bf16 (the RL runtime is f32 on the CPU), and the rl
// message's ranges.
ConfigRules rl_config_rules();
// The rules of a resolved RL experiment (the model included): every training rule and the rl
// message's ranges.
ConfigRules rl_experiment_rules();

// load_experiment with rl_config_rules.
absl::StatusOr<switchyard::Experiment> load_rl_config(const std::string& config_path,
                                                      const std::vector<std::string>& overrides);

// The experiment an RL run executes: `rl_config` (loaded with load_rl_config) with the
// model, moe and mtp of rl.init_checkpoint's run (its config.textproto), and that run's
// train and data where rl_config leaves them out, validated as a whole (e.g. the checkpoint's
// experts against this run's expert_parallel_size). An RL config that sets model, moe or mtp
// is an error: the checkpoint fixes them.
absl::StatusOr<switchyard::Experiment> resolve_rl_experiment(
    const switchyard::Experiment& rl_config);

// What `switchyard config` prints for an RL config (one that sets rl.init_checkpoint):
// the resolved experiment when rl.init_checkpoint holds a run, else the config as written
// (validated as an RL config) under a comment that says the model is not there yet. A config
// that holds its model already (an RL run's saved config.textproto) is validated as resolved.
absl::StatusOr<std::string> rl_config_text(const std::string& config_path,
                                           const std::vector<std::string>& overrides);

// The task of config.rl (arithmetic, countdown or a prompt file, with the format weight).
absl::StatusOr<std::unique_ptr<RewardTask>> make_reward_task(const switchyard::RlConfig& rl);

}  // namespace sy::rl
