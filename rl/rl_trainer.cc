#include "rl/rl_trainer.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/check.h"
#include "kernels/cpu/threads.h"
#include "kernels/hash.h"
#include "kernels/profile.h"
#include "models/model_spec.h"
#include "models/rollout/engine.h"
#include "models/rollout/kv_pool.h"
#include "rl/prompt_file_task.h"
#include "rl/rl_config.h"
#include "trainer/checkpoint.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/json.h"
#include "trainer/run.h"
#include "trainer/safetensors.h"
#include "trainer/train.h"

namespace sy::rl {
namespace fs = std::filesystem;
namespace {

using switchyard::RlConfig;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void copy_weights_by_name(ParamStore& from, ParamStore& to) {
  for (Param* p : to.params()) {
    if (const Param* q = from.find(p->name)) p->value.copy_from(q->value);
  }
  to.values_changed();
}

KlEstimator estimator_of(RlConfig::KlEstimator e) {
  switch (e) {
    case RlConfig::KL_K1:
      return KlEstimator::kK1;
    case RlConfig::KL_K2:
      return KlEstimator::kK2;
    case RlConfig::KL_K3:
      return KlEstimator::kK3;
  }
  return KlEstimator::kK3;
}

AggregationMode aggregation_of(RlConfig::Aggregation a) {
  switch (a) {
    case RlConfig::AGG_TOKEN_MEAN:
      return AggregationMode::kTokenMean;
    case RlConfig::AGG_SEQ_MEAN_TOKEN_MEAN:
      return AggregationMode::kSeqMeanTokenMean;
    case RlConfig::AGG_SEQ_MEAN_TOKEN_SUM_NORM:
      return AggregationMode::kSeqMeanTokenSumNorm;
  }
  return AggregationMode::kTokenMean;
}

const char* algorithm_name(RlConfig::Algorithm a) {
  switch (a) {
    case RlConfig::RL_GRPO:
      return "GRPO";
    case RlConfig::RL_PPO:
      return "PPO";
    case RlConfig::RL_GSPO:
      return "GSPO";
  }
  return "unknown";
}

std::string critic_run_dir(const std::string& run_dir) {
  return (fs::path(run_dir) / "critic").string();
}

std::string rl_state_path(const std::string& run_dir, int64_t step) {
  return (fs::path(run_dir) / "rl_state" / absl::StrFormat("step_%08d.json", step)).string();
}

}  // namespace

MemoryEstimate estimate_rl_memory(const ModelSpec& spec, const RlMemoryPlan& plan) {
  MemoryEstimate total = estimate_memory(spec, plan.policy);
  MemoryPlan frozen = plan.policy;
  frozen.training = false;
  total.weight_bytes += estimate_memory(spec, frozen).weight_bytes;  // the reference
  if (plan.critic) {
    // Its forward and backward come after the policy's: the activations are counted once.
    MemoryPlan critic = plan.policy;
    critic.micro_batch = 0;
    const MemoryEstimate c = estimate_memory(spec, critic);
    total.weight_bytes += c.weight_bytes;
    total.gradient_bytes += c.gradient_bytes;
    total.optimizer_bytes += c.optimizer_bytes;
  }
  // The engine generate() builds for the rollouts: as many rows as the step samples, up to
  // the default max_rows, each as long as a row gets.
  const EngineOptions engine{.max_rows = std::min(plan.rollout_rows, EngineOptions{}.max_rows),
                             .max_len = plan.rollout_len};
  const KvPoolShape pool{.layers = spec.n_layers,
                         .slots = engine.max_rows,
                         .max_len = engine.max_len,
                         .kv_heads = spec.n_kv_heads,
                         .head_dim = spec.head_dim()};
  total.kv_cache_bytes = pool.bytes(plan.policy.compute);
  // The forwards' working memory beside the pool counts as activations, like the policy's.
  total.activation_bytes += estimate_rollout_workspace_bytes(spec, engine, plan.policy.compute);
  return total;
}

RlTrainer::~RlTrainer() = default;

absl::StatusOr<std::unique_ptr<RlTrainer>> RlTrainer::create(const switchyard::Experiment& config,
                                                             Communicator& world,
                                                             std::unique_ptr<RewardTask> task) {
  std::unique_ptr<RlTrainer> t(new RlTrainer());
  t->config_ = config;
  t->rl_ = config.rl();
  t->world_ = &world;
  const RlConfig& rl = t->rl_;
  cpu::set_cpu_threads(config.train().cpu_threads());
  const ModelSpec spec = model_spec_from_config(config);
  const int ep = config.parallel().expert_parallel_size();
  SY_ASSIGN_OR_RETURN(const Device device, choose_device(config, world));
  SY_ASSIGN_OR_RETURN(
      ProcessGrid grid,
      ProcessGrid::create(world, ep, spec.has_moe() ? spec.moe.num_experts : ep, device));
  t->grid_ = std::make_unique<ProcessGrid>(std::move(grid));
  // The grid's world carries this device's tensors (NCCL between GPUs): the models, the
  // optimizers and the gradient syncs use it; `world` keeps the host-side bookkeeping.
  Communicator& device_world = t->grid_->world();

  if (task) {
    t->task_ = std::move(task);
  } else {
    SY_ASSIGN_OR_RETURN(t->task_, make_reward_task(rl));
  }
  // The tokenizer travels with the run directory that also holds the initial weights; a
  // trainer made without one (weights loaded later from elsewhere, as tests do) has bytes.
  std::error_code exists_error;
  if (rl.init_checkpoint().empty() ||
      !std::filesystem::is_directory(rl.init_checkpoint(), exists_error)) {
    t->tokenizer_ = make_byte_tokenizer();
  } else {
    auto tokenizer = load_tokenizer(rl.init_checkpoint());
    if (!tokenizer.ok())
      return absl::InvalidArgumentError(
          absl::StrCat("rl.init_checkpoint: ", tokenizer.status().message()));
    t->tokenizer_ = std::move(*tokenizer);
  }
  // Byte models may be smaller than 256 (the tasks' prompts use few bytes): for them the
  // prompts' ids are checked below instead.
  if (t->tokenizer_->kind() != "bytes" && t->tokenizer_->vocab_size() > spec.vocab_size)
    return absl::InvalidArgumentError(absl::StrCat(
        "model.vocab_size: ", spec.vocab_size, " is smaller than the ", t->tokenizer_->kind(),
        " tokenizer's ", t->tokenizer_->vocab_size(), " tokens (rl.init_checkpoint's)"));
  SY_ASSIGN_OR_RETURN(t->prompt_template_,
                      PromptTemplate::parse(rl.prompt_template(), "rl.prompt_template"));
  int64_t longest_prompt = 0;  // of these sixteen, for the memory estimate
  for (uint64_t i = 0; i < 16; ++i) {
    const Prompt prompt = t->task_->sample(i, Split::kTrain);
    const std::string text = t->prompt_template_.apply(prompt.text);
    auto ids = t->tokenizer_->encode(text, /*add_special_tokens=*/true);
    if (!ids.ok())
      return absl::InvalidArgumentError(absl::StrCat("rl: prompt ", i, " of the ",
                                                     std::string(t->task_->name()),
                                                     " task: ", ids.status().message()));
    for (int32_t id : *ids) {
      if (id >= spec.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("model.vocab_size: ", spec.vocab_size, " cannot hold token ", id,
                         " of the ", std::string(t->task_->name()),
                         " task's prompts; pick a checkpoint whose vocabulary fits"));
      }
    }
    longest_prompt = std::max(longest_prompt, static_cast<int64_t>(ids->size()));
  }
  t->max_new_tokens_ = rl.max_new_tokens() > 0
                           ? rl.max_new_tokens()
                           : static_cast<int>(t->task_->max_completion_tokens());
  t->batch_rows_ = int64_t{rl.prompts_per_step()} * rl.group_size();
  // A user's prompt set is checked whole here (it is small next to a run), so a prompt too
  // long for the context fails now rather than mid-run.
  if (const auto* file_task = dynamic_cast<const MathPromptFileTask*>(t->task_.get())) {
    for (const auto& [split, count] : {std::pair{Split::kTrain, file_task->train_size()},
                                       std::pair{Split::kHeldOut, file_task->eval_size()}}) {
      for (int64_t i = 0; i < count; ++i) {
        const Prompt prompt = t->task_->sample(static_cast<uint64_t>(i), split);
        auto ids = t->tokenizer_->encode(t->prompt_template_.apply(prompt.text), true);
        if (!ids.ok())
          return absl::InvalidArgumentError(absl::StrCat("rl.prompt_file: prompt \"",
                                                         prompt.text.substr(0, 60),
                                                         "\": ", ids.status().message()));
        if (static_cast<int64_t>(ids->size()) + t->max_new_tokens_ > spec.seq_len)
          return absl::InvalidArgumentError(absl::StrCat(
              "rl.prompt_file: the prompt \"", prompt.text.substr(0, 60), "...\" is ", ids->size(),
              " tokens (with rl.prompt_template); with rl.max_new_tokens ", t->max_new_tokens_,
              " it does not fit model.seq_len ", spec.seq_len,
              "; shorten it or lower rl.max_new_tokens"));
      }
    }
  }

