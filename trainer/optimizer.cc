#include "trainer/optimizer.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "kernels/elementwise.h"

namespace sy {

AdamW::AdamW(ParamStore& store, const OptimizerSettings& settings,
             const OptimizerParallel& parallel)
    : store_(store), settings_(settings), parallel_(parallel) {
  // Owners balance the state's size over each group's ranks, deterministically everywhere.
  std::map<Communicator*, std::vector<int64_t>> load;
  for (Param* p : store_.params()) {
    if (!p->trainable) continue;
    Slot slot{p, nullptr, 0, true, Tensor(), Tensor()};
    if (parallel_.zero1) {
      slot.group = p->group == SyncGroup::kExpert ? parallel_.edp : parallel_.world;
      if (slot.group) {
        std::vector<int64_t>& l = load[slot.group];
        l.resize(slot.group->size(), 0);
        slot.owner = static_cast<int>(std::min_element(l.begin(), l.end()) - l.begin());
        l[slot.owner] += p->value.numel();
        slot.owned = slot.owner == slot.group->rank();
      }
    }
    if (slot.owned) {
      slot.m = Tensor::zeros(p->value.shape(), DType::kF32, p->value.device());
      slot.v = Tensor::zeros(p->value.shape(), DType::kF32, p->value.device());
    }
    slots_.push_back(std::move(slot));
  }
}

double AdamW::grad_norm() const {
  // Dense gradients are identical on every rank after the sync: count them once. Each EP rank
  // holds different experts: sum their squares over the EP group.
  std::vector<Tensor> grads;
  for (const Slot& s : slots_) grads.push_back(s.param->grad);
  const std::vector<double> squares = sum_squares_each(grads);  // one wait for all
  double dense = 0, expert = 0;
  for (size_t i = 0; i < slots_.size(); ++i)
    (slots_[i].param->group == SyncGroup::kExpert ? expert : dense) += squares[i];
  if (parallel_.ep) parallel_.ep->all_reduce_host({&expert, 1}, ReduceOp::kSum);
  return std::sqrt(dense + expert);
}

double AdamW::step(float lr) {
  store_.finish_grads();  // a parameter no backward reached since zero_grad has gradient 0
  const double norm = grad_norm();
  // Clipping scales the gradients inside the update (they are left as computed).
  float factor = 1.0f;
  if (settings_.grad_clip > 0 && norm > settings_.grad_clip)
    factor = static_cast<float>(settings_.grad_clip / (norm + 1e-6));
  ++steps_;
  // Owners write the bf16 compute copies in the same pass; with ZeRO-1 the other ranks get
  // new values by broadcast, and their copies are re-derived on the next forward.
  bool copies_written = true;
  for (const Param* p : store_.params())
    if (p->compute.defined() && !p->trainable) copies_written = false;
  // Every owned parameter in one call (one launch on the GPU), each with its own decay.
  std::vector<AdamWTensors> owned;
  owned.reserve(slots_.size());
  for (const Slot& s : slots_) {
    if (!s.owned) continue;
    owned.push_back({.param = s.param->value,
                     .grad = s.param->grad,
                     .m = s.m,
                     .v = s.v,
                     .copy = s.param->compute,
                     .weight_decay = s.param->decay ? settings_.weight_decay : 0.0f});
  }
  adamw_step_many(owned, {.lr = lr,
                          .beta1 = settings_.beta1,
                          .beta2 = settings_.beta2,
                          .eps = settings_.eps,
                          .step = steps_,
                          .grad_scale = factor});
  for (Slot& s : slots_) {
    if (s.group) {
      s.group->broadcast(s.param->value, s.owner);
      copies_written = false;
    }
  }
  store_.values_changed();
  if (copies_written) store_.compute_copies_written();
  return norm;
}

std::vector<std::pair<std::string, Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Slot& s : slots_) {
    if (!s.owned) continue;
    out.emplace_back("adam_m." + s.param->name, s.m);
    out.emplace_back("adam_v." + s.param->name, s.v);
  }
  return out;
}

absl::Status AdamW::load_state(const std::vector<std::pair<std::string, Tensor>>& tensors,
                               int64_t steps) {
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : tensors) by_name[name] = &t;
  for (Slot& s : slots_) {
    if (!s.owned) continue;
    for (auto [prefix, dst] : {std::pair{"adam_m.", &s.m}, std::pair{"adam_v.", &s.v}}) {
      const std::string name = prefix + s.param->name;
      auto it = by_name.find(name);
      if (it == by_name.end()) {
        return absl::NotFoundError(absl::StrCat("optimizer state has no tensor '", name, "'"));
      }
      if (it->second->shape() != dst->shape() || it->second->dtype() != DType::kF32) {
        return absl::InvalidArgumentError(
            absl::StrCat("optimizer tensor '", name, "' has shape ", shape_str(it->second->shape()),
                         ", the model expects ", shape_str(dst->shape())));
      }
      dst->copy_from(*it->second);
    }
  }
  steps_ = steps;
  return absl::OkStatus();
}

}  // namespace sy
