#pragma once
// Subcommands of the switchyard binary beyond `config` (registered in trainer/cli.cc).
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace sy {
absl::Status run_train_command(const std::vector<std::string>& args, std::ostream& out);
absl::Status run_generate_command(const std::vector<std::string>& args, std::ostream& out);
absl::Status run_data_command(const std::vector<std::string>& args, std::ostream& out);
}  // namespace sy
