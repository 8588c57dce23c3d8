// Softmax cross-entropy on CPU, one row of V logits at a time:
//   lse = max + log(sum_j exp(logits_j - max)),  loss = lse - logits_target (0 if ignored);
//   dlogits_j = dloss (exp(logits_j - lse) - [j == target]) (written; zero if ignored).
// Subtracting the max keeps exp() finite for any logits; the sum accumulates in double.
// The backward reads logits_j only to write dlogits_j and subtracts the one-hot afterwards, so
// dlogits may be the logits buffer itself.
#include "kernels/cross_entropy.h"

#include <algorithm>
#include <cmath>

namespace sy::cpu {
namespace {

// The target of `row`, or -1 when the row is ignored.
int64_t target_of(const int32_t* targets, int64_t row, int64_t vocab, int ignore_index) {
  const int32_t t = targets[row];
  if (t == ignore_index) return -1;
  SY_CHECK(t >= 0 && t < vocab) << "cross_entropy target " << t << " of row " << row
                                << " is outside vocab " << vocab << " and is not ignore_index "
                                << ignore_index;
  return t;
}

}  // namespace

void cross_entropy_forward(const Tensor& losses, const Tensor& lse, const Tensor& logits,
                           const Tensor& targets, int ignore_index) {
  const int64_t n = logits.dim(0), vocab = logits.dim(1);
  const float* x = logits.data<float>();
  const int32_t* t = targets.data<int32_t>();
  float* loss = losses.data<float>();
  float* pl = lse.data<float>();
  for (int64_t row = 0; row < n; ++row) {
    const float* xr = x + row * vocab;
    const float max = *std::max_element(xr, xr + vocab);
    double sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(xr[j] - max));
    const double row_lse = max + std::log(sum);
    pl[row] = static_cast<float>(row_lse);
    const int64_t target = target_of(t, row, vocab, ignore_index);
    loss[row] = target < 0 ? 0.0f : static_cast<float>(row_lse - xr[target]);
  }
}

void cross_entropy_backward(const Tensor& dlogits, const Tensor& dlosses, const Tensor& logits,
                            const Tensor& lse, const Tensor& targets, int ignore_index) {
  const int64_t n = logits.dim(0), vocab = logits.dim(1);
  const float* x = logits.data<float>();
  const float* dl = dlosses.data<float>();
  const float* pl = lse.data<float>();
  const int32_t* t = targets.data<int32_t>();
  float* dx = dlogits.data<float>();
  for (int64_t row = 0; row < n; ++row) {
    const float* xr = x + row * vocab;
    float* dxr = dx + row * vocab;
    const int64_t target = target_of(t, row, vocab, ignore_index);
    if (target < 0) {
      std::fill(dxr, dxr + vocab, 0.0f);
      continue;
    }
    for (int64_t j = 0; j < vocab; ++j) dxr[j] = dl[row] * std::exp(xr[j] - pl[row]);
    dxr[target] -= dl[row];
  }
}

// Forward, then backward from the lse just written (dlogits may alias logits, as there).
void cross_entropy_forward_backward(const Tensor& losses, const Tensor& lse, const Tensor& dlogits,
                                    const Tensor& dlosses, const Tensor& logits,
                                    const Tensor& targets, int ignore_index) {
  cpu::cross_entropy_forward(losses, lse, logits, targets, ignore_index);
  cpu::cross_entropy_backward(dlogits, dlosses, logits, lse, targets, ignore_index);
}

}  // namespace sy::cpu
