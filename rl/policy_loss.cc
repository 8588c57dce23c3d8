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

PolicyLossStats policy_loss(const Tensor& dlogp, const PolicyLossInputs& in,
                            const PolicyLossOptions& options) {
  SY_CHECK(options.clip_low >= 0 && options.clip_low < 1)
      << "clip_low must be in [0, 1), got " << options.clip_low;
  SY_CHECK(options.clip_high >= 0) << "clip_high must be >= 0, got " << options.clip_high;
  SY_CHECK(options.dual_clip == 0 || options.dual_clip > 1)
      << "dual_clip must be 0 (off) or > 1, got " << options.dual_clip;
  SY_CHECK(options.kl_coef >= 0) << "kl_coef must be >= 0, got " << options.kl_coef;
  const std::vector<double> weights = aggregation_weights(in.mask, options.aggregation);
  check_per_token(in.logp, in.mask, "logp");
  check_per_token(in.old_logp, in.mask, "old_logp");
  check_per_token(in.advantages, in.mask, "advantages");
  const bool with_kl = in.ref_logp.defined();
  SY_CHECK(with_kl || options.kl_coef == 0) << "kl_coef > 0 needs ref_logp";
  if (with_kl) check_per_token(in.ref_logp, in.mask, "ref_logp");
  if (dlogp.defined()) check_per_token(dlogp, in.mask, "dlogp");

  const float* m = in.mask.data<float>();
  const float* lp = in.logp.data<float>();
  const float* old = in.old_logp.data<float>();
  const float* adv = in.advantages.data<float>();
  const float* ref = with_kl ? in.ref_logp.data<float>() : nullptr;
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
    stats.policy_loss += weights[i] * pg.value;
    stats.kl += weights[i] * kl.value;
    if (grad) grad[i] = static_cast<float>(weights[i] * (pg.dlogp + options.kl_coef * kl.dlogp));
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