  // The training runtime's precision (bf16 compute copies over f32 master weights and AdamW
  // state on a GPU); log-softmax, ratios, KL, advantages and the losses stay f32.
  SY_ASSIGN_OR_RETURN(const DType compute, choose_precision(config, device));
  const bool ppo = rl.algorithm() == RlConfig::RL_PPO;
  // Refuse what cannot fit before building three models, rather than fail partway. The rows
  // are as long as a step can make them: a prompt and a completion that runs to its budget.
  const int64_t row_len = std::min<int64_t>(spec.seq_len, longest_prompt + t->max_new_tokens_);
  const int64_t zero1_shards =
      config.parallel().zero_stage() == 1 ? std::max<int64_t>(1, world.size() / ep) : 1;
  const RlMemoryPlan memory{
      .policy = {.compute = compute,
                 .moments = moment_dtype_of(config.optimizer().moment_dtype()),
                 .expert_parallel = ep,
                 .optimizer_shards = zero1_shards,
                 .micro_batch = t->batch_rows_ / rl.minibatches(),
                 .seq_len = row_len},
      .critic = ppo,
      .rollout_rows = t->batch_rows_,
      .rollout_len = row_len};
  SY_RETURN_IF_ERROR(agree_on_status(
      world,
      check_memory_fits(
          estimate_rl_memory(spec, memory), available_memory_bytes(device), device,
          absl::StrCat("RL with ", algorithm_name(rl.algorithm()),
                       ppo ? " (policy, reference and critic)" : " (policy and reference)"),
          "pick a smaller model (rl.init_checkpoint), spread the experts over more ranks "
          "(parallel.expert_parallel_size), or lower the rows per update (rl.prompts_per_step "
          "x rl.group_size / rl.minibatches) or rl.max_new_tokens")));
  const ModelParallel parallel{.world = &device_world, .ep = &t->grid_->ep()};
  t->policy_store_ = std::make_unique<ParamStore>(device, compute);
  t->policy_ = std::make_unique<Transformer>(spec, *t->policy_store_, parallel);
  t->policy_store_->initialize(config.train().seed());
  t->ref_store_ = std::make_unique<ParamStore>(device, compute);
  t->ref_ = std::make_unique<Transformer>(spec, *t->ref_store_, parallel);
  if (ppo) {
    t->critic_store_ = std::make_unique<ParamStore>(device, compute);
    t->critic_ = std::make_unique<Transformer>(spec, *t->critic_store_, parallel, true);
    t->critic_store_->initialize(config.train().seed());  // the value head: zeros
  }
  t->reset_reference_to_policy();

