#pragma once
// The training loop: data -> forward/backward over micro-batches -> clip -> AdamW -> schedule
// -> metrics -> eval -> checkpoints. One rank, CPU (the parallel runtime and the CUDA
// backend plug in beneath the same loop).
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "configs/switchyard.pb.h"

namespace sy {

struct TrainOptions {
  std::string run_dir;  // resolved: the config's run_dir or --run_dir
  bool resume = false;  // continue from run_dir's latest checkpoint
};

// Runs training; progress goes to `log` (the console). Returns an error for anything a user
// can fix (bad data, a checkpoint that does not match the config, an unwritable run dir).
absl::Status train(const switchyard::Experiment& config, const TrainOptions& options,
                   std::ostream& log);

// SIGTERM / SIGUSR1 ask the loop to write a checkpoint after the current step and return.
void install_stop_signal_handlers();

}  // namespace sy
