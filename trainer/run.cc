#include "trainer/run.h"

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainer/config.h"
#include "trainer/stop.h"

namespace sy {
namespace fs = std::filesystem;

absl::Status agree_on_status(Communicator& world, const absl::Status& local) {
  if (world.size() == 1) return local;
  const std::vector<std::string> all =
      world.all_gather_host(local.ok() ? std::string() : std::string(local.message()));
  if (!local.ok()) return local;
  for (size_t r = 0; r < all.size(); ++r) {
    if (!all[r].empty()) {
      return absl::AbortedError(absl::StrCat("rank ", r, " failed: ", all[r]));
    }
  }
  return absl::OkStatus();
}

bool stop_agreed(Communicator& world) {
  double flag = stop_requested() ? 1.0 : 0.0;
  world.all_reduce_host({&flag, 1}, ReduceOp::kMax);
  return flag > 0;
}

OptimizerSettings optimizer_settings(const switchyard::OptimizerConfig& o) {
  return {.beta1 = static_cast<float>(o.beta1()),
          .beta2 = static_cast<float>(o.beta2()),
          .eps = static_cast<float>(o.eps()),
          .weight_decay = static_cast<float>(o.weight_decay()),
          .grad_clip = static_cast<float>(o.grad_clip()),
          .moment_dtype = moment_dtype_of(o.moment_dtype())};
}

std::unique_ptr<GradientSync> make_gradient_sync(ParamStore& store, Communicator& world,
                                                 Communicator& edp) {
  std::vector<Tensor> dense, expert;
  for (Param* p : store.params()) {
    if (p->trainable) (p->group == SyncGroup::kExpert ? expert : dense).push_back(p->grad);
  }
  return std::make_unique<GradientSync>(dense, expert, world, edp);
}

std::string model_summary(const ModelSpec& spec) {
  return absl::StrFormat("%d layers (%d dense, %d MoE), d_model %d, %d experts top-%d",
                         spec.n_layers, std::min(spec.first_k_dense, spec.n_layers),
                         std::max(0, spec.n_layers - spec.first_k_dense), spec.d_model,
                         spec.moe.num_experts, spec.moe.top_k);
}

std::string skipped_step_json(int64_t step, int64_t skipped_in_row, int64_t skipped_total) {
  return absl::StrFormat(
      R"({"step": %d, "skipped": true, "skipped_in_row": %d, "skipped_steps": %d})", step,
      skipped_in_row, skipped_total);
}

absl::Status RunLog::create_dir() {
  if (!lead_) return absl::OkStatus();
  std::error_code ec;
  fs::create_directories(run_dir_, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("run_dir ", run_dir_, ": cannot create it (", ec.message(), ")"));
  }
  return absl::OkStatus();
}

absl::Status RunLog::write_config(const switchyard::Experiment& config) {
  if (!lead_) return absl::OkStatus();
  std::ofstream out(fs::path(run_dir_) / "config.textproto");
  out << resolved_experiment_text(config);
  if (!out)
    return absl::PermissionDeniedError(
        absl::StrCat("cannot write ", run_dir_, "/config.textproto"));
  return absl::OkStatus();
}

absl::Status RunLog::open_metrics(const switchyard::LoggingConfig& logging) {
  if (!lead_) return absl::OkStatus();
  if (logging.jsonl()) jsonl_.open(fs::path(run_dir_) / "metrics.jsonl", std::ios::app);
  if (logging.tensorboard()) {
    auto writer = TensorBoardWriter::open(run_dir_);
    if (!writer.ok()) return writer.status();
    tensorboard_ = std::move(*writer);
  }
  return absl::OkStatus();
}

void RunLog::metrics(const std::string& json_line) {
  if (tensorboard_) tensorboard_->metrics_line(json_line);
  if (!jsonl_.is_open()) return;
  jsonl_ << json_line << "\n";
  jsonl_.flush();
}

absl::StatusOr<bool> run_steps(const StepLoop& loop, Communicator& world, std::ostream& log) {
  for (int64_t step = loop.start; step < loop.steps; ++step) {
    SY_RETURN_IF_ERROR(loop.step(step));
    const int64_t done = step + 1;
    const bool last = done == loop.steps;
    if (loop.evaluate && ((loop.eval_every > 0 && done % loop.eval_every == 0) || last)) {
      SY_RETURN_IF_ERROR(loop.evaluate(done));
    }
    // A signal may reach the ranks at different steps: stop when any rank has seen one.
    const bool stop = stop_agreed(world);
    if (last || stop || (loop.checkpoint_every > 0 && done % loop.checkpoint_every == 0)) {
      SY_RETURN_IF_ERROR(loop.checkpoint(done));
    }
    if (stop && !last) {
      log << "stop requested by signal: checkpoint written at step " << done << "; continue with "
          << loop.resume_hint << "\n";
      return true;
    }
  }
  return false;
}

}  // namespace sy
