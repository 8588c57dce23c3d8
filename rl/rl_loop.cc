#include "rl/rl_loop.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <span>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "kernels/cpu/threads.h"
#include "kernels/elementwise.h"
#include "kernels/hash.h"
#include "kernels/profile.h"
#include "models/generate.h"
#include "models/model_spec.h"
#include "parallel/local_communicator.h"
#include "rl/advantages.h"
#include "rl/countdown.h"
#include "rl/prompt_file_task.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/json.h"
#include "trainer/progress.h"
#include "trainer/safetensors.h"
#include "trainer/tensorboard.h"
#include "trainer/tokenizer.h"
#include "trainer/train.h"

namespace sy::rl {
namespace fs = std::filesystem;
namespace {

using switchyard::RlConfig;
using Clock = std::chrono::steady_clock;

BatchHook g_batch_hook;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The same status on every rank: this rank's error, else the first failing rank's, else OK.
// Ranks that went on after a local failure would wait forever in the next collective.
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

std::string byte_completion_text(const std::vector<int32_t>& ids) {
  std::string text;
  for (int32_t t : ids) text.push_back(t >= 0 && t < 256 ? static_cast<char>(t) : '?');
  return text;
}

// Length-prefixed strings ("3:abc0:"), for gathering byte strings of any content.
std::string pack(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) absl::StrAppend(&out, s.size(), ":", s);
  return out;
}

std::vector<std::string> unpack(const std::string& packed) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < packed.size()) {
    const size_t colon = packed.find(':', at);
    SY_CHECK(colon != std::string::npos) << "malformed packed strings";
    const size_t n = std::stoul(packed.substr(at, colon - at));
    out.push_back(packed.substr(colon + 1, n));
    at = colon + 1 + n;
  }
  return out;
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

// aggregation_weights() normalises within the batch it is given: by its response tokens
// (token-mean), its rows with response tokens (seq-mean-token-mean) or all its rows
// (seq-mean-token-sum-norm). Multiplying a rank's loss and gradient by local / global of
// that normaliser, with the global one counting the rows that carry loss over every rank,
// gives one normalisation over the global minibatch. Returns {scale, global normaliser}.
std::pair<double, double> global_loss_scale(const Tensor& mask, AggregationMode mode,
                                            Communicator& world) {
  const int64_t rows = mask.dim(0), cols = mask.dim(1);
  const float* m = mask.data<float>();
  double tokens = 0, active_rows = 0;
  for (int64_t b = 0; b < rows; ++b) {
    double n = 0;
    for (int64_t t = 0; t < cols; ++t) n += m[b * cols + t];
    tokens += n;
    active_rows += n > 0;
  }
  double local = 0;
  std::vector<double> global(1, 0.0);
  switch (mode) {
    case AggregationMode::kTokenMean:
      local = global[0] = tokens;
      break;
    case AggregationMode::kSeqMeanTokenMean:
      local = global[0] = active_rows;
      break;
    case AggregationMode::kSeqMeanTokenSumNorm:
      local = static_cast<double>(rows);
      global[0] = active_rows;
      break;
  }
  world.all_reduce_host(global, ReduceOp::kSum);
  return {global[0] > 0 ? local / global[0] : 0.0, global[0]};
}

// rl/advantages.h's whiten_advantages over the response tokens of every rank's batch.
void whiten_over_world(const Tensor& advantages, const Tensor& mask, Communicator& world) {
  const float* m = mask.data<float>();
  float* a = advantages.data<float>();
  std::vector<double> sums = {0, 0};
  for (int64_t i = 0; i < mask.numel(); ++i) {
    if (m[i] == 0) continue;
    sums[0] += a[i];
    sums[1] += 1;
  }
  world.all_reduce_host(sums, ReduceOp::kSum);
  if (sums[1] < 2) return;  // nothing to whiten
  const double mean = sums[0] / sums[1];
  std::vector<double> ss = {0};
  for (int64_t i = 0; i < mask.numel(); ++i)
    if (m[i] != 0) ss[0] += (a[i] - mean) * (a[i] - mean);
  world.all_reduce_host(ss, ReduceOp::kSum);
  const double inv_std = 1 / std::sqrt(ss[0] / (sums[1] - 1) + 1e-8);
  for (int64_t i = 0; i < mask.numel(); ++i)
    a[i] = m[i] == 0 ? 0.0f : static_cast<float>((a[i] - mean) * inv_std);
}

// Rows `picked` of t (a view of rows [lo, lo + n) when they are exactly those, in order).
Tensor take_rows(const Tensor& t, int64_t lo, std::span<const int64_t> picked) {
  const int64_t n = static_cast<int64_t>(picked.size());
  bool in_order = true;
  for (int64_t i = 0; i < n && in_order; ++i) in_order = picked[i] == lo + i;
  if (in_order) return t.rows(lo, lo + n);
  Shape shape = t.shape();
  shape[0] = n;
  Tensor out = Tensor::empty(shape, t.dtype(), t.device());
  for (int64_t i = 0; i < n; ++i) out.rows(i, i + 1).copy_from(t.rows(picked[i], picked[i] + 1));
  return out;
}

const char* algorithm_name(RlConfig::Algorithm a) { return a == RlConfig::RL_PPO ? "PPO" : "GRPO"; }

std::string critic_run_dir(const std::string& run_dir) {
  return (fs::path(run_dir) / "critic").string();
}

