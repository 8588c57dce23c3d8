#include "parallel/gradient_sync.h"

#include <algorithm>

namespace sy {

GradientSync::GradientSync(std::vector<Tensor> dense_grads, std::vector<Tensor> expert_grads,
                           Communicator& world, Communicator& edp, int64_t bucket_elements)
    : dense_(std::move(dense_grads)),
      expert_(std::move(expert_grads)),
      world_(world),
      edp_(edp),
      bucket_elements_(bucket_elements) {}

void GradientSync::sync() {
  sync_group(dense_, world_);
  sync_group(expert_, edp_);
}

void GradientSync::sync_group(const std::vector<Tensor>& params, Communicator& comm) {
  if (comm.size() == 1 || params.empty()) return;
  size_t i = 0;
  while (i < params.size()) {
    // A bucket: consecutive parameters up to bucket_elements (a larger one travels alone).
    size_t end = i;
    int64_t elements = 0;
    while (end < params.size() &&
           (end == i || elements + params[end].numel() <= bucket_elements_)) {
      elements += params[end].numel();
      ++end;
    }
    const Device dev = params[i].device();
    Tensor bucket = Tensor::empty({elements}, DType::kF32, dev);
    int64_t at = 0;
    for (size_t j = i; j < end; ++j) {
      const int64_t n = params[j].numel();
      bucket.rows(at, at + n).copy_from(params[j].view({n}));
      at += n;
    }
    comm.all_reduce(bucket, ReduceOp::kSum);
    at = 0;
    for (size_t j = i; j < end; ++j) {
      const int64_t n = params[j].numel();
      params[j].view({n}).copy_from(bucket.rows(at, at + n));
      at += n;
    }
    i = end;
  }
}

}  // namespace sy