  const OptimizerSettings settings = optimizer_settings(config.optimizer());
  const OptimizerParallel opt_parallel{.world = &device_world,
                                       .ep = &t->grid_->ep(),
                                       .edp = &t->grid_->edp(),
                                       .zero1 = config.parallel().zero_stage() == 1};
  t->policy_opt_ = std::make_unique<AdamW>(*t->policy_store_, settings, opt_parallel);
  t->policy_sync_ = make_gradient_sync(*t->policy_store_, device_world, t->grid_->edp());
  if (ppo) {
    t->critic_opt_ = std::make_unique<AdamW>(*t->critic_store_, settings, opt_parallel);
    t->critic_sync_ = make_gradient_sync(*t->critic_store_, device_world, t->grid_->edp());
  }
  t->set_balance_scale(*t->policy_, rl.balance_loss_scale());
  if (t->critic_) t->set_balance_scale(*t->critic_, rl.balance_loss_scale());

  t->estimator_ = estimator_of(rl.kl_estimator());
  t->kl_ = rl.target_kl() > 0
               ? KlController::adaptive(rl.kl_coef(), rl.target_kl(), rl.kl_horizon())
               : KlController::fixed(rl.kl_coef());
  t->loss_options_ = PolicyLossOptions{
      .clip_low = rl.clip_low(),
      .clip_high = rl.clip_high(),
      .dual_clip = rl.dual_clip(),
      // GSPO weighs every completion the same (rl/policy_loss.h): its loss is normalised
      // over the minibatch as seq-mean-token-mean is, whatever rl.aggregation says.
      .aggregation = {.mode = rl.algorithm() == RlConfig::RL_GSPO
                                  ? AggregationMode::kSeqMeanTokenMean
                                  : aggregation_of(rl.aggregation()),
                      .norm_length = t->max_new_tokens_},
      .kl_coef = 0,
      .kl_estimator = t->estimator_};

