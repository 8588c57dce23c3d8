#include "rl/kl.h"

#include <algorithm>
#include <cmath>

namespace sy::rl {
namespace {

void check_per_token(const Tensor& t, const Tensor& mask, const char* what) {
  check_shape(t, mask.shape(), what);
  check_dtype(t, DType::kF32, what);
  SY_CHECK(t.device().is_cpu()) << what << " is on " << t.device().str() << ", expected cpu";
}

}  // namespace

const char* kl_estimator_name(KlEstimator estimator) {
  switch (estimator) {
    case KlEstimator::kK1:
      return "k1";
    case KlEstimator::kK2:
      return "k2";
    case KlEstimator::kK3:
      return "k3";
  }
  return "unknown";
}

KlTerm kl_term(KlEstimator estimator, double logp, double ref_logp) {
  const double d = logp - ref_logp;
  switch (estimator) {
    case KlEstimator::kK1:
      return {d, 1.0};
    case KlEstimator::kK2:
      return {0.5 * d * d, d};
    case KlEstimator::kK3: {
      // expm1 keeps the small-d case accurate: exp(−d) − 1 + d without cancellation in exp.
      const double e = std::expm1(-d);
      return {e + d, -e};
    }
  }
  SY_CHECK(false) << "unknown KL estimator " << static_cast<int>(estimator);
  return {};
}

KlStats apply_kl_penalty(const Tensor& rewards, const Tensor& logp, const Tensor& ref_logp,
                         const Tensor& mask, KlEstimator estimator, double beta) {
  SY_CHECK(mask.ndim() == 2) << "mask must be [B, T], got " << shape_str(mask.shape());
  check_per_token(mask, mask, "mask");
  check_per_token(rewards, mask, "rewards");
  check_per_token(logp, mask, "logp");
  check_per_token(ref_logp, mask, "ref_logp");
  SY_CHECK(beta >= 0) << "KL coefficient must be >= 0, got " << beta;
  const int64_t batch = mask.dim(0), seq_len = mask.dim(1);
  const float* m = mask.data<float>();
  const float* lp = logp.data<float>();
  const float* ref = ref_logp.data<float>();
  float* r = rewards.data<float>();
  double token_sum = 0, sequence_sum = 0;
  int64_t tokens = 0, sequences = 0;
  for (int64_t b = 0; b < batch; ++b) {
    double row_sum = 0;
    int64_t row_tokens = 0;
    for (int64_t t = 0; t < seq_len; ++t) {
      const int64_t i = b * seq_len + t;
      SY_CHECK(m[i] == 0 || m[i] == 1)
          << "mask[" << b << ", " << t << "] = " << m[i] << ", expected 0 or 1";
      if (m[i] == 0) continue;
      const double kl = kl_term(estimator, lp[i], ref[i]).value;
      r[i] = static_cast<float>(r[i] - beta * kl);
      row_sum += kl;
      ++row_tokens;
    }
    token_sum += row_sum;
    tokens += row_tokens;
    if (row_tokens > 0) {
      sequence_sum += row_sum;
      ++sequences;
    }
  }
  KlStats stats;
  if (tokens > 0) stats.token_mean = token_sum / tokens;
  if (sequences > 0) stats.sequence_mean = sequence_sum / sequences;
  return stats;
}

KlController KlController::fixed(double coef) {
  SY_CHECK(coef >= 0) << "KL coefficient must be >= 0, got " << coef;
  return KlController(coef, /*adaptive=*/false, 0, 0);
}

KlController KlController::adaptive(double init_coef, double target, double horizon) {
  SY_CHECK(init_coef >= 0) << "KL coefficient must be >= 0, got " << init_coef;
  SY_CHECK(target > 0) << "adaptive KL target must be > 0, got " << target;
  SY_CHECK(horizon > 0) << "adaptive KL horizon must be > 0, got " << horizon;
  return KlController(init_coef, /*adaptive=*/true, target, horizon);
}

void KlController::update(double current_kl, int64_t n_steps) {
  if (!adaptive_) return;
  SY_CHECK(std::isfinite(current_kl)) << "KL is " << current_kl;
  SY_CHECK(n_steps >= 0) << "n_steps must be >= 0, got " << n_steps;
  const double error = std::clamp(current_kl / target_ - 1.0, -0.2, 0.2);
  coef_ *= 1.0 + error * static_cast<double>(n_steps) / horizon_;
}

}  // namespace sy::rl
