#pragma once
// Subcommands of the switchyard binary beyond `config` (registered in trainer/cli.cc).
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "configs/switchyard.pb.h"
#include "parallel/communicator.h"
#include "trainer/config.h"
#include "trainer/flags.h"

namespace sy {
// Runs one rank's part of a job: joins it when started by mpirun or srun (world is null when
// alone), prints this rank's banner line, runs `body`, and brings every rank down with the
// message when this rank fails.
absl::Status run_as_job(const switchyard::Experiment& config, std::ostream& out,
                        const std::function<absl::Status(Communicator*)>& body);
// The config a `--resume DIR` continues with: DIR/config.textproto with the --set
// `overrides`, validated with `rules`. Refused when --config or --run_dir was given too (DIR
// fixes both).
absl::StatusOr<switchyard::Experiment> load_resume_config(
    const FlagSet& flags, const std::string& resume, const std::vector<std::string>& overrides,
    const ConfigRules& rules = {});
absl::Status run_train_command(const std::vector<std::string>& args, std::ostream& out);
absl::Status run_generate_command(const std::vector<std::string>& args, std::ostream& out);
absl::Status run_data_command(const std::vector<std::string>& args, std::ostream& out);
}  // namespace sy
