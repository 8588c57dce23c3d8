#include "rl/policy_loss.h"

#include <algorithm>
#include <cmath>

#include "rl/token_checks.h"

namespace sy::rl {
namespace {

struct TokenLoss {
  double value;
  double dlogp;
  bool clipped;
  bool dual_clipped;
};

TokenLoss clipped_surrogate(double logp, double old_logp, double advantage,
                            const PolicyLossOptions& options) {
  const double ratio = std::exp(logp - old_logp);
  const double unclipped = -advantage * ratio;
  const double clipped =
      -advantage * std::clamp(ratio, 1 - options.clip_low, 1 + options.clip_high);
  TokenLoss loss{unclipped, -advantage * ratio, false, false};
  if (clipped > unclipped) loss = {clipped, 0, true, false};
  if (options.dual_clip > 0 && advantage < 0) {
    const double cap = -options.dual_clip * advantage;
    if (loss.value > cap) loss = {cap, 0, false, true};
  }
  return loss;
}

}  // namespace

const char* aggregation_mode_name(AggregationMode mode) {
  switch (mode) {
    case AggregationMode::kTokenMean:
      return "token-mean";
    case AggregationMode::kSeqMeanTokenMean:
      return "seq-mean-token-mean";
    case AggregationMode::kSeqMeanTokenSumNorm:
      return "seq-mean-token-sum-norm";
  }
  return "unknown";
}

std::vector<double> aggregation_weights(const Tensor& mask, const LossAggregation& aggregation) {
  check_mask(mask);
  const int64_t batch = mask.dim(0), seq_len = mask.dim(1);
  const float* m = mask.data<float>();
  std::vector<int64_t> row_tokens(batch, 0);
  int64_t tokens = 0, rows = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq_len; ++t) row_tokens[b] += m[b * seq_len + t] != 0;
    tokens += row_tokens[b];
    rows += row_tokens[b] > 0;
  }
  std::vector<double> weights(mask.numel(), 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    if (row_tokens[b] == 0) continue;
    double w = 0;
    switch (aggregation.mode) {
      case AggregationMode::kTokenMean:
        w = 1.0 / static_cast<double>(tokens);
        break;
      case AggregationMode::kSeqMeanTokenMean:
        w = 1.0 / (static_cast<double>(row_tokens[b]) * static_cast<double>(rows));
        break;
      case AggregationMode::kSeqMeanTokenSumNorm: {
        SY_CHECK(aggregation.norm_length >= 0)
            << "norm_length must be >= 0, got " << aggregation.norm_length;
        const int64_t length = aggregation.norm_length > 0 ? aggregation.norm_length : seq_len;
        w = 1.0 / (static_cast<double>(length) * static_cast<double>(batch));
        break;
      }
    }
    for (int64_t t = 0; t < seq_len; ++t)
      if (m[b * seq_len + t] != 0) weights[b * seq_len + t] = w;
  }
  return weights;
}

namespace {

// The checks both losses make of their options and inputs (check_inputs: whether ref_logp is
// there).
void check_clip_options(const PolicyLossOptions& options) {
  SY_CHECK(options.clip_low >= 0 && options.clip_low < 1)
      << "clip_low must be in [0, 1), got " << options.clip_low;
  SY_CHECK(options.clip_high >= 0) << "clip_high must be >= 0, got " << options.clip_high;
  SY_CHECK(options.dual_clip == 0 || options.dual_clip > 1)
      << "dual_clip must be 0 (off) or > 1, got " << options.dual_clip;
  SY_CHECK(options.kl_coef >= 0) << "kl_coef must be >= 0, got " << options.kl_coef;
}

bool check_inputs(const Tensor& dlogp, const PolicyLossInputs& in,
                  const PolicyLossOptions& options) {
  check_mask(in.mask);
  check_per_token(in.logp, in.mask, "logp");
  check_per_token(in.old_logp, in.mask, "old_logp");
  check_per_token(in.advantages, in.mask, "advantages");
  const bool with_kl = in.ref_logp.defined();
  SY_CHECK(with_kl || options.kl_coef == 0) << "kl_coef > 0 needs ref_logp";
  if (with_kl) check_per_token(in.ref_logp, in.mask, "ref_logp");
  if (in.is_weights.defined()) check_per_token(in.is_weights, in.mask, "is_weights");
  if (dlogp.defined()) check_per_token(dlogp, in.mask, "dlogp");
  return with_kl;
}

}  // namespace

