#include "models/rollout/routing_record.h"

#include "kernels/check.h"
#include "kernels/routing_replay.h"

namespace sy {

int64_t RoutingRecorder::bytes(const ModelSpec& spec, int64_t slots, int64_t max_len) {
  int64_t layers = 0;
  for (int l = 0; l < spec.n_layers; ++l) layers += spec.is_moe_layer(l);
  return slots * max_len * layers * spec.moe.top_k * int64_t{sizeof(int32_t)};
}

RoutingRecorder::RoutingRecorder(const Transformer& model, int64_t slots, int64_t max_len,
                                 const PoolStep& step)
    : step_(step) {
  const int64_t layers = model.num_routed_layers();
  SY_CHECK(layers > 0) << "a routing recorder for a model without MoE layers";
  // Not cleared: a row's positions [0, P + G - 1) are all written by its own forwards before
  // they are read, whatever an earlier sequence of the slot left there.
  routes_ = Tensor::empty({slots, max_len, layers, model.spec().moe.top_k}, DType::kI32,
                          model.store().device());
}

void RoutingRecorder::record(int layer, const Tensor& indices) {
  routes_append(routes_, indices, layer, step_.slot, step_.start, step_.count);
}

std::vector<std::vector<int32_t>> RoutingRecorder::read(
    const std::vector<std::pair<int64_t, int64_t>>& rows) {
  const int64_t max_len = routes_.dim(1), width = routes_.dim(2) * routes_.dim(3);
  std::vector<HostReadback> copies;
  copies.reserve(rows.size());
  for (const auto& [slot, positions] : rows) {
    SY_CHECK(positions >= 0 && positions <= max_len)
        << "routes of " << positions << " positions asked of a slot of " << max_len;
    copies.emplace_back(routes_.rows(slot, slot + 1).view({max_len, width}).rows(0, positions));
  }
  std::vector<std::vector<int32_t>> out;
  out.reserve(rows.size());
  for (HostReadback& copy : copies) out.push_back(copy.wait().to_i32_vector());
  return out;
}

}  // namespace sy
