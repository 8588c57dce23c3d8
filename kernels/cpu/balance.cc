// The balancing terms' per-token work on the CPU (see kernels/balance.h), in double.
#include "kernels/balance.h"

#include <algorithm>
#include <cmath>

namespace sy::cpu {
namespace {
double row_lse(const float* row, int64_t e) {
  double mx = row[0];
  for (int64_t j = 1; j < e; ++j) mx = std::max(mx, double(row[j]));
  double sum = 0;
  for (int64_t j = 0; j < e; ++j) sum += std::exp(row[j] - mx);
  return mx + std::log(sum);
}
}  // namespace

void routing_stats(const Tensor& stats, const Tensor& indices, const Tensor& scores,
                   const Tensor& logits) {
  const int64_t n = scores.dim(0), e = scores.dim(1), k = indices.dim(1);
  const int64_t b_count = stats.dim(0), t_count = n / b_count;
  const int32_t* idx = indices.data<int32_t>();
  const float* s = scores.data<float>();
  const float* lg = logits.data<float>();
  float* out = stats.data<float>();
  std::vector<double> acc(2 * e + 1);
  for (int64_t b = 0; b < b_count; ++b) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t r = b * t_count; r < (b + 1) * t_count; ++r) {
      for (int64_t j = 0; j < k; ++j) acc[idx[r * k + j]] += 1;
      double total = 0;
      for (int64_t x = 0; x < e; ++x) total += s[r * e + x];
      for (int64_t x = 0; x < e; ++x) acc[e + x] += s[r * e + x] / total;
      const double lse = row_lse(lg + r * e, e);
      acc[2 * e] += lse * lse;
    }
    for (int64_t x = 0; x < 2 * e + 1; ++x) out[b * (2 * e + 1) + x] = static_cast<float>(acc[x]);
  }
}

void balance_backward(const Tensor& dscores, const Tensor& scores, const Tensor& dp) {
  const int64_t n = scores.dim(0), e = scores.dim(1), t_count = n / dp.dim(0);
  const float* s = scores.data<float>();
  const float* g = dp.data<float>();
  float* ds = dscores.data<float>();
  for (int64_t r = 0; r < n; ++r) {
    const float* gb = g + (r / t_count) * e;
    double total = 0, dot = 0;
    for (int64_t x = 0; x < e; ++x) total += s[r * e + x];
    for (int64_t x = 0; x < e; ++x) dot += double(gb[x]) * s[r * e + x] / total;
    for (int64_t x = 0; x < e; ++x) ds[r * e + x] += static_cast<float>((gb[x] - dot) / total);
  }
}

void z_loss_backward(const Tensor& dlogits, const Tensor& logits, float scale) {
  const int64_t n = logits.dim(0), e = logits.dim(1);
  const float* lg = logits.data<float>();
  float* dl = dlogits.data<float>();
  for (int64_t r = 0; r < n; ++r) {
    const float* row = lg + r * e;
    const double lse = row_lse(row, e);
    const double c = double(scale) * 2.0 * lse;
    for (int64_t x = 0; x < e; ++x) dl[r * e + x] += static_cast<float>(c * std::exp(row[x] - lse));
  }
}

}  // namespace sy::cpu
