#include "rl/rl_config.h"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/check.h"
#include "models/model_spec.h"
#include "rl/countdown.h"
#include "rl/prompt_file_task.h"
#include "trainer/io/hf_checkpoint.h"

namespace sy::rl {
namespace fs = std::filesystem;
namespace {

using switchyard::Experiment;
using switchyard::RlConfig;

// The upper ends of the rl message's ranges in configs/switchyard.proto (trainer/config.cc
// says why ranges at all).
constexpr int64_t kMaxRlGroup = int64_t{1} << 16;
constexpr int64_t kMaxCompletionsPerStep = int64_t{1} << 20;
constexpr int64_t kMaxEpochs = 1000;
constexpr int64_t kMaxRewardTimeoutMs = 86'400'000;  // a day
constexpr int64_t kMaxNewTokens = int64_t{1} << 20;
constexpr int64_t kMaxExamples = 1'000'000;  // as data.arithmetic.eval_examples
// rl/countdown.cc's limits (intermediate values stay within int64), checked here as well so
// that the message names the field.
constexpr int64_t kMaxCountdownCount = 6;
constexpr int64_t kMaxCountdownNumber = 1000;

// The rl message's ranges (its defaults pass them).
void validate_rl_ranges(const RlConfig& rl, ConfigProblems& problems) {
  problems.positive("rl.steps", rl.steps());
  problems.positive("rl.prompts_per_step", rl.prompts_per_step());
  problems.at_most("rl.prompts_per_step", rl.prompts_per_step(), kMaxRlGroup, "2^16");
  problems.positive("rl.group_size", rl.group_size());
  problems.at_most("rl.group_size", rl.group_size(), kMaxRlGroup, "2^16");
  if (rl.prompts_per_step() <= kMaxRlGroup && rl.group_size() <= kMaxRlGroup &&
      int64_t{rl.prompts_per_step()} * rl.group_size() > kMaxCompletionsPerStep) {
    problems.add({"rl.prompts_per_step", "rl.group_size"},
                 absl::StrCat("rl.prompts_per_step * rl.group_size = ",
                              int64_t{rl.prompts_per_step()} * rl.group_size(),
                              " completions per rank per step exceeds ", kMaxCompletionsPerStep),
                 absl::StrCat("set rl { prompts_per_step: P group_size: G } with P * G <= ",
                              kMaxCompletionsPerStep));
  }
  if (rl.algorithm() != RlConfig::RL_PPO && rl.group_size() == 1) {
    problems.add({"rl.group_size", "rl.algorithm"},
                 absl::StrCat("must be >= 2 for ", RlConfig::Algorithm_Name(rl.algorithm()),
                              ", got 1 (a group of one has no baseline)"),
                 "set rl { group_size: G } with G >= 2 (e.g. 8)");
  }
  problems.positive("rl.epochs", rl.epochs());
  problems.at_most("rl.epochs", rl.epochs(), kMaxEpochs, "passes over one rollout batch");
  problems.positive("rl.minibatches", rl.minibatches());
  if (rl.prompts_per_step() > 0 && rl.group_size() > 0 && rl.minibatches() > 0 &&
      (int64_t{rl.prompts_per_step()} * rl.group_size()) % rl.minibatches() != 0) {
    problems.add({"rl.minibatches", "rl.prompts_per_step", "rl.group_size"},
                 absl::StrCat("rl.minibatches = ", rl.minibatches(),
                              " does not divide rl.prompts_per_step * rl.group_size = ",
                              int64_t{rl.prompts_per_step()} * rl.group_size()),
                 "choose minibatches so that each gets the same number of completions");
  }
  const switchyard::RlArithmeticTask& arithmetic = rl.arithmetic();
  if (arithmetic.min_digits() < 1 || arithmetic.max_digits() < arithmetic.min_digits() ||
      arithmetic.max_digits() > 9) {
    problems.add({"rl.arithmetic.max_digits", "rl.arithmetic.min_digits"},
                 absl::StrCat("rl.arithmetic digits [", arithmetic.min_digits(), ", ",
                              arithmetic.max_digits(), "] are not within [1, 9]"),
                 "set 1 <= min_digits <= max_digits <= 9 (results must fit in 64 bits)");
  }
  if (arithmetic.operators().empty() ||
      arithmetic.operators().find_first_not_of("+-*") != std::string::npos) {
    problems.add(
        "rl.arithmetic.operators",
        absl::StrCat("must be a non-empty subset of \"+-*\", got \"", arithmetic.operators(), "\""),
        "set rl { arithmetic { operators: \"+-*\" } } using only + - *");
  }
  const switchyard::RlCountdownTask& countdown = rl.countdown();
  if (countdown.min_count() < 2 || countdown.max_count() < countdown.min_count() ||
      countdown.max_count() > kMaxCountdownCount) {
    problems.add(
        {"rl.countdown.max_count", "rl.countdown.min_count"},
        absl::StrCat("rl.countdown counts [", countdown.min_count(), ", ", countdown.max_count(),
                     "] are not within [2, ", kMaxCountdownCount, "]"),
        absl::StrCat("set 2 <= min_count <= max_count <= ", kMaxCountdownCount));
  }
  if (countdown.min_number() < 1 || countdown.max_number() < countdown.min_number() ||
      countdown.max_number() > kMaxCountdownNumber) {
    problems.add(
        {"rl.countdown.max_number", "rl.countdown.min_number"},
        absl::StrCat("rl.countdown numbers [", countdown.min_number(), ", ", countdown.max_number(),
                     "] are not within [1, ", kMaxCountdownNumber, "]"),
        absl::StrCat("set 1 <= min_number <= max_number <= ", kMaxCountdownNumber,
                     " (every intermediate value must fit in 64 bits)"));
  }
  if (countdown.min_target() < 1 || countdown.max_target() < countdown.min_target()) {
    problems.add({"rl.countdown.max_target", "rl.countdown.min_target"},
                 absl::StrCat("rl.countdown targets [", countdown.min_target(), ", ",
                              countdown.max_target(), "] are empty or below 1"),
                 "set 1 <= min_target <= max_target");
  }
  problems.non_negative_real("rl.format_weight", rl.format_weight(), "0 = no format reward");
  problems.positive("rl.reward_timeout_ms", rl.reward_timeout_ms());
  problems.at_most("rl.reward_timeout_ms", rl.reward_timeout_ms(), kMaxRewardTimeoutMs, "a day");
  problems.positive_real("rl.temperature", rl.temperature());
  if (!(rl.top_p() > 0 && rl.top_p() <= 1)) {
    problems.add("rl.top_p", absl::StrCat("must be in (0, 1], got ", rl.top_p()),
                 "set rl { top_p: p } with 0 < p <= 1 (1 = no nucleus cut)");
  }
  problems.non_negative("rl.max_new_tokens", rl.max_new_tokens());
  problems.at_most("rl.max_new_tokens", rl.max_new_tokens(), kMaxNewTokens,
                   "completions end at the model's context anyway");
  problems.non_negative_real("rl.kl_coef", rl.kl_coef(), "0 = no KL penalty");
  problems.non_negative_real("rl.target_kl", rl.target_kl(), "0 = fixed kl_coef");
  problems.positive_real("rl.kl_horizon", rl.kl_horizon());
  if (rl.target_kl() > 0 && rl.kl_coef() == 0) {
    problems.add({"rl.kl_coef", "rl.target_kl"},
                 absl::StrCat("rl.kl_coef = 0, but rl.target_kl = ", rl.target_kl(),
                              " adapts kl_coef multiplicatively from its starting value"),
                 "set rl { kl_coef: x } with x > 0 (e.g. 0.05) as the starting coefficient");
  }
  // Clip bounds live in [0, 1); GAE's gamma and lambda in [0, 1].
  auto in_unit_interval = [&](absl::string_view field, double value, bool one_allowed) {
    if (!(value >= 0 && (value < 1 || (one_allowed && value == 1)))) {
      const char* bound = one_allowed ? "]" : ")";
      problems.add(field, absl::StrCat("must be in [0, 1", bound, ", got ", value),
                   absl::StrCat("set ", config_setting(field, "x"), " with 0 <= x ",
                                one_allowed ? "<=" : "<", " 1"));
    }
  };
  in_unit_interval("rl.clip_low", rl.clip_low(), false);
  in_unit_interval("rl.clip_high", rl.clip_high(), false);
  if (!(rl.dual_clip() == 0 || (rl.dual_clip() > 1 && std::isfinite(rl.dual_clip())))) {
    problems.add("rl.dual_clip", absl::StrCat("must be 0 (off) or > 1, got ", rl.dual_clip()),
                 "set rl { dual_clip: 3 } or leave it 0");
  }
  if (rl.algorithm() == RlConfig::RL_GSPO) {
    // GSPO's loss is its own (rl/policy_loss.h): a clipped ratio per completion, every
    // completion weighing the same. Knobs of the token-level loss that it cannot honour are
    // refused rather than ignored.
    if (rl.dual_clip() != 0) {
      problems.add({"rl.dual_clip", "rl.algorithm"},
                   absl::StrCat("is ", rl.dual_clip(),
                                ", but RL_GSPO clips each completion's sequence ratio with "
                                "clip_low / clip_high alone (dual-clip is for token ratios)"),
                   "leave rl.dual_clip at 0 with RL_GSPO");
    }
    if (rl.aggregation() == RlConfig::AGG_SEQ_MEAN_TOKEN_SUM_NORM) {
      problems.add({"rl.aggregation", "rl.algorithm"},
                   "is AGG_SEQ_MEAN_TOKEN_SUM_NORM, but RL_GSPO's loss is a mean over "
                   "completions whose ratio is already normalised by its length",
                   "leave rl.aggregation unset with RL_GSPO");
    }
  }
  const double tis_cap = rl.rollout_correction().tis_cap();
  if (!(tis_cap == 0 || (tis_cap >= 1 && std::isfinite(tis_cap)))) {
    problems.add("rl.rollout_correction.tis_cap",
                 absl::StrCat("must be 0 (off) or finite >= 1, got ", tis_cap,
                              " (it caps importance weights near 1; below 1 it would cap "
                              "every on-policy token)"),
                 "set rl { rollout_correction { tis_cap: 2 } } or leave it 0");
  }
  problems.positive_real("rl.lr", rl.lr());
  problems.positive_real("rl.critic_lr", rl.critic_lr());
  in_unit_interval("rl.gamma", rl.gamma(), true);
  in_unit_interval("rl.lam", rl.lam(), true);
  problems.positive_real("rl.value_clip", rl.value_clip());
  problems.non_negative("rl.eval_interval", rl.eval_interval());
  problems.non_negative("rl.eval_examples", rl.eval_examples());
  problems.at_most("rl.eval_examples", rl.eval_examples(), kMaxExamples,
                   "prompts scored at every evaluation");
  problems.non_negative_real("rl.balance_loss_scale", rl.balance_loss_scale(),
                             "0 = no load balancing during RL");
  problems.positive("rl.log_interval", rl.log_interval());
}

// rl.routing_replay needs MoE layers: checked on the resolved experiment (the checkpoint's
// model).
void validate_routing_replay(const Experiment& e, ConfigProblems& problems) {
  if (e.rl().routing_replay() == RlConfig::REPLAY_OFF || model_spec_from_config(e).has_moe()) {
    return;
  }
  problems.add(
      "rl.routing_replay",
      absl::StrCat("is ", RlConfig::RoutingReplay_Name(e.rl().routing_replay()),
                   ", but the model is dense (model.first_k_dense = ", e.model().first_k_dense(),
                   " of ", e.model().n_layers(), " layers): it has no expert routing to replay"),
      "leave rl.routing_replay at REPLAY_OFF, or start from a MoE checkpoint");
}

// What a fine-tuning config as written must hold besides the ranges.
void validate_rl_config(const Experiment& experiment, ConfigProblems& problems) {
  if (experiment.rl().init_checkpoint().empty()) {
    problems.add("rl.init_checkpoint", "is empty",
                 "set rl { init_checkpoint: \"runs/tiny\" } to the run directory of a "
                 "pretraining run");
  }
  if (experiment.precision() == Experiment::PRECISION_BF16) {
    problems.add(
        "precision",
        "is PRECISION_BF16, but switchyard rl runs its policy, reference and critic in f32",
        "set precision: PRECISION_AUTO (f32 for rl) or PRECISION_F32");
  }
  for (const auto& [set, block] :
       {std::pair{experiment.has_model(), "model"}, std::pair{experiment.has_moe(), "moe"},
        std::pair{experiment.has_mtp(), "mtp"}}) {
    if (set) {
      problems.add(block, "is set, but an RL config takes the model from rl.init_checkpoint's run",
                   absl::StrCat("remove the ", block, " block"));
    }
  }
  validate_rl_ranges(experiment.rl(), problems);
}

}  // namespace

ConfigRules rl_config_rules() {
  return {.model_from_checkpoint = true, .extra = validate_rl_config};
}

ConfigRules rl_experiment_rules() {
  auto extra = [](const Experiment& e, ConfigProblems& p) {
    validate_rl_ranges(e.rl(), p);
    validate_routing_replay(e, p);
  };
  return {.model_from_checkpoint = false, .extra = extra};
}

absl::StatusOr<Experiment> load_rl_config(const std::string& config_path,
                                          const std::vector<std::string>& overrides) {
  return load_experiment(config_path, overrides, rl_config_rules());
}

absl::StatusOr<switchyard::Experiment> resolve_rl_experiment(
    const switchyard::Experiment& rl_config) {
  const std::string& init = rl_config.rl().init_checkpoint();
  if (init.empty()) {
    return absl::InvalidArgumentError(
        "rl.init_checkpoint: is empty; set rl { init_checkpoint: \"runs/tiny\" } to the run "
        "directory of a pretraining run");
  }
  for (const auto& [set, name] :
       {std::pair{rl_config.has_model(), "model"}, std::pair{rl_config.has_moe(), "moe"},
        std::pair{rl_config.has_mtp(), "mtp"}}) {
    if (set) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": an RL config takes the model from rl.init_checkpoint (", init,
                       "/config.textproto); remove the ", name, " block"));
    }
  }
  const std::string saved = (fs::path(init) / "config.textproto").string();
  // A Hugging Face checkpoint directory describes its model in config.json.
  const bool hf = is_hf_checkpoint(init);
  if (!hf && !fs::exists(saved)) {
    return absl::NotFoundError(absl::StrCat("rl.init_checkpoint: ", init,
                                            " has no config.textproto; is it the run directory "
                                            "of a pretraining run (e.g. runs/tiny), or a Hugging "
                                            "Face checkpoint (config.json)?"));
  }
  auto pretrained = hf ? experiment_from_hf(init) : load_experiment(saved, {});
  if (!pretrained.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rl.init_checkpoint: ", init, ": ", pretrained.status().message()));
  }
  switchyard::Experiment merged = rl_config;
  *merged.mutable_model() = pretrained->model();
  *merged.mutable_moe() = pretrained->moe();
  *merged.mutable_mtp() = pretrained->mtp();
  switchyard::TrainConfig train = pretrained->train();
  train.MergeFrom(rl_config.train());
  *merged.mutable_train() = train;
  if (!rl_config.has_data()) *merged.mutable_data() = pretrained->data();
  // Now a whole experiment: the checkpoint's model against this run's layout, and the rest.
  SY_RETURN_IF_ERROR(validate_experiment(merged, ConfigSources(), rl_experiment_rules()));
  return merged;
}