PolicyLossStats policy_loss(const Tensor& dlogp, const PolicyLossInputs& in,
                            const PolicyLossOptions& options) {
  check_clip_options(options);
  const std::vector<double> weights = aggregation_weights(in.mask, options.aggregation);
  const bool with_kl = check_inputs(dlogp, in, options);

  const float* m = in.mask.data<float>();
  const float* lp = in.logp.data<float>();
  const float* old = in.old_logp.data<float>();
  const float* adv = in.advantages.data<float>();
  const float* ref = with_kl ? in.ref_logp.data<float>() : nullptr;
  const float* is_w = in.is_weights.defined() ? in.is_weights.data<float>() : nullptr;
  float* grad = dlogp.defined() ? dlogp.data<float>() : nullptr;
  PolicyLossStats stats;
  int64_t tokens = 0;
  for (int64_t i = 0; i < in.mask.numel(); ++i) {
    if (m[i] == 0) {
      if (grad) grad[i] = 0;
      continue;
    }
    const TokenLoss pg = clipped_surrogate(lp[i], old[i], adv[i], options);
    const KlTerm kl = with_kl ? kl_term(options.kl_estimator, lp[i], ref[i]) : KlTerm{0, 0};
    const double w_is = is_w ? is_w[i] : 1.0;
    stats.policy_loss += weights[i] * w_is * pg.value;
    stats.kl += weights[i] * kl.value;
    if (grad)
      grad[i] = static_cast<float>(weights[i] * (w_is * pg.dlogp + options.kl_coef * kl.dlogp));
    const double d = lp[i] - old[i];
    stats.approx_kl_old += 0.5 * d * d;
    stats.clip_fraction += pg.clipped;
    stats.dual_clip_fraction += pg.dual_clipped;
    ++tokens;
  }
  stats.loss = stats.policy_loss + options.kl_coef * stats.kl;
  if (tokens > 0) {
    stats.approx_kl_old /= tokens;
    stats.clip_fraction /= tokens;
    stats.dual_clip_fraction /= tokens;
  }
  return stats;
}