  absl::Status started = absl::OkStatus();
  if (world.rank() == 0 && rl.reward_command_size() > 0) {
    std::vector<std::string> argv(rl.reward_command().begin(), rl.reward_command().end());
    auto command =
        RewardCommand::start(std::move(argv), std::chrono::milliseconds(rl.reward_timeout_ms()));
    if (command.ok()) {
      t->command_ = std::move(*command);
    } else {
      started = absl::InvalidArgumentError(
          absl::StrCat("rl.reward_command: ", command.status().message()));
    }
  }
  SY_RETURN_IF_ERROR(agree_on_status(world, started));
  return t;
}

void RlTrainer::set_balance_scale(Transformer& model, double scale) {
  for (MoeFfn* m : model.moe_layers()) m->set_loss_scale(static_cast<float>(scale));
}

void RlTrainer::reset_reference_to_policy() {
  copy_weights_by_name(*policy_store_, *ref_store_);
  if (critic_store_) copy_weights_by_name(*policy_store_, *critic_store_);
}

absl::Status RlTrainer::load_policy_weights(const std::string& checkpoint_dir,
                                            std::ostream* progress) {
  absl::Status loaded;
  if (is_hf_checkpoint(checkpoint_dir)) {
    // Each rank reads only the tensors it holds (its experts, under expert parallelism).
    loaded = load_hf_weights(checkpoint_dir, *policy_store_, progress);
  } else {
    // Any layout's checkpoint: each rank reads its own experts' rows (trainer/reshard.h).
    loaded = load_checkpoint(checkpoint_dir, *policy_store_, nullptr, checkpoint_layout(), progress)
                 .status();
  }
  SY_RETURN_IF_ERROR(agree_on_status(*world_, loaded));
  reset_reference_to_policy();
  return absl::OkStatus();
}

std::pair<int64_t, int64_t> RlTrainer::minibatch_rows(int64_t index) const {
  const int64_t size = batch_rows_ / rl_.minibatches();
  return {index * size, (index + 1) * size};
}