absl::StatusOr<std::unique_ptr<RewardTask>> make_reward_task(const RlConfig& rl) {
  const RewardOptions reward{.format_weight = rl.format_weight()};
  if (rl.task() == RlConfig::TASK_MATH) {
    const switchyard::RlPromptFile& f = rl.prompt_file();
    PromptFileOptions options{.train_file = f.train_file(),
                              .eval_file = f.eval_file(),
                              .prompt_field = f.prompt_field(),
                              .answer_field = f.answer_field(),
                              .max_completion_tokens = rl.max_new_tokens(),
                              .seed = rl.seed()};
    if (rl.max_new_tokens() <= 0)
      return absl::InvalidArgumentError(
          "rl.max_new_tokens: must be set (> 0) for TASK_MATH: a free-form answer has no "
          "natural length");
    auto task = MathPromptFileTask::create(options, reward);
    if (!task.ok())
      return absl::InvalidArgumentError(absl::StrCat("rl.prompt_file: ", task.status().message()));
    if (rl.eval_examples() > (*task)->eval_size())
      return absl::InvalidArgumentError(absl::StrCat(
          "rl.eval_examples: ", rl.eval_examples(), " held-out prompts asked for, but ",
          f.eval_file().empty() ? std::string("rl.prompt_file.eval_file is not set")
                                : absl::StrCat(f.eval_file(), " has ", (*task)->eval_size()),
          "; set rl.eval_examples to at most that (0 = no evaluation)"));
    return std::unique_ptr<RewardTask>(std::move(*task));
  }
  if (rl.task() == RlConfig::TASK_COUNTDOWN) {
    const switchyard::RlCountdownTask& c = rl.countdown();
    CountdownOptions options{.min_count = c.min_count(),
                             .max_count = c.max_count(),
                             .min_number = c.min_number(),
                             .max_number = c.max_number(),
                             .min_target = c.min_target(),
                             .max_target = c.max_target(),
                             .operators = c.operators(),
                             .use_all_numbers = c.use_all_numbers()};
    auto task = CountdownTask::create(options, rl.seed(), reward);
    if (!task.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("rl.countdown: ", task.status().message()));
    }
    return std::unique_ptr<RewardTask>(std::make_unique<CountdownTask>(std::move(*task)));
  }
  const switchyard::RlArithmeticTask& a = rl.arithmetic();
  ArithmeticOptions options{
      .min_digits = a.min_digits(), .max_digits = a.max_digits(), .operators = a.operators()};
  auto task = ArithmeticRewardTask::create(options, rl.seed(), reward);
  if (!task.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("rl.arithmetic: ", task.status().message()));
  }
  return std::unique_ptr<RewardTask>(std::make_unique<ArithmeticRewardTask>(std::move(*task)));
}

