// CPU reference for token sampling (kernels/sampling.h), one row at a time, in the order the
// rule is written: z and e = exp(z - max z) in f32 as the kernel computes them, every mass
// summed in double, candidates put in order by sorting.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/sampling.h"

namespace sy::cpu {
namespace {

struct RowParams {
  float temperature, top_p, min_p;
  int32_t top_k;
  double u;
};

// The value checks the CUDA kernel cannot make without waiting for the host.
void check_row(const RowParams& p, int64_t r) {
  SY_CHECK(std::isfinite(p.temperature))
      << "sample_tokens: temperature of row " << r << " is " << p.temperature
      << "; use a finite value (<= 0 for greedy)";
  SY_CHECK(p.top_p > 0.0f && p.top_p <= 1.0f)
      << "sample_tokens: top_p of row " << r << " is " << p.top_p << "; it must be in (0, 1]";
  SY_CHECK(p.min_p >= 0.0f && p.min_p <= 1.0f)
      << "sample_tokens: min_p of row " << r << " is " << p.min_p << "; it must be in [0, 1]";
  SY_CHECK(p.top_k >= 0) << "sample_tokens: top_k of row " << r << " is " << p.top_k
                         << "; use 0 for no limit or a positive count";
}

// Returns (token, logprob) for one row of logits x[0, V).
std::pair<int32_t, float> sample_row(const float* x, int64_t vocab, const RowParams& p) {
  const bool greedy = p.temperature <= 0.0f;
  std::vector<float> z(vocab);
  for (int64_t j = 0; j < vocab; ++j) z[j] = greedy ? x[j] : x[j] / p.temperature;
  // The first maximum: ties go to the lower id.
  const int64_t argmax = std::max_element(z.begin(), z.end()) - z.begin();
  const float zmax = z[argmax];
  double total = 0;
  for (int64_t j = 0; j < vocab; ++j) total += std::exp(static_cast<double>(z[j]) - zmax);
  const double lse = zmax + std::log(total);
  const auto logprob_of = [&](int64_t j) {
    return static_cast<float>(static_cast<double>(z[j]) - lse);
  };
  if (greedy) return {static_cast<int32_t>(argmax), logprob_of(argmax)};

  std::vector<float> e(vocab);
  for (int64_t j = 0; j < vocab; ++j) e[j] = std::exp(z[j] - zmax);
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return z[a] > z[b]; });
  int64_t keep = p.top_k > 0 ? std::min<int64_t>(p.top_k, vocab) : vocab;
  // e is monotone in z, so the tokens with e >= min_p (the largest probability has e = 1)
  // are a prefix of this order.
  if (p.min_p > 0.0f) {
    int64_t kept = 0;
    while (kept < keep && e[order[kept]] >= p.min_p) ++kept;
    keep = kept;
  }
  order.resize(keep);
  if (p.top_p < 1.0f) {
    // Distinct z can round to the same e: reorder by (e descending, id ascending).
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return e[a] != e[b] ? e[a] > e[b] : a < b;
    });
    double left = 0;
    for (int32_t j : order) left += e[j];
    double mass = 0;
    int64_t cut = 0;
    while (cut < keep && mass < p.top_p * left) mass += e[order[cut++]];
    order.resize(cut);
  }
  std::sort(order.begin(), order.end());
  double mass = 0;
  for (int32_t j : order) mass += e[j];
  const double target = p.u * mass;
  double cumulative = 0;
  for (int32_t j : order) {
    cumulative += e[j];
    if (cumulative > target) return {j, logprob_of(j)};
  }
  return {order.back(), logprob_of(order.back())};
}

}  // namespace

void sample_tokens(const Tensor& token, const Tensor& logprob, const Tensor& logits,
                   const SamplingParams& params) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  const float* x = logits.data<float>();
  const float *temperature = params.temperature.data<float>(),
              *top_p = params.top_p.data<float>(), *min_p = params.min_p.data<float>();
  const int32_t *top_k = params.top_k.data<int32_t>(), *active = params.active.data<int32_t>(),
                *position = params.position.data<int32_t>();
  const int64_t *seed = params.seed.data<int64_t>(), *row_id = params.row_id.data<int64_t>();
  int32_t* out_token = token.data<int32_t>();
  float* out_logprob = logprob.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    if (active[r] == 0) continue;
    SY_CHECK(position[r] >= 0) << "sample_tokens: position of row " << r << " is " << position[r]
                               << "; positions count from 0";
    const RowParams p{temperature[r], top_p[r], min_p[r], top_k[r],
                      sampling_uniform(static_cast<uint64_t>(seed[r]),
                                       static_cast<uint64_t>(row_id[r]),
                                       static_cast<uint64_t>(position[r]))};
    check_row(p, r);
    const auto [t, lp] = sample_row(x + r * vocab, vocab, p);
    out_token[r] = t;
    out_logprob[r] = lp;
  }
}

}  // namespace sy::cpu
