#pragma once
// `switchyard rl`: RL fine-tuning of a pretraining run's checkpoint (rl/rl_loop.h). It lives
// in rl/, above trainer/, so the binary's main() registers it (trainer/cli.h).
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace sy {
absl::Status run_rl_command(const std::vector<std::string>& args, std::ostream& out);
// Teaches `switchyard config` RL configs (those that set rl.init_checkpoint): it checks them
// with the RL rules and prints them with the model of rl.init_checkpoint's run
// (rl::rl_config_text). The binary's main() calls it beside registering `rl`.
void register_rl_config_kind();
}  // namespace sy
