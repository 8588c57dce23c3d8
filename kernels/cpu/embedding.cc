#include "kernels/embedding.h"

#include <cstring>

namespace sy::cpu {

void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table) {
  const int64_t n = ids.numel(), vocab = table.dim(0), d = table.dim(1);
  const int32_t* id = ids.data<int32_t>();
  const float* w = table.data<float>();
  float* y = out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    SY_CHECK(id[i] >= 0 && id[i] < vocab) << "token id " << id[i] << " outside vocab " << vocab;
    std::memcpy(y + i * d, w + static_cast<int64_t>(id[i]) * d, d * sizeof(float));
  }
}

void embedding_backward(const Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  const int64_t n = ids.numel(), vocab = dtable.dim(0), d = dtable.dim(1);
  const int32_t* id = ids.data<int32_t>();
  const float* dy = dout.data<float>();
  float* dw = dtable.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    SY_CHECK(id[i] >= 0 && id[i] < vocab) << "token id " << id[i] << " outside vocab " << vocab;
    float* row = dw + static_cast<int64_t>(id[i]) * d;
    for (int64_t j = 0; j < d; ++j) row[j] += dy[i * d + j];
  }
}

}  // namespace sy::cpu
