#pragma once
// `switchyard rl`'s run: the RL steps of an RlTrainer driven by the run skeleton that
// training shares (trainer/run.h: run directory, logs, metrics, signals, cadences).
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "configs/switchyard.pb.h"
#include "parallel/communicator.h"

namespace sy::rl {

struct RlRunOptions {
  std::string run_dir;
  bool resume = false;  // continue from run_dir's latest checkpoint
};

// The whole run: start-up log, evaluation before the first step, the steps with their log
// lines and metrics.jsonl, periodic and final evaluation, periodic checkpoints and a final
// one in run_dir (with config.textproto, so `switchyard generate --checkpoint run_dir` loads
// the policy). SIGTERM / SIGUSR1 (install_stop_signal_handlers) end it after the current
// step with a checkpoint. `config` comes from resolve_rl_experiment. `world` null: this
// process alone.
absl::Status run_rl(const switchyard::Experiment& config, const RlRunOptions& options,
                    std::ostream& log, Communicator* world = nullptr);

}  // namespace sy::rl