std::vector<int64_t> RlTrainer::minibatch_order(int64_t step, int epoch) const {
  std::vector<int64_t> order(batch_rows_);
  std::iota(order.begin(), order.end(), 0);
  if (!rl_.shuffle_minibatches() || rl_.minibatches() == 1) return order;
  // Sort by a hash of each row's global completion index: a pure function of the
  // coordinates, like every other draw of the run.
  constexpr uint64_t kSalt = 0x6d696e6962617463ull;  // "minibatc"
  const uint64_t key = mix64(mix64(mix64(rl_.seed() ^ kSalt) ^ static_cast<uint64_t>(step)) ^
                             static_cast<uint64_t>(epoch));
  const uint64_t first =
      static_cast<uint64_t>((step * world_->size() + world_->rank()) * batch_rows_);
  std::vector<uint64_t> rank(batch_rows_);
  for (int64_t i = 0; i < batch_rows_; ++i) rank[i] = mix64(key ^ (first + i));
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rank[a] < rank[b]; });
  return order;
}

absl::StatusOr<StepMetrics> RlTrainer::step(int64_t step) {
  StepMetrics metrics;
  metrics.step = step + 1;
  // Each phase ends with the device idle, so its clock holds its own GPU work.
  const Device dev = policy_store_->device();
  Clock::time_point start = Clock::now();
  SY_ASSIGN_OR_RETURN(Rollouts rollouts, rollout(step));
  profile::sync(dev);
  metrics.rollout_s = seconds_since(start);
  start = Clock::now();
  SY_RETURN_IF_ERROR(score(rollouts));
  metrics.scoring_s = seconds_since(start);
  start = Clock::now();
  const Batch batch = make_batch(rollouts, metrics);
  profile::sync(dev);
  metrics.logprobs_s = seconds_since(start);
  start = Clock::now();
  update(batch, metrics);
  profile::sync(dev);
  metrics.update_s = seconds_since(start);
  skipped_in_row_ = metrics.skipped.empty() ? 0 : skipped_in_row_ + 1;
  metrics.skipped_in_row = skipped_in_row_;
  const int max_skipped = config_.train().max_skipped_steps();
  if (skipped_in_row_ > max_skipped) {
    return absl::AbortedError(absl::StrFormat(
        "rl step %d: %d steps in a row changed no weights (last: %s), more than "
        "train.max_skipped_steps = %d: the run diverged. No non-finite batch or update was "
        "applied, so every checkpoint holds finite weights; lower rl.lr (now %g)%s, check the "
        "task's rewards, then resume from a checkpoint written before the run went bad",
        step + 1, skipped_in_row_, metrics.skipped, max_skipped, rl_.lr(),
        rl_.algorithm() == RlConfig::RL_PPO
            ? absl::StrFormat(" and rl.critic_lr (now %g)", rl_.critic_lr())
            : std::string()));
  }
  return metrics;
}

CheckpointLayout RlTrainer::checkpoint_layout() const {
  return {.world = world_,
          .expert_parallel = grid_->layout().expert_parallel,
          .zero_stage = config_.parallel().zero_stage()};
}

absl::Status RlTrainer::save(const std::string& run_dir, int64_t steps_done,
                             std::ostream* progress) {
  const CheckpointState state{
      .step = steps_done,
      .seed = rl_.seed(),
      .data = {.next_index = steps_done * world_->size() * rl_.prompts_per_step()}};
  const int keep = config_.checkpoint().keep_last();
  // The critic and the state first: the policy's `latest` is what a resumed run goes by.
  if (critic_) {
    SY_RETURN_IF_ERROR(save_checkpoint(critic_run_dir(run_dir), state, *critic_store_, *critic_opt_,
                                       keep, checkpoint_layout(), progress));
  }
  absl::Status wrote;
  if (world_->rank() == 0) {
    std::error_code ec;
    fs::create_directories(fs::path(run_dir) / "rl_state", ec);
    const std::string text =
        absl::StrFormat(R"({"step": %d, "kl_coef": %.17g})", steps_done, kl_.coef());
    const std::string_view piece = text;
    wrote = write_file_atomically(rl_state_path(run_dir, steps_done), {&piece, 1});
  }
  SY_RETURN_IF_ERROR(agree_on_status(*world_, wrote));
  return save_checkpoint(run_dir, state, *policy_store_, *policy_opt_, keep, checkpoint_layout(),
                         progress);
}

