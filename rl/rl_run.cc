#include "rl/rl_run.h"

#include <algorithm>
#include <filesystem>
#include <memory>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "kernels/check.h"
#include "parallel/local_communicator.h"
#include "rl/rl_trainer.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/progress.h"
#include "trainer/run.h"

namespace sy::rl {
namespace fs = std::filesystem;
namespace {

using switchyard::RlConfig;

// The tokenizer (and an imported model's Hub config) travel on with the policy, so that
// generate, score and convert read this run as they read the one it started from.
absl::Status copy_tokenizer_files(const std::string& from_dir, const std::string& run_dir) {
  std::error_code ec;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                           "generation_config.json", "hf_config.json"}) {
    const fs::path from = fs::path(from_dir) / name;
    const fs::path to = fs::path(run_dir) / name;
    if (fs::exists(from, ec) && !fs::exists(to, ec)) {
      fs::copy_file(from, to, ec);
      if (ec)
        return absl::PermissionDeniedError(
            absl::StrCat("cannot copy ", from.string(), " to ", to.string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

// `tis`: rl.rollout_correction is on, and its two statistics are written too; `moe`: a MoE
// model, and its rollout/training mismatch too.
std::string step_json(const StepMetrics& m, double time_left_s, bool tis, bool moe,
                      const char* memory_key, double memory_gib) {
  std::string extra_fields =
      tis ? absl::StrFormat(R"(, "tis_weight_mean": %.9g, "tis_truncated_fraction": %.9g)",
                            m.tis_weight_mean, m.tis_truncated_fraction)
          : std::string();
  if (moe) {
    absl::StrAppendFormat(&extra_fields,
                          R"(, "rollout_logprob_diff": %.9g, "routing_mismatch": %.9g)",
                          m.rollout_logprob_diff, m.routing_mismatch);
  }
  absl::StrAppendFormat(&extra_fields, R"(, "%s": %.6g)", memory_key, memory_gib);
  return absl::StrFormat(
      R"({"step": %d, "reward_mean": %.9g, "accuracy": %.9g, "format_rate": %.9g, "kl": %.9g, "kl_sequence": %.9g, "kl_coef": %.9g, "clip_fraction": %.9g, "entropy": %.9g, "response_length": %.9g, "policy_loss": %.9g, "value_loss": %.9g, "grad_norm": %.9g, "groups_kept": %d, "groups": %d, "time_rollout_s": %.6g, "time_scoring_s": %.6g, "time_logprobs_s": %.6g, "time_update_s": %.6g, "rollout_tokens": %d, "rollout_tokens_per_s": %.6g, "non_finite_updates": %d%s, "time_left_s": %.6g})",
      m.step, m.reward_mean, m.accuracy, m.format_rate, m.kl, m.kl_sequence, m.kl_coef,
      m.clip_fraction, m.entropy, m.response_length, m.policy_loss, m.value_loss, m.grad_norm,
      m.groups_kept, m.groups, m.rollout_s, m.scoring_s, m.logprobs_s, m.update_s, m.rollout_tokens,
      m.rollout_tokens_per_s(), m.non_finite_updates, extra_fields, time_left_s);
}

}  // namespace

absl::Status run_rl(const switchyard::Experiment& config, const RlRunOptions& options,
                    std::ostream& console, Communicator* world_comm) {
  LocalCommunicator local;
  Communicator& world = world_comm ? *world_comm : local;
  RunLog run(options.run_dir, console, world.rank() == 0);
  std::ostream& log = run.log();
  SY_RETURN_IF_ERROR(
      check_same_on_all_ranks(world, "the resolved config", resolved_experiment_text(config)));
  const RlConfig& rl = config.rl();

  absl::Status made = run.create_dir();
  if (made.ok()) made = run.write_config(config);
  if (made.ok() && run.lead()) made = copy_tokenizer_files(rl.init_checkpoint(), options.run_dir);
  SY_RETURN_IF_ERROR(agree_on_status(world, made));

  SY_ASSIGN_OR_RETURN(std::unique_ptr<RlTrainer> trainer, RlTrainer::create(config, world));
  // A Hugging Face directory is read as it is; a run, by its latest checkpoint.
  auto init_dir = is_hf_checkpoint(rl.init_checkpoint())
                      ? absl::StatusOr<std::string>(rl.init_checkpoint())
                      : latest_checkpoint(rl.init_checkpoint());
  SY_RETURN_IF_ERROR(agree_on_status(world, init_dir.status()));
  // Checkpoint progress on rank 0's console alone.
  std::ostream* const progress = run.lead() ? &log : nullptr;
  SY_RETURN_IF_ERROR(trainer->load_policy_weights(*init_dir, progress));
  int64_t start_step = 0;
  if (options.resume) {
    SY_ASSIGN_OR_RETURN(start_step, trainer->restore(options.run_dir, progress));
    if (start_step >= rl.steps()) {
      return absl::FailedPreconditionError(absl::StrCat(
          options.run_dir, " already holds step ", start_step, " of rl.steps = ", rl.steps(),
          "; raise it with --set 'rl { steps: N }' to continue"));
    }
  }

  SY_RETURN_IF_ERROR(run.open_metrics(config.logging()));
  log << absl::StrFormat("model: %s | from %s | %s | run dir %s\n",
                         model_summary(trainer->policy().spec()), *init_dir,
                         trainer->grid().describe(), options.run_dir);
  log << trainer->describe() << "\n";
  if (options.resume)
    log << "resumed from " << options.run_dir << " at step " << start_step << "\n";

  auto run_eval = [&](int64_t step) -> absl::Status {
    const EvalMetrics e = trainer->evaluate();
    log << absl::StrFormat(
        "eval step %d | accuracy %.1f%% (%d/%d) | reward %.3f | sampled accuracy %.1f%%\n", step,
        100 * e.accuracy, e.correct, e.total, e.reward_mean, 100 * e.sampled_accuracy);
    if (e.stopped) log << "eval: stop requested by signal; the sampled pass was not run\n";
    log.flush();
    run.metrics(absl::StrFormat(
        R"({"step": %d, "eval_accuracy": %.9g, "eval_reward": %.9g, "eval_sampled_accuracy": %.9g})",
        step, e.accuracy, e.reward_mean, e.sampled_accuracy));
    return absl::OkStatus();
  };
  if (!options.resume) SY_RETURN_IF_ERROR(run_eval(0));

  const int64_t steps = rl.steps();
  const bool ppo = rl.algorithm() == RlConfig::RL_PPO;
  const bool tis = rl.rollout_correction().tis_cap() > 0;
  const bool moe = trainer->policy().num_routed_layers() > 0;
  const Device device = trainer->policy().store().device();
  const Eta eta(start_step, steps);
  int64_t skipped_total = 0;
  StepLoop loop;
  loop.start = start_step;
  loop.steps = steps;
  loop.eval_every = rl.eval_interval();
  loop.checkpoint_every = config.checkpoint().interval();
  loop.resume_hint = absl::StrCat("switchyard rl --resume ", options.run_dir);
  loop.evaluate = run_eval;
  loop.checkpoint = [&](int64_t done) { return trainer->save(options.run_dir, done, progress); };
  loop.step = [&](int64_t step) -> absl::Status {
    auto result = trainer->step(step);
    SY_RETURN_IF_ERROR(agree_on_status(world, result.status()));
    const StepMetrics& m = *result;
    const bool skipped = !m.skipped.empty();
    if (skipped) {
      // Its metrics may be nan: only the skip is logged (and the JSONL stays valid JSON).
      ++skipped_total;
      log << absl::StrFormat("rl step %d: skipped, %s (%d in a row)\n", step + 1, m.skipped,
                             m.skipped_in_row);
      log.flush();
      run.metrics(skipped_step_json(step + 1, m.skipped_in_row, skipped_total));
      return absl::OkStatus();
    }
    if (m.non_finite_updates > 0) {
      log << absl::StrFormat(
          "rl step %d: skipped %d of %d updates, loss or grad norm nan/inf (lower rl.lr if it "
          "recurs)\n",
          step + 1, m.non_finite_updates, m.updates.size());
    }
    const bool last = step + 1 == steps;
    // As the training line: the busiest rank's peak (device memory on a GPU, else the RSS).
    double memory_gib = peak_memory_gib(device);
    world.all_reduce_host({&memory_gib, 1}, ReduceOp::kMax);
    const char* memory_key = device.is_cuda() ? "peak_memory_gib" : "peak_rss_gib";
    if ((step + 1) % rl.log_interval() == 0 || last || step == 0) {
      const std::string value = ppo ? absl::StrFormat(" | vloss %.4f", m.value_loss) : "";
      const std::string kept = rl.filter_equal_groups()
                                   ? absl::StrFormat(" | groups %d/%d", m.groups_kept, m.groups)
                                   : "";
      const std::string correction =
          tis ? absl::StrFormat(" | tis %.4f trunc %.1f%%", m.tis_weight_mean,
                                100 * m.tis_truncated_fraction)
              : "";
      // A MoE model's rollout/training mismatch: |delta log-prob| and tokens routed otherwise.
      const std::string mismatch =
          moe ? absl::StrFormat(" | mismatch %.2e routes %.1f%%", m.rollout_logprob_diff,
                                100 * m.routing_mismatch)
              : "";
      log << absl::StrFormat(
          "rl step %d/%d | reward %.3f | acc %.1f%% | kl %.2e | beta %.3g | clip %.1f%%%s%s | "
          "entropy %.3f | len %.2f | loss %.4f%s%s | norm %.2f | rollout %.2fs (%.0f tok/s) "
          "score %.2fs logprobs %.2fs update %.2fs | %s %.2f GiB | ETA %s\n",
          m.step, steps, m.reward_mean, 100 * m.accuracy, m.kl, m.kl_coef, 100 * m.clip_fraction,
          correction, mismatch, m.entropy, m.response_length, m.policy_loss, value, kept,
          m.grad_norm, m.rollout_s, m.rollout_tokens_per_s(), m.scoring_s, m.logprobs_s, m.update_s,
          device.is_cuda() ? "peak mem" : "peak rss", memory_gib,
          format_duration(eta.seconds_left(step + 1)));
      log.flush();
    }
    run.metrics(step_json(m, std::max(0.0, eta.seconds_left(step + 1)), tis, moe, memory_key,
                          memory_gib));
    return absl::OkStatus();
  };
  SY_ASSIGN_OR_RETURN(const bool stopped, run_steps(loop, world, log));
  if (stopped) return absl::OkStatus();
  // A prompt of the user's own set may hold a quote: spelled for a POSIX shell.
  const std::string example =
      absl::StrReplaceAll(trainer->task().sample(0, Split::kHeldOut).text, {{"'", "'\\''"}});
  log << "saved the policy in " << options.run_dir << "; try: switchyard generate --checkpoint "
      << options.run_dir << " --prompt '" << example << "'\n";
  return absl::OkStatus();
}

}  // namespace sy::rl
