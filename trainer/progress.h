#pragma once
// What an operator reads beside the loss: how much of the hardware a run turns into model
// arithmetic (MFU), when it ends (ETA), its peak memory, and progress lines for long work
// that is not a step (evaluation, checkpoints).
#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>

#include "kernels/tensor.h"
#include "models/model_spec.h"

namespace sy {

// Model FLOPs of one trained token, forward + backward (the backward is twice the forward:
// a gradient for the input and one for the weight of every matmul). Counts each matmul a
// token passes through at 2 FLOPs per multiply-add: the attention projections, the scores
// and the weighted sum over seq_len keys (the PaLM convention: every key, not the causal
// half, as bench/torch_bench.py counts, so the two MFUs compare), the dense FFN or the
// router, top_k routed and the shared experts, the output head, and each MTP module's
// projection, block and head. The embedding lookup, norms and elementwise work count
// nothing; recomputation would not count either (model FLOPs, not hardware FLOPs).
double train_flops_per_token(const ModelSpec& spec);

// Peak dense bf16 tensor-core TFLOP/s (fp32 accumulate, no sparsity) of a GPU by the name
// CUDA gives it (cudaDeviceProp::name, e.g. "NVIDIA H100 80GB HBM3"); 0 for a GPU the table
// does not know.
double known_gpu_peak_tflops(std::string_view gpu_name);

// The MFU denominator of one device: logging.peak_tflops when set (> 0), else the table's
// figure for this GPU. 0 means no MFU: the CPU (its f32 reference kernels have no peak worth
// comparing), or a GPU neither knows. `source` says where the number came from, for the log.
struct PeakFlops {
  double tflops = 0;
  std::string source;  // "GPU name (table)", "logging.peak_tflops", or why there is none
};
PeakFlops device_peak_flops(Device device, double configured_tflops);

// Model FLOPs utilisation as a fraction: flops_per_token x tokens_per_s over `devices`
// devices of `peak_tflops` each; 0 when peak_tflops is 0.
double model_flops_utilization(double flops_per_token, double tokens_per_s, int devices,
                               double peak_tflops);

// The high-water mark of this process's memory, in GiB: tensor storage on a GPU
// (memory_stats' peak_in_use), the resident set (getrusage's ru_maxrss) on the CPU.
double peak_memory_gib(Device device);

// "42s", "12m03s", "3h07m", "2d04h": short enough for a log line, exact enough for a plan.
std::string format_duration(double seconds);

// Time left to the last step, from the mean wall time per step since this process's first
// step: evaluation and checkpoints between steps count, since they delay the end too. A
// resumed run measures from where it resumed.
class Eta {
 public:
  using Clock = std::chrono::steady_clock;
  // first_step: steps already done when the clock starts; last_step: the run's total.
  Eta(int64_t first_step, int64_t last_step, Clock::time_point start = Clock::now())
      : first_(first_step), last_(last_step), start_(start) {}
  // Seconds left after `done` steps (0 once done reaches the last step).
  double seconds_left(int64_t done, Clock::time_point now = Clock::now()) const;

 private:
  int64_t first_, last_;
  Clock::time_point start_;
};

// Progress of long work on `out`: on a terminal, a line rewritten in place at most every
// `interval` with done/total, the rate and the ETA; either way, one summary line from
// finish(). Off a terminal (a log file, Slurm's output) only the summary is written, so logs
// stay short. The unit "bytes" reads as MiB ("12.5/40.0 MiB | 210.3 MiB/s").
class Progress {
 public:
  using Clock = std::chrono::steady_clock;
  // what: "eval step 100", unit: "examples" (the rate's unit). total 0: unknown.
  Progress(std::ostream& out, std::string what, int64_t total, std::string unit, bool terminal,
           Clock::duration interval = std::chrono::seconds(2),
           Clock::time_point start = Clock::now());
  // A line left drawn (the work failed before finish()) is erased, so an error message that
  // follows starts a line of its own.
  ~Progress() { clear(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  // A second count shown beside the first with its own rate but no total or ETA (the work is
  // measured by the first): generate's new tokens beside its prompts, the tokens that data's
  // input bytes became. `rate_unit` names its rate, e.g. "tok/s".
  void count_also(std::string unit, std::string rate_unit);
  void update(int64_t done, Clock::time_point now = Clock::now());
  void update(int64_t done, int64_t also, Clock::time_point now = Clock::now());
  // The summary: "<what>: <done>/<total> <unit> in <time> (<rate> <unit>/s)<detail>", the
  // total only when done falls short of it; with a second count, " | <also> <unit> (<rate>)"
  // before the detail.
  void finish(int64_t done, const std::string& detail = "", Clock::time_point now = Clock::now());
  void finish(int64_t done, int64_t also, const std::string& detail = "",
              Clock::time_point now = Clock::now());
  // Erases the redrawn line, for a caller that writes its own summary instead of finish().
  void clear();
  void set_total(int64_t total) { total_ = total; }
  double seconds(Clock::time_point now = Clock::now()) const {
    return std::chrono::duration<double>(now - start_).count();
  }

 private:
  std::string line(int64_t done, int64_t also, Clock::time_point now) const;
  std::string amount(int64_t n) const;
  std::string done_text(int64_t done, bool with_total) const;
  std::string rate(double per_s) const;
  std::string also_text(int64_t also, double s) const;

  std::ostream& out_;
  std::string what_, unit_, also_unit_, also_rate_unit_;
  int64_t total_;
  bool terminal_;
  Clock::duration interval_;
  Clock::time_point start_, last_;
  bool drawn_ = false;
};

// Whether `out` is this process's standard output and that is a terminal: where Progress
// may redraw its line.
bool is_terminal(const std::ostream& out);

}  // namespace sy