std::string rl_state_path(const std::string& run_dir, int64_t step) {
  return (fs::path(run_dir) / "rl_state" / absl::StrFormat("step_%08d.json", step)).string();
}

}  // namespace

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
  SY_RETURN_IF_ERROR(validate_experiment(merged));
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

// ---- RlTrainer ---------------------------------------------------------------------------

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
                                                         prompt.text.substr(0, 60), "\": ",
                                                         ids.status().message()));
        if (static_cast<int64_t>(ids->size()) + t->max_new_tokens_ > spec.seq_len)
          return absl::InvalidArgumentError(absl::StrCat(
              "rl.prompt_file: the prompt \"", prompt.text.substr(0, 60), "...\" is ",
              ids->size(), " tokens (with rl.prompt_template); with rl.max_new_tokens ",
              t->max_new_tokens_, " it does not fit model.seq_len ", spec.seq_len,
              "; shorten it or lower rl.max_new_tokens"));
      }
    }
  }

  // The training runtime's precision (bf16 compute copies over f32 master weights and AdamW
  // state on a GPU); log-softmax, ratios, KL, advantages and the losses stay f32.
  SY_ASSIGN_OR_RETURN(const DType compute, choose_precision(config, device));
  const ModelParallel parallel{.world = &device_world, .ep = &t->grid_->ep()};
  t->policy_store_ = std::make_unique<ParamStore>(device, compute);
  t->policy_ = std::make_unique<Transformer>(spec, *t->policy_store_, parallel);
  t->policy_store_->initialize(config.train().seed());
  t->ref_store_ = std::make_unique<ParamStore>(device, compute);
  t->ref_ = std::make_unique<Transformer>(spec, *t->ref_store_, parallel);
  const bool ppo = rl.algorithm() == RlConfig::RL_PPO;
  if (ppo) {
    t->critic_store_ = std::make_unique<ParamStore>(device, compute);
    t->critic_ = std::make_unique<Transformer>(spec, *t->critic_store_, parallel, true);
    t->critic_store_->initialize(config.train().seed());  // the value head: zeros
  }
  t->reset_reference_to_policy();

  const auto& o = config.optimizer();
  const OptimizerSettings settings{.beta1 = static_cast<float>(o.beta1()),
                                   .beta2 = static_cast<float>(o.beta2()),
                                   .eps = static_cast<float>(o.eps()),
                                   .weight_decay = static_cast<float>(o.weight_decay()),
                                   .grad_clip = static_cast<float>(o.grad_clip()),
                                   .moment_dtype = moment_dtype_of(o.moment_dtype())};
  const OptimizerParallel opt_parallel{.world = &device_world,
                                       .ep = &t->grid_->ep(),
                                       .edp = &t->grid_->edp(),
                                       .zero1 = config.parallel().zero_stage() == 1};
  auto make_sync = [&](ParamStore& store) {
    std::vector<Tensor> dense, expert;
    for (Param* p : store.params()) {
      if (p->trainable) (p->group == SyncGroup::kExpert ? expert : dense).push_back(p->grad);
    }
    return std::make_unique<GradientSync>(dense, expert, device_world, t->grid_->edp());
  };
  t->policy_opt_ = std::make_unique<AdamW>(*t->policy_store_, settings, opt_parallel);
  t->policy_sync_ = make_sync(*t->policy_store_);
  if (ppo) {
    t->critic_opt_ = std::make_unique<AdamW>(*t->critic_store_, settings, opt_parallel);
    t->critic_sync_ = make_sync(*t->critic_store_);
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
      .aggregation = {.mode = aggregation_of(rl.aggregation()), .norm_length = t->max_new_tokens_},
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

absl::Status RlTrainer::load_policy_weights(const std::string& checkpoint_dir) {
  absl::Status loaded;
  if (is_hf_checkpoint(checkpoint_dir)) {
    // Each rank reads only the tensors it holds (its experts, under expert parallelism).
    loaded = load_hf_weights(checkpoint_dir, *policy_store_);
  } else {
    // Any layout's checkpoint: each rank reads its own experts' rows (trainer/reshard.h).
    loaded = load_checkpoint(checkpoint_dir, *policy_store_, nullptr, checkpoint_layout()).status();
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

std::vector<int32_t> RlTrainer::encode_prompt(const Prompt& prompt) const {
  auto ids = tokenizer_->encode(prompt_template_.apply(prompt.text), /*add_special_tokens=*/true);
  // Prompts are valid UTF-8 text from the task (checked on sixteen of them at create); a
  // task that makes other bytes is a programming error.
  SY_CHECK(ids.ok()) << ids.status();
  return *std::move(ids);
}

std::string RlTrainer::completion_text(const std::vector<int32_t>& ids) const {
  if (tokenizer_->kind() == "bytes") return byte_completion_text(ids);
  // A model's vocabulary may be padded past the tokenizer's; an id there has no text.
  std::vector<int32_t> known;
  for (int32_t id : ids)
    if (id >= 0 && id < tokenizer_->vocab_size()) known.push_back(id);
  auto text = tokenizer_->decode(known, /*skip_special_tokens=*/true);
  return text.ok() ? *std::move(text) : std::string();
}

absl::StatusOr<Rollouts> RlTrainer::rollout(int64_t step) {
  Rollouts out;
  out.step = step;
  const int64_t p_count = rl_.prompts_per_step(), g = rl_.group_size();
  const uint64_t first = static_cast<uint64_t>((step * world_->size() + world_->rank()) * p_count);
  std::vector<std::vector<int32_t>> ids;
  for (int64_t p = 0; p < p_count; ++p) {
    out.prompts.push_back(task_->sample(first + p, Split::kTrain));
    const std::vector<int32_t> prompt = encode_prompt(out.prompts.back());
    for (int64_t i = 0; i < g; ++i) ids.push_back(prompt);
  }
  const SamplingOptions options{.temperature = static_cast<float>(rl_.temperature()),
                                .top_p = static_cast<float>(rl_.top_p()),
                                .max_new_tokens = max_new_tokens_,
                                .stop_tokens = tokenizer_->eos_ids(),
                                .seed = rl_.seed()};
  SY_ASSIGN_OR_RETURN(out.completions, generate(*policy_, ids, options, world_, first * g));
  return out;
}

absl::Status RlTrainer::score(Rollouts& rollouts) {
  const int64_t g = rl_.group_size();
  const size_t n = rollouts.completions.size();
  std::vector<std::string> texts(n);
  rollouts.scores.resize(n);
  rollouts.rewards.resize(n);
  for (size_t i = 0; i < n; ++i) {
    texts[i] = completion_text(rollouts.completions[i]);
    rollouts.scores[i] = task_->score(rollouts.prompts[i / g], texts[i]);
    rollouts.rewards[i] = static_cast<float>(rollouts.scores[i].reward);
  }
  if (rl_.reward_command_size() == 0) return absl::OkStatus();

  // The command runs on rank 0 for every rank's completions, in rank order; the rewards come
  // back the same way (as text, so every rank sees exactly what rank 0 parsed).
  const std::vector<std::string> gathered = world_->all_gather_host(pack(texts));
  std::string answer;
  if (world_->rank() == 0) {
    std::vector<Prompt> prompts;
    std::vector<std::string> all_texts;
    const int64_t p_count = rl_.prompts_per_step();
    for (int r = 0; r < world_->size(); ++r) {
      const uint64_t first = static_cast<uint64_t>((rollouts.step * world_->size() + r) * p_count);
      for (int64_t p = 0; p < p_count; ++p)
        prompts.push_back(task_->sample(first + p, Split::kTrain));
      for (std::string& s : unpack(gathered[r])) all_texts.push_back(std::move(s));
    }
    std::vector<RewardQuery> queries;
    for (size_t i = 0; i < all_texts.size(); ++i)
      queries.push_back({.prompt = &prompts[i / g], .completion = all_texts[i]});
    auto rewards = command_->score(queries);
    if (rewards.ok()) {
      std::vector<std::string> numbers;
      for (double r : *rewards) numbers.push_back(absl::StrFormat("%.17g", r));
      answer = absl::StrCat("ok ", absl::StrJoin(numbers, " "));
    } else {
      answer = absl::StrCat("error rl.reward_command: ", rewards.status().message());
    }
  }
  answer = world_->all_gather_host(answer)[0];
  if (answer.rfind("error ", 0) == 0) return absl::FailedPreconditionError(answer.substr(6));
  std::vector<std::string> numbers = absl::StrSplit(answer.substr(3), ' ');
  for (size_t i = 0; i < n; ++i) {
    double r = 0;
    SY_CHECK(absl::SimpleAtod(numbers[world_->rank() * n + i], &r)) << "reward broadcast";
    rollouts.rewards[i] = static_cast<float>(r);
  }
  return absl::OkStatus();
}

void set_batch_hook_for_testing(BatchHook hook) { g_batch_hook = std::move(hook); }

Batch RlTrainer::make_batch(const Rollouts& rollouts, StepMetrics& metrics) {
  const int64_t rows = batch_rows_, g = rl_.group_size();
  SY_CHECK(static_cast<int64_t>(rollouts.completions.size()) == rows) << "rollout size";
  std::vector<std::vector<int32_t>> tokens(rows);
  std::vector<int64_t> prompt_len(rows);
  std::vector<double> longest = {0};
  for (int64_t b = 0; b < rows; ++b) {
    tokens[b] = encode_prompt(rollouts.prompts[b / g]);
    prompt_len[b] = static_cast<int64_t>(tokens[b].size());
    tokens[b].insert(tokens[b].end(), rollouts.completions[b].begin(),
                     rollouts.completions[b].end());
    longest[0] = std::max(longest[0], static_cast<double>(tokens[b].size()));
  }
  // One T over all ranks: the padding (which the MoE layers route like any token) and so the
  // balancing statistics do not depend on how the batch is spread.
  world_->all_reduce_host(longest, ReduceOp::kMax);
  const int64_t t_len = static_cast<int64_t>(longest[0]) - 1;

  Batch batch;
  batch.step = rollouts.step;
  batch.inputs = Tensor::zeros({rows, t_len}, DType::kI32);
  batch.targets = Tensor::empty({rows, t_len}, DType::kI32);
  batch.mask = Tensor::zeros({rows, t_len});
  int32_t* in = batch.inputs.data<int32_t>();
  int32_t* tg = batch.targets.data<int32_t>();
  float* mk = batch.mask.data<float>();
  std::fill(tg, tg + rows * t_len, kIgnoreIndex);
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t len = static_cast<int64_t>(tokens[b].size());
    for (int64_t t = 0; t + 1 < len; ++t) in[b * t_len + t] = tokens[b][t];
    for (int64_t t = prompt_len[b] - 1; t + 1 < len; ++t) {
      tg[b * t_len + t] = tokens[b][t + 1];
      mk[b * t_len + t] = 1.0f;
    }
  }

  // Old and reference log-probs (and values), once, in the minibatches of the updates, of the
  // distribution the rollouts were sampled from.
  const bool ppo = rl_.algorithm() == RlConfig::RL_PPO;
  const float temperature = static_cast<float>(rl_.temperature());
  batch.old_logp = Tensor::zeros({rows, t_len});
  batch.ref_logp = Tensor::zeros({rows, t_len});
  batch.entropy = Tensor::zeros({rows, t_len});
  if (ppo) batch.old_values = Tensor::zeros({rows, t_len});
  for (MoeFfn* m : policy_->moe_layers()) m->stats().reset(policy_->spec().moe.num_experts);
  const Device dev = policy_store_->device();
  for (int64_t mb = 0; mb < rl_.minibatches(); ++mb) {
    const auto [lo, hi] = minibatch_rows(mb);
    // On the device once, for the policy, the reference and the critic alike.
    const Tensor inputs = batch.inputs.rows(lo, hi).to(dev);
    const Tensor targets = batch.targets.rows(lo, hi).to(dev);
    Transformer::TokenLogprobs old = policy_->token_logprobs(inputs, targets, true, temperature);
    batch.old_logp.rows(lo, hi).copy_from(old.logp);
    batch.entropy.rows(lo, hi).copy_from(old.entropy);
    batch.ref_logp.rows(lo, hi).copy_from(
        ref_->token_logprobs(inputs, targets, false, temperature).logp);
    if (ppo) batch.old_values.rows(lo, hi).copy_from(critic_->values(inputs));
  }
  std::vector<float> rewards = rollouts.rewards;
  if (g_batch_hook) g_batch_hook(rollouts.step, rewards, batch);

  // Per-token KL of the rollout policy to the reference.
  const double beta = kl_.coef();
  const float* old_lp = batch.old_logp.data<float>();
  const float* ref_lp = batch.ref_logp.data<float>();
  const float* ent = batch.entropy.data<float>();
  std::vector<double> seq_kl(rows, 0.0);
  // [kl sum, tokens, entropy sum, reward sum, correct, well-formed, rows, seq kl sum]
  std::vector<double> sums(8, 0.0);
  // Non-finite values, counted here and summed over ranks with the metrics (no collective of
  // their own): [KL tokens, rewards, advantage tokens].
  std::vector<double> non_finite(3, 0.0);
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t t = 0; t < t_len; ++t) {
      const int64_t i = b * t_len + t;
      if (mk[i] == 0) continue;
      // A log-prob of -inf (a token the reference deems impossible) or NaN makes the KL so.
      const double kl = std::isfinite(old_lp[i]) && std::isfinite(ref_lp[i])
                            ? kl_term(estimator_, old_lp[i], ref_lp[i]).value
                            : std::numeric_limits<double>::quiet_NaN();
      if (!std::isfinite(kl)) non_finite[0] += 1;
      seq_kl[b] += kl;
      sums[0] += kl;
      sums[1] += 1;
      sums[2] += ent[i];
    }
    if (!std::isfinite(rewards[b])) non_finite[1] += 1;
    sums[3] += rewards[b];
    sums[4] += rollouts.scores[b].correct;
    sums[5] += rollouts.scores[b].format_ok;
    sums[6] += 1;
    sums[7] += seq_kl[b];
  }

  // Advantages.
  batch.advantages = Tensor::zeros({rows, t_len});
  batch.loss_mask = batch.mask.clone();
  batch.sequence_rewards = rewards;
  const bool kl_in_reward = rl_.kl_in_reward() && beta > 0;
  if (kl_in_reward) {
    for (int64_t b = 0; b < rows; ++b)
      batch.sequence_rewards[b] -= static_cast<float>(beta * seq_kl[b]);
  }
  std::vector<double> groups = {0, 0};  // [groups, kept]
  if (!ppo) {
    const std::vector<float> adv =
        group_advantages(batch.sequence_rewards, g, {.normalize_std = rl_.normalize_adv_std()});
    broadcast_to_tokens(batch.advantages, adv, batch.mask);
    groups[0] = static_cast<double>(rows / g);
    groups[1] = groups[0];
    if (rl_.filter_equal_groups()) {
      // Equal task rewards: no signal about the task in this group (DAPO's dynamic sampling).
      const GroupFilter filter = filter_equal_reward_groups(rewards, g);
      groups[1] = static_cast<double>(filter.kept.size());
      for (int64_t group : filter.dropped) batch.loss_mask.rows(group * g, (group + 1) * g).zero_();
    }
  } else {
    Tensor token_rewards = Tensor::zeros({rows, t_len});
    add_at_last_token(token_rewards, rewards, batch.mask);
    if (kl_in_reward) {
      apply_kl_penalty(token_rewards, batch.old_logp, batch.ref_logp, batch.mask, estimator_, beta);
    }
    batch.returns = Tensor::zeros({rows, t_len});
    gae(batch.advantages, batch.returns, token_rewards, batch.old_values, batch.mask, rl_.gamma(),
        rl_.lam());
    if (rl_.whiten_advantages()) whiten_over_world(batch.advantages, batch.mask, *world_);
  }

  const float* adv = batch.advantages.data<float>();
  for (int64_t i = 0; i < rows * t_len; ++i) {
    if (mk[i] != 0 && !std::isfinite(adv[i])) non_finite[2] += 1;
  }

  sums.push_back(groups[0]);
  sums.push_back(groups[1]);
  sums.insert(sums.end(), non_finite.begin(), non_finite.end());
  world_->all_reduce_host(sums, ReduceOp::kSum);
  std::vector<std::string> bad;
  if (sums[10] > 0) bad.push_back(absl::StrCat("KL at ", sums[10], " tokens"));
  if (sums[11] > 0) bad.push_back(absl::StrCat("rewards of ", sums[11], " completions"));
  if (sums[12] > 0) bad.push_back(absl::StrCat("advantages at ", sums[12], " tokens"));
  batch.non_finite = absl::StrJoin(bad, ", ");
  metrics.kl = sums[1] > 0 ? sums[0] / sums[1] : 0;
  metrics.entropy = sums[1] > 0 ? sums[2] / sums[1] : 0;
  metrics.response_length = sums[1] / sums[6];
  metrics.rollout_tokens = static_cast<int64_t>(sums[1]);
  metrics.reward_mean = sums[3] / sums[6];
  metrics.accuracy = sums[4] / sums[6];
  metrics.format_rate = sums[5] / sums[6];
  metrics.kl_sequence = sums[7] / sums[6];
  metrics.groups = static_cast<int64_t>(sums[8]);
  metrics.groups_kept = static_cast<int64_t>(sums[9]);
  metrics.kl_coef = beta;
  return batch;
}

