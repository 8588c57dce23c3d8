// Softmax entropy on the CPU, one row at a time, summed in double:
//   entropy = lse - sum_j exp(logits_j - lse) logits_j.
#include "kernels/entropy.h"

#include <cmath>

namespace sy::cpu {

void softmax_entropy(const Tensor& entropy, const Tensor& logits, const Tensor& lse) {
  const int64_t n = logits.dim(0), vocab = logits.dim(1);
  const float* x = logits.data<float>();
  const float* l = lse.data<float>();
  float* out = entropy.data<float>();
  for (int64_t row = 0; row < n; ++row) {
    const float* xr = x + row * vocab;
    double expected = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      const double v = xr[j];
      expected += std::exp(v - l[row]) * v;
    }
    out[row] = static_cast<float>(l[row] - expected);
  }
}

}  // namespace sy::cpu
