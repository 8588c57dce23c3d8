#include "rl/rl_batch.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/check.h"
#include "kernels/elementwise.h"
#include "rl/advantages.h"
#include "rl/rl_trainer.h"
#include "rl/rollout_correction.h"
#include "rl/routing_replay.h"

namespace sy::rl {
namespace {

using switchyard::RlConfig;

BatchHook g_batch_hook;

// Sums `fields` over every rank in one all-reduce.
template <size_t N>
void all_reduce_sum(Communicator& world, const std::array<double*, N>& fields) {
  std::array<double, N> values;
  for (size_t i = 0; i < N; ++i) values[i] = *fields[i];
  world.all_reduce_host(values, ReduceOp::kSum);
  for (size_t i = 0; i < N; ++i) *fields[i] = values[i];
}

// A batch's statistics, summed over this rank's completions, then over every rank: what the
// step's log line reports, and the counts of non-finite values (which need no collective of
// their own).
struct BatchSums {
  double kl = 0;           // of the estimator over completion tokens
  double tokens = 0;       // completion tokens
  double entropy = 0;      // over completion tokens
  double reward = 0;       // task or command rewards, before any KL
  double correct = 0;      // completions the task judges correct
  double well_formed = 0;  // completions in the task's format
  double completions = 0;
  double sequence_kl = 0;              // of each completion's summed KL
  double groups = 0, groups_kept = 0;  // GRPO's prompt groups, and those left in the loss
  double non_finite_kl = 0;            // completion tokens whose KL is NaN or infinite
  double non_finite_rewards = 0;       // completions
  double non_finite_advantages = 0;    // completion tokens
  TisSums tis;                         // rollout correction, when on

  void all_reduce(Communicator& world) {
    all_reduce_sum(world, std::array{&kl, &tokens, &entropy, &reward, &correct, &well_formed,
                                     &completions, &sequence_kl, &groups, &groups_kept,
                                     &non_finite_kl, &non_finite_rewards, &non_finite_advantages,
                                     &tis.weight, &tis.truncated, &tis.units, &tis.non_finite});
  }
};

// One minibatch's policy loss over every rank: the losses add up (each rank's is already
// scaled to the global minibatch); the fractions are weighted by tokens.
struct PolicySums {
  double loss = 0, policy_loss = 0, kl = 0;
  double clipped = 0, dual_clipped = 0, approx_kl_old = 0;  // token-weighted
  double tokens = 0;

  void all_reduce(Communicator& world) {
    all_reduce_sum(world, std::array{&loss, &policy_loss, &kl, &clipped, &dual_clipped,
                                     &approx_kl_old, &tokens});
  }
};

// The same for the critic's value loss (PPO).
struct ValueSums {
  double loss = 0, clipped = 0, tokens = 0;

  void all_reduce(Communicator& world) {
    all_reduce_sum(world, std::array{&loss, &clipped, &tokens});
  }
};

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
  double sum = 0, count = 0;
  for (int64_t i = 0; i < mask.numel(); ++i) {
    if (m[i] == 0) continue;
    sum += a[i];
    count += 1;
  }
  all_reduce_sum(world, std::array{&sum, &count});
  if (count < 2) return;  // nothing to whiten
  const double mean = sum / count;
  double squares = 0;
  for (int64_t i = 0; i < mask.numel(); ++i)
    if (m[i] != 0) squares += (a[i] - mean) * (a[i] - mean);
  all_reduce_sum(world, std::array{&squares});
  const double inv_std = 1 / std::sqrt(squares / (count - 1) + 1e-8);
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

}  // namespace

void set_batch_hook_for_testing(BatchHook hook) { g_batch_hook = std::move(hook); }

Batch RlTrainer::make_batch(const Rollouts& rollouts, StepMetrics& metrics) {
  const int64_t rows = batch_rows_, g = rl_.group_size();
  SY_CHECK(static_cast<int64_t>(rollouts.completions.size()) == rows) << "rollout size";
  SY_CHECK(rollouts.logprobs.size() == rollouts.completions.size()) << "rollout log-probs";
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
  batch.rollout_logp = Tensor::zeros({rows, t_len});
  int32_t* in = batch.inputs.data<int32_t>();
  int32_t* tg = batch.targets.data<int32_t>();
  float* mk = batch.mask.data<float>();
  float* roll = batch.rollout_logp.data<float>();
  std::fill(tg, tg + rows * t_len, kIgnoreIndex);
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t len = static_cast<int64_t>(tokens[b].size());
    const std::vector<float>& logprobs = rollouts.logprobs[b];
    SY_CHECK(logprobs.size() == rollouts.completions[b].size()) << "rollout log-probs of row " << b;
    for (int64_t t = 0; t + 1 < len; ++t) in[b * t_len + t] = tokens[b][t];
    for (int64_t t = prompt_len[b] - 1; t + 1 < len; ++t) {
      tg[b * t_len + t] = tokens[b][t + 1];
      mk[b * t_len + t] = 1.0f;
      roll[b * t_len + t] = logprobs[t + 1 - prompt_len[b]];
    }
  }