void RlTrainer::update(const Batch& batch, StepMetrics& metrics) {
  if (!batch.non_finite.empty()) {
    // Nothing of this batch can be trusted: no update, and β stays as it was.
    metrics.skipped = absl::StrCat("nan/inf ", batch.non_finite);
    return;
  }
  const bool ppo = rl_.algorithm() == RlConfig::RL_PPO;
  const int64_t t_len = batch.inputs.dim(1);
  const double beta = kl_.coef();
  PolicyLossOptions options = loss_options_;
  const bool kl_in_loss = !rl_.kl_in_reward() && beta > 0;
  options.kl_coef = kl_in_loss ? beta : 0.0;
  const AggregationMode mode = options.aggregation.mode;
  const double bias_rate = policy_->spec().moe.bias_update_rate;

  const float temperature = static_cast<float>(rl_.temperature());
  const Device dev = policy_store_->device();
  for (int epoch = 0; epoch < rl_.epochs(); ++epoch) {
    const std::vector<int64_t> order = minibatch_order(batch.step, epoch);
    for (int64_t mb = 0; mb < rl_.minibatches(); ++mb) {
      const auto [lo, hi] = minibatch_rows(mb);
      const std::span<const int64_t> picked(order.data() + lo, order.data() + hi);
      auto take = [&](const Tensor& t) { return take_rows(t, lo, picked); };
      const Tensor inputs = take(batch.inputs).to(dev), targets = take(batch.targets).to(dev);
      const Tensor loss_mask = take(batch.loss_mask);
      UpdateStats u;
      const auto [scale, units] = global_loss_scale(loss_mask, mode, *world_);
      u.skipped = units == 0;
      if (!u.skipped) {
        policy_store_->zero_grad();
        Transformer::TokenLogprobs lp =
            policy_->token_logprobs(inputs, targets, false, temperature);
        Tensor dlogp = Tensor::empty({hi - lo, t_len});
        PolicyLossInputs in{.logp = lp.logp,
                            .old_logp = take(batch.old_logp),
                            .advantages = take(batch.advantages),
                            .mask = loss_mask,
                            .ref_logp = kl_in_loss ? take(batch.ref_logp) : Tensor()};
        const PolicyLossStats st = policy_loss(dlogp, in, options);
        scale_(dlogp, static_cast<float>(scale));
        policy_->backward_logprobs(dlogp);
        policy_sync_->sync();
        u.grad_norm = policy_opt_->step(static_cast<float>(rl_.lr()));
        u.non_finite = !std::isfinite(u.grad_norm);
        if (rl_.balance_loss_scale() > 0 && bias_rate > 0 && !u.non_finite) {
          for (MoeFfn* m : policy_->moe_layers()) m->update_bias();
        }
        double tokens = 0;
        for (float v : loss_mask.to_f32_vector()) tokens += v;
        // Losses add up over ranks (each already scaled); fractions are token-weighted.
        std::vector<double> s = {scale * st.loss,
                                 scale * st.policy_loss,
                                 scale * st.kl,
                                 tokens * st.clip_fraction,
                                 tokens * st.dual_clip_fraction,
                                 tokens * st.approx_kl_old,
                                 tokens};
        world_->all_reduce_host(s, ReduceOp::kSum);
        u.policy = {.loss = s[0],
                    .policy_loss = s[1],
                    .kl = s[2],
                    .clip_fraction = s[3] / s[6],
                    .dual_clip_fraction = s[4] / s[6],
                    .approx_kl_old = s[5] / s[6]};
        u.non_finite = u.non_finite || !std::isfinite(u.policy.loss);
      }
      if (ppo) {
        const Tensor mask = take(batch.mask);
        const double vscale = global_loss_scale(mask, mode, *world_).first;
        critic_store_->zero_grad();
        const Tensor values = critic_->values(inputs);
        Tensor dvalues = Tensor::empty({hi - lo, t_len});
        const ValueLossStats vs =
            value_loss(dvalues, values, take(batch.old_values), take(batch.returns), mask,
                       {.clip = rl_.value_clip(), .aggregation = options.aggregation});
        scale_(dvalues, static_cast<float>(vscale));
        critic_->backward_values(dvalues);
        critic_sync_->sync();
        u.critic_grad_norm = critic_opt_->step(static_cast<float>(rl_.critic_lr()));
        u.non_finite = u.non_finite || !std::isfinite(u.critic_grad_norm);
        double tokens = 0;
        for (float v : mask.to_f32_vector()) tokens += v;
        std::vector<double> s = {vscale * vs.loss, tokens * vs.clip_fraction, tokens};
        world_->all_reduce_host(s, ReduceOp::kSum);
        u.value = {.loss = s[0], .clip_fraction = s[2] > 0 ? s[1] / s[2] : 0};
      }
      metrics.updates.push_back(u);
    }
  }
  double n = 0;
  double valued = 0;
  for (const UpdateStats& u : metrics.updates) {
    if (u.non_finite) {
      ++metrics.non_finite_updates;
      continue;
    }
    metrics.value_loss += u.value.loss;
    valued += 1;
    if (u.skipped) continue;
    metrics.clip_fraction += u.policy.clip_fraction;
    metrics.policy_loss += u.policy.policy_loss;
    metrics.grad_norm += u.grad_norm;
    n += 1;
  }
  if (n > 0) {
    metrics.clip_fraction /= n;
    metrics.policy_loss /= n;
    metrics.grad_norm /= n;
  }
  if (valued > 0) metrics.value_loss /= valued;
  if (metrics.non_finite_updates > 0 &&
      metrics.non_finite_updates == static_cast<int64_t>(metrics.updates.size())) {
    metrics.skipped = "every update's loss or grad norm was nan/inf";
  }
  // The adaptive controller's target is a KL per completion (Ziegler et al.).
  kl_.update(metrics.kl_sequence, batch_rows_ * world_->size());
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

EvalMetrics RlTrainer::evaluate() {
  const int64_t n = rl_.eval_examples();
  const int64_t ranks = world_->size(), r = world_->rank();
  const int64_t lo = n * r / ranks, hi = n * (r + 1) / ranks;
  std::vector<Prompt> prompts;
  std::vector<std::vector<int32_t>> ids;
  for (int64_t i = lo; i < hi; ++i) {
    prompts.push_back(task_->sample(static_cast<uint64_t>(i), Split::kHeldOut));
    ids.push_back(encode_prompt(prompts.back()));
  }
  const SamplingOptions greedy{.temperature = 0.0f,
                               .max_new_tokens = max_new_tokens_,
                               .stop_tokens = tokenizer_->eos_ids()};
  // The options and prompts passed the config's checks at start-up: a refusal is a bug here.
  const auto completions = generate(*policy_, ids, greedy, world_);
  SY_CHECK(completions.ok()) << completions.status();
  // Collective, as the generation is: every rank skips the sampled pass alike.
  double stop_flag = stop_requested() ? 1.0 : 0.0;
  world_->all_reduce_host({&stop_flag, 1}, ReduceOp::kMax);
  EvalMetrics e;
  e.stopped = stop_flag > 0;
  const SamplingOptions sampling{.temperature = static_cast<float>(rl_.temperature()),
                                 .top_p = static_cast<float>(rl_.top_p()),
                                 .max_new_tokens = max_new_tokens_,
                                 .stop_tokens = tokenizer_->eos_ids(),
                                 .seed = rl_.seed() + 1};
  absl::StatusOr<std::vector<std::vector<int32_t>>> samples;
  if (!e.stopped) {
    samples = generate(*policy_, ids, sampling, world_, static_cast<uint64_t>(lo));
    SY_CHECK(samples.ok()) << samples.status();
  }
  std::vector<double> sums = {0, 0, 0};
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Score s = task_->score(prompts[i], completion_text((*completions)[i]));
    sums[0] += s.correct;
    sums[1] += s.reward;
    if (!e.stopped) sums[2] += task_->score(prompts[i], completion_text((*samples)[i])).correct;
  }
  world_->all_reduce_host(sums, ReduceOp::kSum);
  e.correct = static_cast<int64_t>(sums[0]);
  e.total = n;
  e.accuracy = n > 0 ? sums[0] / n : 0;
  e.reward_mean = n > 0 ? sums[1] / n : 0;
  e.sampled_accuracy = n > 0 ? sums[2] / n : 0;
  return e;
}

