#pragma once
// The run skeleton that `switchyard train` (trainer/train.cc) and `switchyard rl`
// (rl/rl_run.cc) both drive: one rank's view of the run directory and its logs (the console
// on rank 0, metrics.jsonl and TensorBoard events), the optimizer and gradient sync built
// from the config, and the step loop with its cadences: after each step the evaluation when
// due, then the stop signal agreed over the ranks, then the checkpoint when due (always at the
// end and on a stop), then, on a stop, the line that says how to continue.
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "configs/switchyard.pb.h"
#include "models/model_spec.h"
#include "models/param_store.h"
#include "parallel/communicator.h"
#include "parallel/gradient_sync.h"
#include "trainer/optimizer.h"
#include "trainer/tensorboard.h"

namespace sy {

// The same status on every rank: this rank's error, else the first failing rank's, else OK.
// Ranks that went on after a local failure would wait forever in the next collective.
// Collective over `world` (host strings).
absl::Status agree_on_status(Communicator& world, const absl::Status& local);

// Whether any rank has seen a stop signal (trainer/stop.h). Collective: every rank calls it at
// the same point, so all of them leave a loop together.
bool stop_agreed(Communicator& world);

// AdamW's settings from the config's optimizer block.
OptimizerSettings optimizer_settings(const switchyard::OptimizerConfig& optimizer);

// The gradient sync of `store`'s trainable parameters: dense gradients summed over `world`,
// expert gradients over `edp` (the expert-data-parallel group).
std::unique_ptr<GradientSync> make_gradient_sync(ParamStore& store, Communicator& world,
                                                 Communicator& edp);

// "4 layers (2 dense, 2 MoE), d_model 64, 8 experts top-2": how the "model:" lines of train
// and rl begin.
std::string model_summary(const ModelSpec& spec);

// {"step": N, "skipped": true, ...}: the metrics line of a step that changed no weights (its
// other metrics may be NaN, so it carries none of them and the JSONL stays valid JSON).
std::string skipped_step_json(int64_t step, int64_t skipped_in_row, int64_t skipped_total);

// One rank's side of a run's directory and logs. Rank 0 speaks for the job: its log() is the
// console and it alone writes files; every other rank logs into a sink.
class RunLog {
 public:
  RunLog(std::string run_dir, std::ostream& console, bool lead)
      : run_dir_(std::move(run_dir)), lead_(lead), log_(lead ? console : discard_) {}
  RunLog(const RunLog&) = delete;
  RunLog& operator=(const RunLog&) = delete;

  bool lead() const { return lead_; }
  std::ostream& log() { return log_; }
  const std::string& run_dir() const { return run_dir_; }

  // Creates the run directory (rank 0; OK elsewhere): "run_dir X: cannot create it (...)".
  absl::Status create_dir();
  // Rank 0 writes run_dir/config.textproto: the resolved config, defaults spelt out.
  absl::Status write_config(const switchyard::Experiment& config);
  // Rank 0 opens metrics.jsonl (appending: a resumed run goes on in the same file) and the
  // TensorBoard events, as `logging` asks.
  absl::Status open_metrics(const switchyard::LoggingConfig& logging);
  // One metrics line (a JSON object) into metrics.jsonl and TensorBoard, flushed (rank 0).
  void metrics(const std::string& json_line);

 private:
  std::string run_dir_;
  bool lead_;
  std::ostringstream discard_;
  std::ostream& log_;
  std::ofstream jsonl_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

// The loop over steps [start, steps) and when each one evaluates and checkpoints.
struct StepLoop {
  int64_t start = 0, steps = 0;
  int eval_every = 0;        // steps between evaluations (0: only at the end)
  int checkpoint_every = 0;  // steps between checkpoints (0: only at the end and on a stop)
  // How to continue after a stop, for its log line: "--resume runs/x".
  std::string resume_hint;
  // 0-based step; an error ends the run (every rank returns it alike).
  std::function<absl::Status(int64_t step)> step;
  // After the 1-based `step_done`, when an evaluation is due; may be empty.
  std::function<absl::Status(int64_t step_done)> evaluate;
  std::function<absl::Status(int64_t step_done)> checkpoint;
};

// Runs the loop; returns true when a stop signal ended it early (after the checkpoint and the
// line "stop requested by signal: checkpoint written at step N; continue with <resume_hint>").
absl::StatusOr<bool> run_steps(const StepLoop& loop, Communicator& world, std::ostream& log);

}  // namespace sy
