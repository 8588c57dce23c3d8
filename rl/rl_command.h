#pragma once
// `switchyard rl`: RL fine-tuning of a pretraining run's checkpoint (rl/rl_loop.h). It lives
// in rl/, above trainer/, so the binary's main() registers it (trainer/cli.h).
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace sy {
absl::Status run_rl_command(const std::vector<std::string>& args, std::ostream& out);
}  // namespace sy