CheckpointLayout RlTrainer::checkpoint_layout() const {
  return {.world = world_,
          .expert_parallel = grid_->layout().expert_parallel,
          .zero_stage = config_.parallel().zero_stage()};
}

absl::Status RlTrainer::save(const std::string& run_dir, int64_t steps_done) {
  const CheckpointState state{
      .step = steps_done,
      .seed = rl_.seed(),
      .data = {.next_index = steps_done * world_->size() * rl_.prompts_per_step()}};
  const int keep = config_.checkpoint().keep_last();
  // The critic and the state first: the policy's `latest` is what a resumed run goes by.
  if (critic_) {
    SY_RETURN_IF_ERROR(save_checkpoint(critic_run_dir(run_dir), state, *critic_store_, *critic_opt_,
                                       keep, checkpoint_layout()));
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
  return save_checkpoint(run_dir, state, *policy_store_, *policy_opt_, keep, checkpoint_layout());
}

absl::StatusOr<int64_t> RlTrainer::restore(const std::string& run_dir) {
  auto dir = latest_checkpoint(run_dir);
  SY_RETURN_IF_ERROR(agree_on_status(*world_, dir.status()));
  auto state = load_checkpoint(*dir, *policy_store_, policy_opt_.get(), checkpoint_layout());
  SY_RETURN_IF_ERROR(agree_on_status(*world_, state.status()));
  const int64_t step = state->step;
  if (critic_) {
    const std::string critic_dir =
        (fs::path(critic_run_dir(run_dir)) / "checkpoints" / fs::path(*dir).filename()).string();
    auto critic =
        load_checkpoint(critic_dir, *critic_store_, critic_opt_.get(), checkpoint_layout());
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
  return absl::StrFormat(
      "rl: %s | task %s | %d prompts x %d completions per rank, up to %d new tokens, "
      "temperature %.2g | %d epoch(s) x %d minibatch(es), lr %.1e | clip [%.2g, %.2g] | "
      "%s | %s",
      algorithm_name(rl_.algorithm()), std::string(task_->name()), rl_.prompts_per_step(),
      rl_.group_size(), max_new_tokens_, rl_.temperature(), rl_.epochs(), rl_.minibatches(),
      rl_.lr(), rl_.clip_low(), rl_.clip_high(),
      aggregation_mode_name(loss_options_.aggregation.mode), kl);
}

// ---- run_rl --------------------------------------------------------------------------------

absl::Status run_rl(const switchyard::Experiment& config, const RlRunOptions& options,
                    std::ostream& console, Communicator* world_comm) {
  LocalCommunicator local;
  Communicator& world = world_comm ? *world_comm : local;
  const bool lead = world.rank() == 0;
  std::ostringstream discard;
  std::ostream& log = lead ? console : discard;
  SY_RETURN_IF_ERROR(
      check_same_on_all_ranks(world, "the resolved config", resolved_experiment_text(config)));
  const RlConfig& rl = config.rl();

  absl::Status made;
  if (lead) {
    std::error_code ec;
    fs::create_directories(options.run_dir, ec);
    if (ec) {
      made = absl::PermissionDeniedError(
          absl::StrCat("run_dir ", options.run_dir, ": cannot create it (", ec.message(), ")"));
    } else {
      std::ofstream cfg(fs::path(options.run_dir) / "config.textproto");
      cfg << resolved_experiment_text(config);
      if (!cfg)
        made = absl::PermissionDeniedError(
            absl::StrCat("cannot write ", options.run_dir, "/config.textproto"));
    }
    // The tokenizer (and an imported model's Hub config) travel on with the policy, so that
    // generate, score and convert read this run as they read the one it started from.
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                             "generation_config.json", "hf_config.json"}) {
      const fs::path from = fs::path(rl.init_checkpoint()) / name;
      const fs::path to = fs::path(options.run_dir) / name;
      if (made.ok() && fs::exists(from, ec) && !fs::exists(to, ec)) {
        fs::copy_file(from, to, ec);
        if (ec)
          made = absl::PermissionDeniedError(absl::StrCat("cannot copy ", from.string(), " to ",
                                                          to.string(), ": ", ec.message()));
      }
    }
  }
  SY_RETURN_IF_ERROR(agree_on_status(world, made));

  SY_ASSIGN_OR_RETURN(std::unique_ptr<RlTrainer> trainer, RlTrainer::create(config, world));
  // A Hugging Face directory is read as it is; a run, by its latest checkpoint.
  auto init_dir = is_hf_checkpoint(rl.init_checkpoint())
                      ? absl::StatusOr<std::string>(rl.init_checkpoint())
                      : latest_checkpoint(rl.init_checkpoint());
  SY_RETURN_IF_ERROR(agree_on_status(world, init_dir.status()));
  SY_RETURN_IF_ERROR(trainer->load_policy_weights(*init_dir));
  int64_t start_step = 0;
  if (options.resume) {
    SY_ASSIGN_OR_RETURN(start_step, trainer->restore(options.run_dir));
    if (start_step >= rl.steps()) {
      return absl::FailedPreconditionError(absl::StrCat(
          options.run_dir, " already holds step ", start_step, " of rl.steps = ", rl.steps(),
          "; raise it with --set 'rl { steps: N }' to continue"));
    }
  }

  std::ofstream jsonl;
  if (lead && config.logging().jsonl()) {
    jsonl.open(fs::path(options.run_dir) / "metrics.jsonl", std::ios::app);
  }
  std::unique_ptr<TensorBoardWriter> tensorboard;
  if (lead && config.logging().tensorboard()) {
    SY_ASSIGN_OR_RETURN(tensorboard, TensorBoardWriter::open(options.run_dir));
  }
  auto write_jsonl = [&](const std::string& line) {
    if (tensorboard) tensorboard->metrics_line(line);
    if (!jsonl.is_open()) return;
    jsonl << line << "\n";
    jsonl.flush();
  };
  const ModelSpec& spec = trainer->policy().spec();
  log << absl::StrFormat(
      "model: %d layers (%d dense, %d MoE), d_model %d, %d experts top-%d | from %s | %s | "
      "run dir %s\n",
      spec.n_layers, std::min(spec.first_k_dense, spec.n_layers),
      std::max(0, spec.n_layers - spec.first_k_dense), spec.d_model, spec.moe.num_experts,
      spec.moe.top_k, *init_dir, trainer->grid().describe(), options.run_dir);
  log << trainer->describe() << "\n";
  if (options.resume)
    log << "resumed from " << options.run_dir << " at step " << start_step << "\n";

  auto run_eval = [&](int64_t step) {
    const EvalMetrics e = trainer->evaluate();
    log << absl::StrFormat(
        "eval step %d | accuracy %.1f%% (%d/%d) | reward %.3f | sampled accuracy %.1f%%\n", step,
        100 * e.accuracy, e.correct, e.total, e.reward_mean, 100 * e.sampled_accuracy);
    if (e.stopped) log << "eval: stop requested by signal; the sampled pass was not run\n";
    log.flush();
    write_jsonl(absl::StrFormat(
        R"({"step": %d, "eval_accuracy": %.9g, "eval_reward": %.9g, "eval_sampled_accuracy": %.9g})",
        step, e.accuracy, e.reward_mean, e.sampled_accuracy));
  };
  if (!options.resume) run_eval(0);

  const int64_t steps = rl.steps();
  const int ckpt_every = config.checkpoint().interval();
  const bool ppo = rl.algorithm() == RlConfig::RL_PPO;
  const Eta eta(start_step, steps);
  int64_t skipped_total = 0;
  for (int64_t step = start_step; step < steps; ++step) {
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
      write_jsonl(absl::StrFormat(
          R"({"step": %d, "skipped": true, "skipped_in_row": %d, "skipped_steps": %d})", step + 1,
          m.skipped_in_row, skipped_total));
    }
    if (!skipped && m.non_finite_updates > 0) {
      log << absl::StrFormat(
          "rl step %d: skipped %d of %d updates, loss or grad norm nan/inf (lower rl.lr if it "
          "recurs)\n",
          step + 1, m.non_finite_updates, m.updates.size());
    }
    const bool last = step + 1 == steps;
    if (!skipped && ((step + 1) % rl.log_interval() == 0 || last || step == 0)) {
      const std::string value = ppo ? absl::StrFormat(" | vloss %.4f", m.value_loss) : "";
      const std::string kept = rl.filter_equal_groups()
                                   ? absl::StrFormat(" | groups %d/%d", m.groups_kept, m.groups)
                                   : "";
      log << absl::StrFormat(
          "rl step %d/%d | reward %.3f | acc %.1f%% | kl %.2e | beta %.3g | clip %.1f%% | "
          "entropy %.3f | len %.2f | loss %.4f%s%s | norm %.2f | rollout %.2fs (%.0f tok/s) "
          "score %.2fs logprobs %.2fs update %.2fs | ETA %s\n",
          m.step, steps, m.reward_mean, 100 * m.accuracy, m.kl, m.kl_coef, 100 * m.clip_fraction,
          m.entropy, m.response_length, m.policy_loss, value, kept, m.grad_norm, m.rollout_s,
          m.rollout_tokens_per_s(), m.scoring_s, m.logprobs_s, m.update_s,
          format_duration(eta.seconds_left(step + 1)));
      log.flush();
    }
    if (!skipped)
      write_jsonl(absl::StrFormat(
          R"({"step": %d, "reward_mean": %.9g, "accuracy": %.9g, "format_rate": %.9g, "kl": %.9g, "kl_sequence": %.9g, "kl_coef": %.9g, "clip_fraction": %.9g, "entropy": %.9g, "response_length": %.9g, "policy_loss": %.9g, "value_loss": %.9g, "grad_norm": %.9g, "groups_kept": %d, "groups": %d, "time_rollout_s": %.6g, "time_scoring_s": %.6g, "time_logprobs_s": %.6g, "time_update_s": %.6g, "rollout_tokens": %d, "rollout_tokens_per_s": %.6g, "non_finite_updates": %d, "time_left_s": %.6g})",
          m.step, m.reward_mean, m.accuracy, m.format_rate, m.kl, m.kl_sequence, m.kl_coef,
          m.clip_fraction, m.entropy, m.response_length, m.policy_loss, m.value_loss, m.grad_norm,
          m.groups_kept, m.groups, m.rollout_s, m.scoring_s, m.logprobs_s, m.update_s,
          m.rollout_tokens, m.rollout_tokens_per_s(), m.non_finite_updates,
          std::max(0.0, eta.seconds_left(step + 1))));
    if ((rl.eval_interval() > 0 && (step + 1) % rl.eval_interval() == 0) || last) {
      run_eval(step + 1);
    }
    // A signal may reach the ranks at different steps: stop when any rank has seen one.
    double stop_flag = stop_requested() ? 1.0 : 0.0;
    world.all_reduce_host({&stop_flag, 1}, ReduceOp::kMax);
    const bool stop = stop_flag > 0;
    if (last || stop || (ckpt_every > 0 && (step + 1) % ckpt_every == 0)) {
      SY_RETURN_IF_ERROR(trainer->save(options.run_dir, step + 1));
    }
    if (stop && !last) {
      log << "stop requested by signal: checkpoint written at step " << step + 1
          << "; continue with switchyard rl --resume " << options.run_dir << "\n";
      return absl::OkStatus();
    }
  }
  // A prompt of the user's own set may hold a quote: spelled for a POSIX shell.
  const std::string example = absl::StrReplaceAll(trainer->task().sample(0, Split::kHeldOut).text,
                                                  {{"'", "'\\''"}});
  log << "saved the policy in " << options.run_dir << "; try: switchyard generate --checkpoint "
      << options.run_dir << " --prompt '" << example << "'\n";
  return absl::OkStatus();
}

}  // namespace sy::rl