  // A MoE model's rollout routes: replayed by the training forwards (rl.routing_replay), and
  // compared with the old policy's own routing either way.
  const int routed_layers = policy_->num_routed_layers();
  if (routed_layers > 0) {
    std::vector<int64_t> lengths(rows);
    for (int64_t b = 0; b < rows; ++b) lengths[b] = static_cast<int64_t>(tokens[b].size());
    batch.routes =
        batch_routes(rollouts.routes, lengths, t_len, routed_layers, policy_->spec().moe.top_k);
  }
  const bool replay = batch.routes.defined() && rl_.routing_replay() == RlConfig::REPLAY_ROLLOUT;
  Tensor route_differs =
      batch.routes.defined() ? Tensor::zeros({rows, t_len}, DType::kI32) : Tensor();

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
    const ForwardRoutes routes{
        .routes = batch.routes.defined() ? batch.routes.rows(lo, hi) : Tensor(), .replay = replay};
    Transformer::TokenLogprobs old = policy_->token_logprobs(
        inputs, targets, true, temperature, batch.routes.defined() ? &routes : nullptr);
    batch.old_logp.rows(lo, hi).copy_from(old.logp);
    batch.entropy.rows(lo, hi).copy_from(old.entropy);
    if (route_differs.defined()) route_differs.rows(lo, hi).copy_from(old.route_differs);
    batch.ref_logp.rows(lo, hi).copy_from(
        ref_->token_logprobs(inputs, targets, false, temperature, replay ? &routes : nullptr).logp);
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
  BatchSums sums;
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t t = 0; t < t_len; ++t) {
      const int64_t i = b * t_len + t;
      if (mk[i] == 0) continue;
      // A log-prob of -inf (a token the reference deems impossible) or NaN makes the KL so.
      const double kl = std::isfinite(old_lp[i]) && std::isfinite(ref_lp[i])
                            ? kl_term(estimator_, old_lp[i], ref_lp[i]).value
                            : std::numeric_limits<double>::quiet_NaN();
      if (!std::isfinite(kl)) sums.non_finite_kl += 1;
      seq_kl[b] += kl;
      sums.kl += kl;
      sums.tokens += 1;
      sums.entropy += ent[i];
    }
    if (!std::isfinite(rewards[b])) sums.non_finite_rewards += 1;
    sums.reward += rewards[b];
    sums.correct += rollouts.scores[b].correct;
    sums.well_formed += rollouts.scores[b].format_ok;
    sums.completions += 1;
    sums.sequence_kl += seq_kl[b];
  }

  // Rollout correction: weights of the policy-gradient term from the two forwards' log-probs.
  const double tis_cap = rl_.rollout_correction().tis_cap();
  if (tis_cap > 0) {
    batch.tis_weights = Tensor::zeros({rows, t_len});
    sums.tis =
        tis_weights(batch.tis_weights, batch.old_logp, batch.rollout_logp, batch.mask, tis_cap,
                    rl_.algorithm() == RlConfig::RL_GSPO ? TisLevel::kSequence : TisLevel::kToken);
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
  if (!ppo) {  // GRPO and GSPO
    const std::vector<float> adv =
        group_advantages(batch.sequence_rewards, g, {.normalize_std = rl_.normalize_adv_std()});
    broadcast_to_tokens(batch.advantages, adv, batch.mask);
    sums.groups = static_cast<double>(rows / g);
    sums.groups_kept = sums.groups;
    if (rl_.filter_equal_groups()) {
      // Equal task rewards: no signal about the task in this group (DAPO's dynamic sampling).
      const GroupFilter filter = filter_equal_reward_groups(rewards, g);
      sums.groups_kept = static_cast<double>(filter.kept.size());
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
    if (mk[i] != 0 && !std::isfinite(adv[i])) sums.non_finite_advantages += 1;
  }

  sums.all_reduce(*world_);
  std::vector<std::string> bad;
  if (sums.non_finite_kl > 0) bad.push_back(absl::StrCat("KL at ", sums.non_finite_kl, " tokens"));
  if (sums.non_finite_rewards > 0)
    bad.push_back(absl::StrCat("rewards of ", sums.non_finite_rewards, " completions"));
  if (sums.non_finite_advantages > 0)
    bad.push_back(absl::StrCat("advantages at ", sums.non_finite_advantages, " tokens"));
  if (sums.tis.non_finite > 0)
    bad.push_back(absl::StrCat("TIS weights of ", sums.tis.non_finite,
                               rl_.algorithm() == RlConfig::RL_GSPO ? " completions" : " tokens"));
  batch.non_finite = absl::StrJoin(bad, ", ");
  metrics.kl = sums.tokens > 0 ? sums.kl / sums.tokens : 0;
  metrics.entropy = sums.tokens > 0 ? sums.entropy / sums.tokens : 0;
  metrics.response_length = sums.tokens / sums.completions;
  metrics.rollout_tokens = static_cast<int64_t>(sums.tokens);
  metrics.reward_mean = sums.reward / sums.completions;
  metrics.accuracy = sums.correct / sums.completions;
  metrics.format_rate = sums.well_formed / sums.completions;
  metrics.kl_sequence = sums.sequence_kl / sums.completions;
  metrics.groups = static_cast<int64_t>(sums.groups);
  metrics.groups_kept = static_cast<int64_t>(sums.groups_kept);
  metrics.kl_coef = beta;
  if (sums.tis.units > sums.tis.non_finite) {
    metrics.tis_weight_mean = sums.tis.weight / (sums.tis.units - sums.tis.non_finite);
    metrics.tis_truncated_fraction = sums.tis.truncated / sums.tis.units;
  }
  if (batch.routes.defined()) {  // the rollout engine against the old-policy forward
    RolloutMismatch mismatch;
    mismatch.add(batch.rollout_logp, batch.old_logp, batch.mask, route_differs);
    mismatch.all_reduce(*world_);
    metrics.rollout_logprob_diff = mismatch.mean_logprob_diff();
    metrics.routing_mismatch = mismatch.routing_mismatch();
  }
  return batch;
}

void RlTrainer::update(const Batch& batch, StepMetrics& metrics) {
  if (!batch.non_finite.empty()) {
    // Nothing of this batch can be trusted: no update, and β stays as it was.
    metrics.skipped = absl::StrCat("nan/inf ", batch.non_finite);
    return;
  }
  const bool ppo = rl_.algorithm() == RlConfig::RL_PPO;
  const bool gspo = rl_.algorithm() == RlConfig::RL_GSPO;
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
        const bool replay =
            batch.routes.defined() && rl_.routing_replay() == RlConfig::REPLAY_ROLLOUT;
        const ForwardRoutes routes{.routes = replay ? take(batch.routes) : Tensor(),
                                   .replay = true};
        Transformer::TokenLogprobs lp = policy_->token_logprobs(inputs, targets, false, temperature,
                                                                replay ? &routes : nullptr);
        Tensor dlogp = Tensor::empty({hi - lo, t_len});
        PolicyLossInputs in{
            .logp = lp.logp,
            .old_logp = take(batch.old_logp),
            .advantages = take(batch.advantages),
            .mask = loss_mask,
            .ref_logp = kl_in_loss ? take(batch.ref_logp) : Tensor(),
            .is_weights = batch.tis_weights.defined() ? take(batch.tis_weights) : Tensor()};
        // GSPO's loss weighs completions alike: loss_options_ holds seq-mean-token-mean for
        // it, so global_loss_scale normalises over the global minibatch's completions.
        const PolicyLossStats st =
            gspo ? sequence_policy_loss(dlogp, in, options) : policy_loss(dlogp, in, options);
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
        PolicySums sum{.loss = scale * st.loss,
                       .policy_loss = scale * st.policy_loss,
                       .kl = scale * st.kl,
                       .clipped = tokens * st.clip_fraction,
                       .dual_clipped = tokens * st.dual_clip_fraction,
                       .approx_kl_old = tokens * st.approx_kl_old,
                       .tokens = tokens};
        sum.all_reduce(*world_);
        u.policy = {.loss = sum.loss,
                    .policy_loss = sum.policy_loss,
                    .kl = sum.kl,
                    .clip_fraction = sum.clipped / sum.tokens,
                    .dual_clip_fraction = sum.dual_clipped / sum.tokens,
                    .approx_kl_old = sum.approx_kl_old / sum.tokens};
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
        ValueSums sum{
            .loss = vscale * vs.loss, .clipped = tokens * vs.clip_fraction, .tokens = tokens};
        sum.all_reduce(*world_);
        u.value = {.loss = sum.loss,
                   .clip_fraction = sum.tokens > 0 ? sum.clipped / sum.tokens : 0};
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

}  // namespace sy::rl