absl::StatusOr<std::string> rl_config_text(const std::string& config_path,
                                           const std::vector<std::string>& overrides) {
  SY_ASSIGN_OR_RETURN(const Experiment parsed, parse_experiment(config_path, overrides));
  if (parsed.has_model()) {
    // Resolved already (an RL run's config.textproto): what --resume runs.
    SY_ASSIGN_OR_RETURN(const Experiment resolved,
                        load_experiment(config_path, overrides, rl_experiment_rules()));
    return resolved_experiment_text(resolved);
  }
  SY_ASSIGN_OR_RETURN(const Experiment rl_config, load_rl_config(config_path, overrides));
  const std::string& init = rl_config.rl().init_checkpoint();
  std::error_code ec;
  if (!is_hf_checkpoint(init) && !fs::exists(fs::path(init) / "config.textproto", ec)) {
    // Checked as far as it can be without the checkpoint: a config may well be written
    // before the run it starts from has finished.
    Experiment shown = with_defaults_set(rl_config);
    shown.clear_model();
    shown.clear_moe();
    shown.clear_mtp();
    return absl::StrCat("# model, moe and mtp come from rl.init_checkpoint (", init,
                        "), which has no config.textproto yet;\n# train and data fall back to "
                        "its settings where this config leaves them out.\n",
                        experiment_to_text(shown));
  }
  SY_ASSIGN_OR_RETURN(const Experiment resolved, resolve_rl_experiment(rl_config));
  return resolved_experiment_text(resolved);
}

}  // namespace sy::rl
