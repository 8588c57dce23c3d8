#include "trainer/optimizer.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "kernels/elementwise.h"

namespace sy {

DType moment_dtype_of(switchyard::OptimizerConfig::MomentDtype moments) {
  return moments == switchyard::OptimizerConfig::MOMENT_BF16 ? DType::kBF16 : DType::kF32;
}

AdamW::AdamW(ParamStore& store, const OptimizerSettings& settings,
             const OptimizerParallel& parallel)
    : store_(store), settings_(settings), parallel_(parallel) {
  SY_CHECK(settings_.moment_dtype == DType::kF32 || settings_.moment_dtype == DType::kBF16)
      << "AdamW moments in " << dtype_name(settings_.moment_dtype) << "; f32 or bf16";
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
      slot.m = Tensor::zeros(p->value.shape(), settings_.moment_dtype, p->value.device());
      slot.v = Tensor::zeros(p->value.shape(), settings_.moment_dtype, p->value.device());
    }
    slots_.push_back(std::move(slot));
  }
  for (bool expert : {false, true}) {
    for (size_t i = 0; i < slots_.size(); ++i)
      if ((slots_[i].param->group == SyncGroup::kExpert) == expert) norm_order_.push_back(i);
    if (!expert) num_dense_ = norm_order_.size();
  }
  // With one EP rank (or none) no other rank's squares are needed (dense gradients are the same
  // everywhere after the sync), so the GPU can compute the clip scale itself.
  const bool one_ep_rank = !parallel_.ep || parallel_.ep->size() == 1;
  if (one_ep_rank && !slots_.empty() && slots_[0].param->grad.device().is_cuda()) {
    gpu_squares_and_scale_ = Tensor::empty({static_cast<int64_t>(slots_.size()) + 1}, DType::kI64,
                                           slots_[0].param->grad.device());
  }
}

std::vector<Tensor> AdamW::grads_in_norm_order() const {
  std::vector<Tensor> grads;
  grads.reserve(norm_order_.size());
  for (size_t i : norm_order_) grads.push_back(slots_[i].param->grad);
  return grads;
}

double AdamW::norm_from_squares(std::span<const double> squares) const {
  // Dense gradients are identical on every rank after the sync: count them once. Each EP rank
  // holds different experts: sum their squares over the EP group. Each part is added in slot
  // order, and clip_scale_from_squares adds them the same way on the GPU.
  double dense = 0, expert = 0;
  for (size_t i = 0; i < squares.size(); ++i) (i < num_dense_ ? dense : expert) += squares[i];
  if (parallel_.ep) parallel_.ep->all_reduce_host({&expert, 1}, ReduceOp::kSum);
  return std::sqrt(dense + expert);
}

double AdamW::grad_norm() const {
  return norm_from_squares(sum_squares_each(grads_in_norm_order()));  // one wait for all
}

double AdamW::step(float lr) {
  store_.finish_grads();  // a parameter no backward reached since zero_grad has gradient 0
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
  // Clipping scales the gradients inside the update (they are left as computed).
  AdamWParams params{.lr = lr,
                     .beta1 = settings_.beta1,
                     .beta2 = settings_.beta2,
                     .eps = settings_.eps,
                     .step = steps_};
  double norm = 0;
  if (gpu_squares_and_scale_.defined()) {
#ifdef SWITCHYARD_HAVE_CUDA
    // The squares, the scale and the update run back to back on the GPU: the update's table is
    // built and uploaded while the squares are summed, and the host waits for the squares (for
    // the norm it returns) only once everything is queued.
    const int64_t n = gpu_squares_and_scale_.numel() - 1;
    auto* squares = static_cast<double*>(gpu_squares_and_scale_.raw());
    auto* scale = reinterpret_cast<float*>(squares + n);
    cuda::sum_squares_each(grads_in_norm_order(), squares);
    cuda::clip_scale_from_squares(squares, n, static_cast<int64_t>(num_dense_), settings_.grad_clip,
                                  scale);
    HostReadback squares_read(gpu_squares_and_scale_.rows(0, n));
    params.grad_scale_device = scale;
    adamw_step_many(owned, params);
    const Tensor host = squares_read.wait();
    norm = norm_from_squares({static_cast<const double*>(host.raw()), static_cast<size_t>(n)});
#endif
  } else {
    norm = grad_norm();
    // Every rank sees the same norm (dense gradients are synced, expert squares summed over
    // the EP group), so every rank skips alike.
    if (std::isfinite(norm)) {
      params.grad_scale = clip_scale(norm, settings_.grad_clip);
      adamw_step_many(owned, params);
    }
  }
  if (!std::isfinite(norm)) {
    // Nothing was updated (on the GPU the clip scale came out NaN and the kernel left every
    // element as it was): the step did not happen.
    --steps_;
    return norm;
  }
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
      const Tensor& src = *it->second;
      if (src.shape() != dst->shape()) {
        return absl::InvalidArgumentError(
            absl::StrCat("optimizer tensor '", name, "' has shape ", shape_str(src.shape()),
                         ", the model expects ", shape_str(dst->shape())));
      }
      if (src.dtype() != DType::kF32 && src.dtype() != DType::kBF16) {
        return absl::InvalidArgumentError(absl::StrCat("optimizer tensor '", name, "' is ",
                                                       dtype_name(src.dtype()),
                                                       ", expected f32 or bf16"));
      }
      // Saved with the other moment dtype: widened, or rounded to nearest even, on the host.
      dst->copy_from(src.dtype() == dst->dtype() ? src : src.to(Device::cpu()).to(dst->dtype()));
    }
  }
  steps_ = steps;
  return absl::OkStatus();
}

}  // namespace sy
