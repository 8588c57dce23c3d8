#pragma once
// `switchyard score`: per-token log-probabilities of texts under a run's model.
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace sy {

absl::Status run_score_command(const std::vector<std::string>& args, std::ostream& out);

}  // namespace sy