PolicyLossStats sequence_policy_loss(const Tensor& dlogp, const PolicyLossInputs& in,
                                     const PolicyLossOptions& options) {
  check_clip_options(options);
  SY_CHECK(options.dual_clip == 0)
      << "the sequence-level loss takes no dual_clip, got " << options.dual_clip;
  // The KL term's weights 1/(S n_b); the sequence term's are 1/S.
  const std::vector<double> kl_weights =
      aggregation_weights(in.mask, {.mode = AggregationMode::kSeqMeanTokenMean});
  const bool with_kl = check_inputs(dlogp, in, options);

  const int64_t rows = in.mask.dim(0), cols = in.mask.dim(1);
  const float* m = in.mask.data<float>();
  const float* lp = in.logp.data<float>();
  const float* old = in.old_logp.data<float>();
  const float* adv = in.advantages.data<float>();
  const float* ref = with_kl ? in.ref_logp.data<float>() : nullptr;
  const float* is_w = in.is_weights.defined() ? in.is_weights.data<float>() : nullptr;
  float* grad = dlogp.defined() ? dlogp.data<float>() : nullptr;
  std::vector<int64_t> row_tokens(rows, 0);
  int64_t sequences = 0;
  for (int64_t b = 0; b < rows; ++b) {
    for (int64_t t = 0; t < cols; ++t) row_tokens[b] += m[b * cols + t] != 0;
    sequences += row_tokens[b] > 0;
  }
  PolicyLossStats stats;
  int64_t tokens = 0;
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t row = b * cols, n = row_tokens[b];
    if (n == 0) {
      if (grad) std::fill(grad + row, grad + row + cols, 0.0f);
      continue;
    }
    int64_t first = row;
    while (m[first] == 0) ++first;
    const double advantage = adv[first];
    const double w_is = is_w ? is_w[first] : 1.0;
    double log_ratio = 0;
    for (int64_t i = row; i < row + cols; ++i) {
      if (m[i] == 0) continue;
      SY_CHECK(adv[i] == adv[first]) << "sequence_policy_loss: row " << b << " has advantages "
                                     << adv[first] << " and " << adv[i] << "; a completion has one";
      SY_CHECK(!is_w || is_w[i] == is_w[first])
          << "sequence_policy_loss: row " << b << " has TIS weights " << is_w[first] << " and "
          << is_w[i] << "; a completion has one";
      const double d = static_cast<double>(lp[i]) - old[i];
      log_ratio += d;
      stats.approx_kl_old += 0.5 * d * d;
    }
    const double ratio = std::exp(log_ratio / static_cast<double>(n));
    const double unclipped = -advantage * ratio;
    const double clipped =
        -advantage * std::clamp(ratio, 1 - options.clip_low, 1 + options.clip_high);
    const bool clip_active = clipped > unclipped;  // a tie is the unclipped term
    const double row_weight = 1.0 / static_cast<double>(sequences);
    stats.policy_loss += row_weight * w_is * (clip_active ? clipped : unclipped);
    // d s_b / d logp_t = s_b / n_b at each of its tokens.
    const double pg_grad =
        clip_active ? 0.0 : row_weight * w_is * unclipped / static_cast<double>(n);
    for (int64_t i = row; i < row + cols; ++i) {
      if (m[i] == 0) {
        if (grad) grad[i] = 0;
        continue;
      }
      const KlTerm kl = with_kl ? kl_term(options.kl_estimator, lp[i], ref[i]) : KlTerm{0, 0};
      stats.kl += kl_weights[i] * kl.value;
      if (grad) grad[i] = static_cast<float>(pg_grad + options.kl_coef * kl_weights[i] * kl.dlogp);
    }
    stats.clip_fraction += clip_active ? static_cast<double>(n) : 0.0;
    tokens += n;
  }
  stats.loss = stats.policy_loss + options.kl_coef * stats.kl;
  if (tokens > 0) {
    stats.approx_kl_old /= static_cast<double>(tokens);
    stats.clip_fraction /= static_cast<double>(tokens);
  }
  return stats;
}

ValueLossStats value_loss(const Tensor& dvalues, const Tensor& values, const Tensor& old_values,
                          const Tensor& returns, const Tensor& mask,
                          const ValueLossOptions& options) {
  SY_CHECK(options.clip > 0) << "value clip must be > 0 (infinity for none), got " << options.clip;
  const std::vector<double> weights = aggregation_weights(mask, options.aggregation);
  check_per_token(values, mask, "values");
  check_per_token(old_values, mask, "old_values");
  check_per_token(returns, mask, "returns");
  if (dvalues.defined()) check_per_token(dvalues, mask, "dvalues");
  const float* m = mask.data<float>();
  const float* v = values.data<float>();
  const float* v_old = old_values.data<float>();
  const float* ret = returns.data<float>();
  float* grad = dvalues.defined() ? dvalues.data<float>() : nullptr;
  ValueLossStats stats;
  int64_t tokens = 0;
  for (int64_t i = 0; i < mask.numel(); ++i) {
    if (m[i] == 0) {
      if (grad) grad[i] = 0;
      continue;
    }
    const double unclipped = static_cast<double>(v[i]) - ret[i];
    const double v_clipped =
        v_old[i] + std::clamp(static_cast<double>(v[i]) - v_old[i], -options.clip, options.clip);
    const double clipped = v_clipped - ret[i];
    const bool use_clipped = clipped * clipped > unclipped * unclipped;
    const double e = use_clipped ? clipped : unclipped;
    stats.loss += weights[i] * 0.5 * e * e;
    if (grad) grad[i] = use_clipped ? 0.0f : static_cast<float>(weights[i] * unclipped);
    stats.clip_fraction += use_clipped;
    ++tokens;
  }
  if (tokens > 0) stats.clip_fraction /= tokens;
  return stats;
}

}  // namespace sy::rl