absl::StatusOr<int64_t> RlTrainer::restore(const std::string& run_dir, std::ostream* progress) {
  auto dir = latest_checkpoint(run_dir);
  SY_RETURN_IF_ERROR(agree_on_status(*world_, dir.status()));
  auto state =
      load_checkpoint(*dir, *policy_store_, policy_opt_.get(), checkpoint_layout(), progress);
  SY_RETURN_IF_ERROR(agree_on_status(*world_, state.status()));
  const int64_t step = state->step;
  if (critic_) {
    const std::string critic_dir =
        (fs::path(critic_run_dir(run_dir)) / "checkpoints" / fs::path(*dir).filename()).string();
    auto critic = load_checkpoint(critic_dir, *critic_store_, critic_opt_.get(),
                                  checkpoint_layout(), progress);
    absl::Status loaded = critic.status();
    if (!loaded.ok()) {
      loaded = absl::NotFoundError(absl::StrCat("the critic of ", *dir, ": ", loaded.message(),
                                                " (a PPO run writes it beside the policy)"));
    }
    SY_RETURN_IF_ERROR(agree_on_status(*world_, loaded));
  }
  const std::string path = rl_state_path(run_dir, step);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = parse_json(text.str());
  const Json* coef = parsed.ok() && parsed->is_object() ? parsed->find("kl_coef") : nullptr;
  absl::Status read = absl::OkStatus();
  if (coef == nullptr || !coef->is_number() || !(coef->as_double() >= 0)) {
    read = absl::DataLossError(
        absl::StrCat(path, ": missing or unreadable (it holds the KL coefficient of step ", step,
                     " and is written before the checkpoint)"));
  }
  SY_RETURN_IF_ERROR(agree_on_status(*world_, read));
  if (kl_.is_adaptive()) {
    kl_ = KlController::adaptive(coef->as_double(), rl_.target_kl(), rl_.kl_horizon());
  }
  return step;
}

std::string RlTrainer::describe() const {
  std::string kl = "KL off";
  if (rl_.kl_coef() > 0) {
    kl = absl::StrFormat("KL %s %s beta %.3g%s", kl_estimator_name(estimator_),
                         rl_.kl_in_reward() ? "in reward" : "in loss", rl_.kl_coef(),
                         rl_.target_kl() > 0
                             ? absl::StrFormat(" (adaptive, target %.3g)", rl_.target_kl())
                             : std::string());
  }
  const double tis_cap = rl_.rollout_correction().tis_cap();
  const std::string tis = tis_cap > 0 ? absl::StrFormat(" | TIS cap %.3g", tis_cap) : std::string();
  const std::string replay =
      rl_.routing_replay() == RlConfig::REPLAY_ROLLOUT ? " | routing replay" : "";
  return absl::StrFormat(
      "rl: %s | task %s | %d prompts x %d completions per rank, up to %d new tokens, "
      "temperature %.2g | %d epoch(s) x %d minibatch(es), lr %.1e | clip [%.2g, %.2g] | "
      "%s | %s%s%s",
      algorithm_name(rl_.algorithm()), std::string(task_->name()), rl_.prompts_per_step(),
      rl_.group_size(), max_new_tokens_, rl_.temperature(), rl_.epochs(), rl_.minibatches(),
      rl_.lr(), rl_.clip_low(), rl_.clip_high(),
      aggregation_mode_name(loss_options_.aggregation.mode), kl, tis, replay);
}

}  // namespace sy::rl
