#include "models/layers.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "kernels/attention.h"
#include "kernels/balance.h"
#include "kernels/elementwise.h"
#include "kernels/env.h"
#include "kernels/grouped_matmul.h"
#include "kernels/matmul.h"
#include "kernels/permute.h"
#include "kernels/profile.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/router.h"
#include "kernels/routing_replay.h"
#include "kernels/streams.h"
#include "kernels/swiglu.h"
#include "parallel/local_communicator.h"

namespace sy {
namespace {

// y = x W^T for a weight [out, in], read through its compute copy. y has x's dtype unless
// `out` says otherwise (the router's logits stay f32 under bf16 compute).
Tensor linear(const Tensor& x, const Param& w, std::optional<DType> out = std::nullopt) {
  Tensor y = Tensor::empty({x.dim(0), w.value.dim(0)}, out.value_or(x.dtype()), x.device());
  matmul(y, x, w.w(), false, true);
  return y;
}

// q [B, T, H, hd] and k [B, T, Hkv, hd] rotated in place (backward: by the negative angles),
// with the batch's (cos, sin) table when the model built one (both in one launch), else from
// the positions.
void rotate_in_place(const Tensor& q, const Tensor& k, const TokenLayout& layout, float theta,
                     bool backward) {
  if (layout.rope.defined()) {
    backward ? rope_backward_qk(q, k, layout.rope) : rope_forward_qk(q, k, layout.rope);
    return;
  }
  for (const Tensor* t : {&q, &k}) {
    backward ? rope_backward(*t, *t, layout.positions, theta)
             : rope_forward(*t, *t, layout.positions, theta);
  }
}

// Backward of y = x W^T: dW (fp32) accumulates; dx is written (beta_x = 0) or accumulated (1).
// dy takes x's dtype first if it differs (the f32 router gradient under bf16 compute).
void linear_backward(const Tensor& dx, Param& w, const Tensor& dy, const Tensor& x,
                     float beta_x = 0.0f) {
  matmul_backward(dx, w.grad, as_dtype(dy, x.dtype()), x, w.w(), false, true, beta_x,
                  take_grad_beta(w));
}

// The [rows, cols] matrix of expert e inside a stacked [E, rows, cols] tensor.
Tensor expert_slice(const Tensor& stacked, int64_t e) {
  return stacked.rows(e, e + 1).view({stacked.dim(1), stacked.dim(2)});
}

TopKOptions topk_options(const MoeSpec& m) {
  return {.k = m.top_k,
          .n_groups = m.n_groups,
          .topk_groups = m.topk_groups,
          .normalize = m.normalize_topk,
          .scale = m.route_scale};
}

// Streams a MoE layer spreads its experts' GEMMs over on a GPU.
constexpr int kExpertStreams = 4;

// Batched expert GEMMs (see layers.h): rows per expert block rounded up to this, and the
// most padding auto accepts, as a fraction of the real rows.
constexpr int64_t kBlockRowMultiple = 64;
constexpr double kMaxPadding = 0.25;

enum class ExpertGemms { kAuto, kLoop, kBatched };

ExpertGemms expert_gemms_from_env() {
  constexpr ExpertGemms kByIndex[] = {ExpertGemms::kLoop, ExpertGemms::kBatched, ExpertGemms::kAuto};
  return kByIndex[env_choice("SWITCHYARD_EXPERT_GEMMS", {"loop", "batched", "auto"})];
}

constexpr int64_t kGroupedRowsPerExpert = 128;  // on average, the most the grouped path takes

// Inference forwards' experts: "grouped" (the default) runs the device-offset grouped GEMMs
// where they apply, "host" the training path's (the counts copied to the host first): the
// A/B of bench/device_run.sh's rollout stage.
bool inference_grouped_from_env() {
  return env_choice("SWITCHYARD_INFERENCE_EXPERTS", {"grouped", "host"}) == 0;
}

// Runs fn(e, lo, hi) for every local expert e with rows [lo, hi) (off: [experts + 1] row
// offsets), the experts spread over kExpertStreams streams; they must write disjoint memory.
template <typename Fn>
void fan_out_experts(Device dev, const std::vector<int64_t>& off, Fn fn) {
  StreamFanout fanout(dev, kExpertStreams);
  for (int e = 0; e + 1 < static_cast<int>(off.size()); ++e) {
    if (off[e] == off[e + 1]) continue;
    fanout.select(e);
    fn(e, off[e], off[e + 1]);
  }
}

float output_std(const ModelSpec& spec) {
  // Residual-branch outputs start smaller so the residual stream's variance does not grow
  // with depth (GPT-2's 1/sqrt(2 * layers)).
  return spec.init_std / std::sqrt(2.0f * static_cast<float>(spec.n_layers));
}

}  // namespace

// --- RmsNorm ---------------------------------------------------------------------------------

RmsNorm::RmsNorm(ParamStore& store, const std::string& name, int dim, float eps)
    : weight_(store.add(name, {dim}, SyncGroup::kDense, Init::kOnes, 0.0f, false)), eps_(eps) {}

Tensor RmsNorm::forward(const Tensor& x, const Tensor& residual, const Tensor& sum) {
  x_ = residual.defined() ? sum : x;  // the normalized input, for the backward
  rstd_ = Tensor::empty({x.numel() / x.dim(-1)}, DType::kF32, x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  rmsnorm_forward(y, rstd_, x, weight_.value, eps_, residual, sum);
  return y;
}

Tensor RmsNorm::backward(const Tensor& dy, const Tensor& residual) {
  Tensor dx = Tensor::empty(dy.shape(), dy.dtype(), dy.device());
  rmsnorm_backward(dx, grad_to_add(weight_), dy, x_, weight_.value, rstd_, residual);
  return dx;
}

// --- Attention -------------------------------------------------------------------------------

Attention::Attention(ParamStore& store, const std::string& prefix, const ModelSpec& spec)
    : spec_(spec),
      norm_(store, prefix + "attn_norm.weight", spec.d_model, spec.norm_eps),
      wq_(store.add(prefix + "attn.wq", {int64_t{spec.n_heads} * spec.head_dim(), spec.d_model},
                    SyncGroup::kDense, Init::kNormal, spec.init_std, true)),
      wk_(store.add(prefix + "attn.wk", {int64_t{spec.n_kv_heads} * spec.head_dim(), spec.d_model},
                    SyncGroup::kDense, Init::kNormal, spec.init_std, true)),
      wv_(store.add(prefix + "attn.wv", {int64_t{spec.n_kv_heads} * spec.head_dim(), spec.d_model},
                    SyncGroup::kDense, Init::kNormal, spec.init_std, true)),
      wo_(store.add(prefix + "attn.wo", {spec.d_model, int64_t{spec.n_heads} * spec.head_dim()},
                    SyncGroup::kDense, Init::kNormal, output_std(spec), true)) {
  if (spec.qk_norm) {
    q_norm_ = std::make_unique<RmsNorm>(store, prefix + "attn.q_norm.weight", spec.head_dim(),
                                        spec.norm_eps);
    k_norm_ = std::make_unique<RmsNorm>(store, prefix + "attn.k_norm.weight", spec.head_dim(),
                                        spec.norm_eps);
  }
}

void Attention::project_qkv(const Tensor& n, const TokenLayout& layout, Tensor& q, Tensor& k,
                            Tensor& v) {
  const int64_t b = layout.batch, t = layout.seq, hd = spec_.head_dim();
  q = linear(n, wq_).view({b, t, spec_.n_heads, hd});
  k = linear(n, wk_).view({b, t, spec_.n_kv_heads, hd});
  v = linear(n, wv_).view({b, t, spec_.n_kv_heads, hd});
  if (q_norm_) {
    q = q_norm_->forward(q);
    k = k_norm_->forward(k);
  }
  rotate_in_place(q, k, layout, spec_.rope_theta, false);
}

Tensor Attention::forward(const Tensor& x, const TokenLayout& layout, KvAttention* cache,
                          const Tensor& residual, const Tensor& sum) {
  const int64_t b = layout.batch, t = layout.seq, hd = spec_.head_dim();
  layout_ = layout;
  std::optional<profile::Scope> region(std::in_place, "attn.qkv");
  n_ = norm_.forward(x, residual, sum);
  project_qkv(n_, layout, q_, k_, v_);
  region.emplace("attn.core");
  if (cache) {
    o_ = cache->attend(q_, k_, v_);
    lse_ = Tensor();
  } else {
    o_ = Tensor::empty(q_.shape(), q_.dtype(), x.device());
    lse_ = Tensor::empty({b, spec_.n_heads, t}, DType::kF32, x.device());
    attention_forward(o_, lse_, q_, k_, v_);
  }
  region.emplace("attn.out");
  return linear(o_.view({b * t, spec_.n_heads * hd}), wo_);
}

Tensor Attention::backward(const Tensor& dy, const Tensor& residual) {
  const int64_t n = layout_.tokens();
  Tensor o2 = o_.view({n, o_.numel() / n});
  const DType dt = dy.dtype();
  std::optional<profile::Scope> region(std::in_place, "attn.out.bwd");
  Tensor d_o = Tensor::empty(o2.shape(), dt, dy.device());
  linear_backward(d_o, wo_, dy, o2);
  region.emplace("attn.core.bwd");
  Tensor dq = Tensor::empty(q_.shape(), dt, dy.device());
  Tensor dk = Tensor::empty(k_.shape(), dt, dy.device());
  Tensor dv = Tensor::empty(v_.shape(), dt, dy.device());
  attention_backward(dq, dk, dv, d_o.view(o_.shape()), q_, k_, v_, o_, lse_);
  region.emplace("attn.qkv.bwd");
  rotate_in_place(dq, dk, layout_, spec_.rope_theta, true);
  if (q_norm_) {
    dq = q_norm_->backward(dq);
    dk = k_norm_->backward(dk);
  }
  Tensor dn = Tensor::empty(n_.shape(), dt, dy.device());
  linear_backward(dn, wq_, dq.view({n, dq.numel() / n}), n_, 0.0f);
  linear_backward(dn, wk_, dk.view({n, dk.numel() / n}), n_, 1.0f);
  linear_backward(dn, wv_, dv.view({n, dv.numel() / n}), n_, 1.0f);
  return norm_.backward(dn, residual);
}

// --- SwiGLU MLP ------------------------------------------------------------------------------

SwigluMlp::SwigluMlp(ParamStore& store, const std::string& prefix, int d_model, int hidden,
                     float std, float out_std)
    : w13_(store.add(prefix + "w13", {2 * int64_t{hidden}, d_model}, SyncGroup::kDense,
                     Init::kNormal, std, true)),
      w2_(store.add(prefix + "w2", {d_model, hidden}, SyncGroup::kDense, Init::kNormal, out_std,
                    true)) {}

Tensor SwigluMlp::forward(const Tensor& n) {
  n_ = n;
  h_ = linear(n, w13_);
  a_ = Tensor::empty({n.dim(0), w2_.value.dim(1)}, n.dtype(), n.device());
  swiglu_forward(a_, h_);
  return linear(a_, w2_);
}

Tensor SwigluMlp::backward(const Tensor& dy) {
  Tensor da = Tensor::empty(a_.shape(), dy.dtype(), dy.device());
  linear_backward(da, w2_, dy, a_);
  Tensor dh = Tensor::empty(h_.shape(), dy.dtype(), dy.device());
  swiglu_backward(dh, da, h_);
  Tensor dn = Tensor::empty(n_.shape(), dy.dtype(), dy.device());
  linear_backward(dn, w13_, dh, n_);
  return dn;
}

DenseFfn::DenseFfn(ParamStore& store, const std::string& prefix, const ModelSpec& spec)
    : norm_(store, prefix + "ffn_norm.weight", spec.d_model, spec.norm_eps),
      mlp_(store, prefix + "mlp.", spec.d_model, spec.dense_ffn_hidden, spec.init_std,
           output_std(spec)) {}

Tensor DenseFfn::forward(const Tensor& x, const TokenLayout&, const Tensor& residual,
                         const Tensor& sum) {
  profile::Scope region("ffn");
  return mlp_.forward(norm_.forward(x, residual, sum));
}

Tensor DenseFfn::backward(const Tensor& dy, const Tensor& residual) {
  profile::Scope region("ffn.bwd");
  return norm_.backward(mlp_.backward(dy), residual);
}

// --- Mixture of experts ----------------------------------------------------------------------

void RoutingStats::reset(int num_experts) {
  load.assign(num_experts, 0.0);
  dropped = 0;
  aux_loss = z_loss = seq_aux_loss = 0.0;
}

MoeFfn::MoeFfn(ParamStore& store, const std::string& prefix, const ModelSpec& spec,
               const ModelParallel& parallel)
    : spec_(spec),
      parallel_(parallel),
      local_(parallel.ep ? nullptr : std::make_unique<LocalCommunicator>()),
      dispatcher_(parallel.ep ? *parallel.ep : *local_, spec.moe.num_experts),
      norm_(store, prefix + "ffn_norm.weight", spec.d_model, spec.norm_eps),
      router_(store.add(prefix + "moe.router.weight", {spec.moe.num_experts, spec.d_model},
                        SyncGroup::kDense, Init::kNormal, spec.init_std, false)),
      w13_(store.add(
          prefix + "moe.experts.w13",
          {dispatcher_.num_local_experts(), 2 * int64_t{spec.moe.expert_hidden}, spec.d_model},
          SyncGroup::kExpert, Init::kNormal, spec.init_std, true)),
      w2_(store.add(prefix + "moe.experts.w2",
                    {dispatcher_.num_local_experts(), spec.d_model, spec.moe.expert_hidden},
                    SyncGroup::kExpert, Init::kNormal, output_std(spec), true)) {
  w13_.expert_offset = w2_.expert_offset = dispatcher_.first_local_expert();
  if (spec.moe.bias_update_rate > 0) {
    bias_ = &store.add(prefix + "moe.router.bias", {spec.moe.num_experts}, SyncGroup::kDense,
                       Init::kZeros, 0.0f, false);
    bias_->trainable = false;
  }
  if (spec.moe.num_shared_experts > 0) {
    shared_ = std::make_unique<SwigluMlp>(store, prefix + "moe.shared.", spec.d_model,
                                          spec.moe.num_shared_experts * spec.moe.expert_hidden,
                                          spec.init_std, output_std(spec));
  }
  stats_.reset(spec.moe.num_experts);
}

// The local experts on their rows of xp_local_: y = w2 (swiglu (w13 x)) per expert. Keeps
// h_, a_ (and xpad_) for the backward; returns y in xp_local_'s row order.
Tensor MoeFfn::experts_forward() {
  const MoeSpec& m = spec_.moe;
  const Device dev = xp_local_.device();
  const DType dt = xp_local_.dtype();
  const std::vector<int64_t>& off = dispatcher_.local_offsets();
  const int64_t rows = dispatcher_.local_rows();
  const int64_t experts = dispatcher_.num_local_experts(), d = spec_.d_model;
  Tensor y_local = Tensor::empty({rows, d}, dt, dev);
  int64_t most = 0;
  for (int64_t e = 0; e < experts; ++e) most = std::max(most, off[e + 1] - off[e]);
  const int64_t block = (most + kBlockRowMultiple - 1) / kBlockRowMultiple * kBlockRowMultiple;
  const ExpertGemms mode = expert_gemms_from_env();
  const bool batched = rows > 0 && (mode == ExpertGemms::kBatched ||
                                    (mode == ExpertGemms::kAuto && dev.is_cuda() && experts > 1 &&
                                     double(block * experts) <= (1 + kMaxPadding) * double(rows)));
  if (batched) {
    // Zero rows pad each expert's block: their products are zero and add nothing to dW.
    xpad_ = Tensor::zeros({experts, block, d}, dt, dev);
    rows_to_blocks(xpad_.view({experts * block, d}), xp_local_, off, block);
    h_ = Tensor::empty({experts, block, 2 * int64_t{m.expert_hidden}}, dt, dev);
    a_ = Tensor::empty({experts, block, m.expert_hidden}, dt, dev);
    matmul_batched(h_, xpad_, w13_.w(), false, true);
    swiglu_forward(a_.view({experts * block, m.expert_hidden}),
                   h_.view({experts * block, 2 * int64_t{m.expert_hidden}}));
    Tensor ypad = Tensor::empty({experts, block, d}, dt, dev);
    matmul_batched(ypad, a_, w2_.w(), false, true);
    rows_from_blocks(y_local, ypad.view({experts * block, d}), off, block);
  } else {
    // Experts are independent: their GEMMs overlap on a few streams (no-op on the CPU). The
    // SwiGLU between the two GEMMs is row-wise, so it runs once over every expert's rows
    // (one launch instead of one per expert: issuing the calls, not the GPU, limits here).
    xpad_ = Tensor();
    h_ = Tensor::empty({rows, 2 * int64_t{m.expert_hidden}}, dt, dev);
    a_ = Tensor::empty({rows, m.expert_hidden}, dt, dev);
    fan_out_experts(dev, off, [&](int e, int64_t lo, int64_t hi) {
      matmul(h_.rows(lo, hi), xp_local_.rows(lo, hi), expert_slice(w13_.w(), e), false, true);
    });
    swiglu_forward(a_, h_);
    fan_out_experts(dev, off, [&](int e, int64_t lo, int64_t hi) {
      matmul(y_local.rows(lo, hi), a_.rows(lo, hi), expert_slice(w2_.w(), e), false, true);
    });
  }
  return y_local;
}

// Backward of experts_forward: accumulates the experts' weight gradients and returns the
// gradient of xp_local_.
Tensor MoeFfn::experts_backward(const Tensor& dy_local) {
  const Device dev = dy_local.device();
  const DType dt = dy_local.dtype();
  Tensor da = Tensor::empty(a_.shape(), dt, dev);
  Tensor dh = Tensor::empty(h_.shape(), dt, dev);
  Tensor dxp_local = Tensor::empty(xp_local_.shape(), dt, dev);
  const std::vector<int64_t>& off = dispatcher_.local_offsets();
  const int64_t experts = dispatcher_.num_local_experts();
  // The first contribution since zero_grad overwrites the weight gradients (beta 0); then
  // the experts that got no rows must be zeroed here, as no GEMM writes their slices.
  const float beta2 = take_grad_beta(w2_), beta13 = take_grad_beta(w13_);
  if (xpad_.defined()) {  // the forward ran batched
    // The forward's blocks: dy's padding rows are zero, so every padding row's gradient is
    // zero and adds nothing to dW.
    const int64_t block = xpad_.dim(1), d = xpad_.dim(2), f = a_.dim(2);
    Tensor dypad = Tensor::zeros(xpad_.shape(), dt, dev);
    rows_to_blocks(dypad.view({experts * block, d}), dy_local, off, block);
    // Every expert has a block (an empty one is all padding: its products are zero).
    matmul_backward_batched(da, w2_.grad, dypad, a_, w2_.w(), false, true, 0.0f, beta2);
    swiglu_backward(dh.view({experts * block, 2 * f}), da.view({experts * block, f}),
                    h_.view({experts * block, 2 * f}));
    Tensor dxpad = Tensor::empty(xpad_.shape(), dt, dev);
    matmul_backward_batched(dxpad, w13_.grad, dh, xpad_, w13_.w(), false, true, 0.0f, beta13);
    rows_from_blocks(dxp_local, dxpad.view({experts * block, d}), off, block);
  } else {
    for (int64_t e = 0; e < experts; ++e) {
      if (off[e] != off[e + 1]) continue;
      if (beta2 == 0.0f) expert_slice(w2_.grad, e).zero_();
      if (beta13 == 0.0f) expert_slice(w13_.grad, e).zero_();
    }
    fan_out_experts(dev, off, [&](int e, int64_t lo, int64_t hi) {
      matmul_backward(da.rows(lo, hi), expert_slice(w2_.grad, e), dy_local.rows(lo, hi),
                      a_.rows(lo, hi), expert_slice(w2_.w(), e), false, true, 0.0f, beta2);
    });
    swiglu_backward(dh, da, h_);  // every expert's rows at once, as in the forward
    fan_out_experts(dev, off, [&](int e, int64_t lo, int64_t hi) {
      matmul_backward(dxp_local.rows(lo, hi), expert_slice(w13_.grad, e), dh.rows(lo, hi),
                      xp_local_.rows(lo, hi), expert_slice(w13_.w(), e), false, true, 0.0f, beta13);
    });
  }
  return dxp_local;
}

// The experts of an inference forward with every expert local: dispatch is the permute
// already queued (xp), the experts two grouped GEMMs over the plan's device offsets, the
// combine the weighted unpermute. No host wait, nothing kept for a backward.
Tensor MoeFfn::experts_forward_on_device(const Tensor& xp) {
  const int64_t rows = plan_.num_rows, d = spec_.d_model, f = spec_.moe.expert_hidden;
  const Device dev = xp.device();
  const DType dt = xp.dtype();
  std::optional<profile::Scope> region;
  Tensor shared_out;
  if (shared_) {
    region.emplace("moe.shared");
    shared_out = shared_->forward(n_);
  }
  region.emplace("moe.experts");
  Tensor h = Tensor::empty({rows, 2 * f}, dt, dev);
  grouped_matmul(h, xp, w13_.w(), plan_.device_offsets);
  Tensor a = Tensor::empty({rows, f}, dt, dev);
  swiglu_forward(a, h);
  Tensor y = Tensor::empty({rows, d}, dt, dev);
  grouped_matmul(y, a, w2_.w(), plan_.device_offsets);
  region.emplace("moe.combine");
  return combine(y, shared_out, region);
}

// The experts' rows (plan order) back to their tokens, weighted, plus the shared experts;
// the caller's region moves on to moe.shared for the add.
Tensor MoeFfn::combine(const Tensor& y, const Tensor& shared_out,
                       std::optional<profile::Scope>& region) {
  Tensor out = Tensor::empty({plan_.num_tokens, spec_.d_model}, y.dtype(), y.device());
  unpermute_forward(out, y, weights_, plan_);
  if (shared_) {
    region.emplace("moe.shared");
    add_(out, shared_out);
  }
  return out;
}

bool MoeFfn::inference_issues_without_host(int64_t n, Device device, DType dtype) const {
  const MoeSpec& m = spec_.moe;
  const int64_t f_hidden = m.expert_hidden, d = spec_.d_model, e_count = m.num_experts;
  static const bool grouped = inference_grouped_from_env();
  // The grouped kernel walks a group's rows 64 at a time in one block: it wins at decode's
  // few rows per expert and loses to cuBLAS at a prefill's hundreds (measured on an H100).
  // A dropless plan keeps every slot: n * k rows.
  return grouped && n * m.top_k <= kGroupedRowsPerExpert * e_count &&
         dispatcher_.num_local_experts() == e_count &&
         grouped_matmul_waits_for_nothing(device, dtype, 2 * f_hidden, d) &&
         grouped_matmul_waits_for_nothing(device, dtype, d, f_hidden);
}

Tensor MoeFfn::forward(const Tensor& x, const TokenLayout& layout, const Tensor& residual,
                       const Tensor& sum) {
  const MoeSpec& m = spec_.moe;
  const int64_t n = x.dim(0), e_count = m.num_experts, k = m.top_k;
  const Device dev = x.device();
  layout_ = layout;
  std::optional<profile::Scope> region(std::in_place, "moe.route");
  n_ = norm_.forward(x, residual, sum);

  // Route.
  const DType dt = n_.dtype();
  logits_ = linear(n_, router_, DType::kF32);
  scores_ = Tensor::empty(logits_.shape(), DType::kF32, dev);
  router_scores_forward(scores_, logits_, m.score_function);
  indices_ = Tensor::empty({n, k}, DType::kI32, dev);
  weights_ = Tensor::empty({n, k}, DType::kF32, dev);
  topk_forward(indices_, weights_, scores_, bias_ ? bias_->value : Tensor(), topk_options(m));
  if (replay_routes_.defined()) {
    SY_CHECK(replay_routes_.dim(0) == n)
        << "MoE routes for " << replay_routes_.dim(0) << " tokens, the forward has " << n;
    if (replay_differs_.defined()) routing_differs(replay_differs_, indices_, replay_routes_);
    if (replay_) topk_replay(indices_, weights_, scores_, replay_routes_, topk_options(m));
  }
  if (sink_) sink_->record(sink_layer_, indices_);
  // The plan's device part and the copy of its expert counts first; then, while that copy
  // travels and the host waits for it, the GPU has the permute (a dropless plan's rows are
  // known without the counts), the load statistics and the shared experts to run.
  const double capacity_factor = dropless_ ? 0.0 : m.capacity_factor;
  // Inference forwards (the rollout engine's, dropless) keep no load statistics and need no
  // balancing terms. With the experts all local, the grouped GEMMs read the plan's offsets on
  // the device, so the layer issues its work without waiting for the expert counts, and the
  // plan queues no copy to the host at all (a decode step stays free of host copies).
  const bool on_device = dropless_ && inference_issues_without_host(n, dev, dt);
  plan_ = start_dispatch_plan(indices_, m.num_experts,
                              expert_capacity(capacity_factor, n, m.top_k, m.num_experts),
                              on_device ? PlanReadback::kNone : PlanReadback::kHost);
  Tensor xp;
  auto permute = [&] {
    region.emplace("moe.dispatch");
    xp = Tensor::empty({plan_.num_rows, spec_.d_model}, dt, dev);
    permute_forward(xp, n_, plan_);
    region.emplace("moe.route");
  };
  if (plan_.num_rows >= 0) permute();
  if (on_device) {
    return experts_forward_on_device(xp);
  }
  // Queued now, with their copy to the host: read after the experts are queued, they wait for
  // nothing.
  Tensor seq_stats;
  std::optional<HostReadback> seq_stats_read;
  if (!dropless_) {
    seq_stats = Tensor::empty({layout.batch, 2 * e_count + 1}, DType::kF32, dev);
    routing_stats(seq_stats, indices_, scores_, logits_);
    seq_stats_read.emplace(seq_stats);
  }
  // The shared experts need no routing: queue them before the plan's wait for the expert
  // counts, so the GPU has their GEMMs to run while the host waits and then issues.
  Tensor shared_out;
  if (shared_) {
    region.emplace("moe.shared");
    shared_out = shared_->forward(n_);
    region.emplace("moe.route");
  }
  finish_dispatch_plan(plan_);
  if (!xp.defined()) permute();  // with a capacity the kept rows are known only now

  // Experts: rows go to the ranks owning their experts, through the experts (experts_forward)
  // and back.
  region.emplace("moe.dispatch");
  dispatcher_.plan(plan_.expert_counts);
  xp_local_ = dispatcher_.to_experts(xp);
  region.emplace("moe.experts");
  Tensor y_local = experts_forward();
  region.emplace("moe.combine");
  y_ = dispatcher_.from_experts(y_local);
  Tensor out = combine(y_, shared_out, region);
  if (dropless_) return out;  // an inference forward: no statistics, no balancing terms
  region.emplace("moe.balance");

  // Load statistics and balancing terms: per-sequence sums from the device (routing_stats,
  // queued above), combined here from one small [B, 2E + 1] copy. Local sums first; then one
  // all-reduce over the world makes f, P and the token counts those of the global batch.
  const int64_t b_count = layout.batch, t_count = layout.seq;
  const Tensor st_host = seq_stats_read->wait();
  const float* st = st_host.data<float>();
  auto stat = [&](int64_t b, int64_t col) { return double(st[b * (2 * e_count + 1) + col]); };
  // [counts (E) | score sums (E) | tokens | sequences]
  std::vector<double> global(2 * e_count + 2, 0.0);
  double z_sum = 0;
  for (int64_t b = 0; b < b_count; ++b) {
    for (int64_t e = 0; e < 2 * e_count; ++e) global[e] += stat(b, e);
    z_sum += stat(b, 2 * e_count);
  }
  std::vector<double> local_psum(global.begin() + e_count, global.begin() + 2 * e_count);
  global[2 * e_count] = static_cast<double>(n);
  global[2 * e_count + 1] = static_cast<double>(b_count);
  if (parallel_.world) parallel_.world->all_reduce_host(global, ReduceOp::kSum);
  tokens_global_ = global[2 * e_count];
  sequences_global_ = global[2 * e_count + 1];

  f_global_.assign(e_count, 0.0);
  f_seq_.assign(b_count * e_count, 0.0);
  double aux = 0, seq_aux = 0;
  for (int64_t e = 0; e < e_count; ++e) {
    f_global_[e] = e_count * global[e] / (k * tokens_global_);
    aux += f_global_[e] * local_psum[e] / tokens_global_;
    stats_.load[e] += global[e];
  }
  for (int64_t b = 0; b < b_count; ++b) {
    for (int64_t e = 0; e < e_count; ++e) {
      f_seq_[b * e_count + e] = e_count * stat(b, e) / double(k * t_count);
      seq_aux += f_seq_[b * e_count + e] * stat(b, e_count + e) / t_count / sequences_global_;
    }
  }
  // The balancing terms' gradient with respect to p (per sequence and expert) is known now:
  // send it to the device while it is idle after the read above, not in the backward.
  dbalance_ = Tensor();
  if (m.aux_loss_coef > 0 || m.seq_aux_loss_coef > 0) {
    Tensor dp = Tensor::empty({b_count, e_count});
    float* g = dp.data<float>();
    for (int64_t b = 0; b < b_count; ++b) {
      for (int64_t e = 0; e < e_count; ++e) {
        g[b * e_count + e] =
            static_cast<float>(loss_scale_ * (m.aux_loss_coef * f_global_[e] / tokens_global_ +
                                              m.seq_aux_loss_coef * f_seq_[b * e_count + e] /
                                                  (t_count * sequences_global_)));
      }
    }
    dbalance_ = dp.to(dev);
  }
  stats_.dropped += plan_.num_dropped();
  stats_.aux_loss += loss_scale_ * m.aux_loss_coef * aux;
  stats_.seq_aux_loss += loss_scale_ * m.seq_aux_loss_coef * seq_aux;
  stats_.z_loss += loss_scale_ * m.z_loss_coef * z_sum / tokens_global_;
  return out;
}

Tensor MoeFfn::backward(const Tensor& dy, const Tensor& residual) {
  const MoeSpec& m = spec_.moe;
  const Device dev = dy.device();

  // Combine, experts, dispatch: mirror of the forward.
  const DType dt = dy.dtype();
  std::optional<profile::Scope> region(std::in_place, "moe.combine.bwd");
  Tensor dyp = Tensor::empty(y_.shape(), dt, dev);
  Tensor dweights = Tensor::empty(weights_.shape(), DType::kF32, dev);
  unpermute_backward(dyp, dweights, dy, y_, weights_, plan_);
  Tensor dy_local = dispatcher_.to_experts(dyp);
  region.emplace("moe.experts.bwd");
  Tensor dxp_local = experts_backward(dy_local);
  region.emplace("moe.dispatch.bwd");
  Tensor dxp = dispatcher_.from_experts(dxp_local);
  Tensor dn = Tensor::empty(n_.shape(), dt, dev);
  permute_backward(dn, dxp, plan_);
  if (shared_) {
    region.emplace("moe.shared.bwd");
    add_(dn, shared_->backward(dy));
  }
  region.emplace("moe.route.bwd");

  // Router: gate-weight gradient through top-k, plus the balancing terms' gradients.
  Tensor dscores = Tensor::empty(scores_.shape(), DType::kF32, dev);
  topk_backward(dscores, dweights, indices_, scores_, topk_options(m));
  if (dbalance_.defined()) balance_backward(dscores, scores_, dbalance_);
  Tensor dlogits = Tensor::empty(logits_.shape(), DType::kF32, dev);
  router_scores_backward(dlogits, dscores, scores_, m.score_function);
  if (m.z_loss_coef > 0) {
    // d/dlogit of coef * sum(lse^2) / N = coef * 2 lse / N * softmax(logits).
    z_loss_backward(dlogits, logits_,
                    static_cast<float>(loss_scale_ * m.z_loss_coef / tokens_global_));
  }
  linear_backward(dn, router_, dlogits, n_, 1.0f);
  return norm_.backward(dn, residual);
}

void MoeFfn::set_routes(const Tensor& routes, bool replay, const Tensor& differs) {
  if (routes.defined()) {
    SY_CHECK(routes.ndim() == 2 && routes.dim(1) == spec_.moe.top_k)
        << "MoE routes must be i32 [N, " << spec_.moe.top_k << "], got "
        << shape_str(routes.shape());
  }
  replay_routes_ = routes;
  replay_ = routes.defined() && replay;
  replay_differs_ = routes.defined() ? differs : Tensor();
}

void MoeFfn::update_bias() {
  if (!bias_) return;
  const int e_count = spec_.moe.num_experts;
  double mean = 0;
  for (double l : stats_.load) mean += l / e_count;
  Tensor host = bias_->value.to(Device::cpu()).clone();
  float* b = host.data<float>();
  for (int e = 0; e < e_count; ++e) {
    const double diff = mean - stats_.load[e];
    b[e] += spec_.moe.bias_update_rate * static_cast<float>((diff > 0) - (diff < 0));
  }
  bias_->value.copy_from(host);
}

// --- Block -----------------------------------------------------------------------------------

Block::Block(ParamStore& store, const std::string& prefix, const ModelSpec& spec, bool moe,
             const ModelParallel& parallel)
    : attn_(store, prefix, spec) {
  if (moe) {
    auto ffn = std::make_unique<MoeFfn>(store, prefix, spec, parallel);
    moe_ = ffn.get();
    ffn_ = std::move(ffn);
  } else {
    ffn_ = std::make_unique<DenseFfn>(store, prefix, spec);
  }
}

Tensor Block::forward(const Tensor& x, const TokenLayout& layout, KvAttention* cache) {
  const ResidualTerms terms = forward_terms(x, Tensor(), Tensor(), layout, cache);
  profile::Scope region("residual");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  add(out, terms.h, terms.f);
  return out;
}

ResidualTerms Block::forward_terms(const Tensor& x, const Tensor& residual, const Tensor& sum,
                                   const TokenLayout& layout, KvAttention* cache) {
  Tensor a = attn_.forward(x, layout, cache, residual, sum);
  const Tensor& input = residual.defined() ? sum : x;
  // h = input + a, the residual stream, written by the FFN's pre-norm in its own pass.
  Tensor h = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor f = ffn_->forward(input, layout, a, h);
  return {h, f};
}

Tensor Block::backward(const Tensor& dout) {
  // Each residual connection's gradient joins its sublayer's in the pre-norm's backward.
  Tensor dh = ffn_->backward(dout, dout);
  return attn_.backward(dh, dh);
}

}  // namespace sy
