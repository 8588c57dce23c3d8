#include "models/transformer.h"

#include <algorithm>
#include <cmath>

#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/entropy.h"
#include "kernels/matmul.h"
#include "kernels/profile.h"
#include "kernels/rope.h"

namespace sy {
namespace {

// Inputs and targets of MTP module k (1-based): position i sees token t_{i+k} and predicts
// the target of position i+k; positions past the end are padding and carry no loss.
std::pair<Tensor, Tensor> shift_for_mtp(const Tensor& inputs, const Tensor& targets, int k) {
  const int64_t b = inputs.dim(0), t = inputs.dim(1);
  Tensor ids = Tensor::empty({b, t}, DType::kI32);
  Tensor tgt = Tensor::empty({b, t}, DType::kI32);
  const std::vector<int32_t> in = inputs.to_i32_vector(), tg = targets.to_i32_vector();
  int32_t* pi = ids.data<int32_t>();
  int32_t* pt = tgt.data<int32_t>();
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t i = 0; i < t; ++i) {
      const bool inside = i + k < t;
      pi[r * t + i] = inside ? in[r * t + i + k] : 0;
      pt[r * t + i] = inside ? tg[r * t + i + k] : kIgnoreIndex;
    }
  }
  return {ids, tgt};
}

int64_t count_valid(const Tensor& targets) {
  int64_t n = 0;
  for (int32_t v : targets.to_i32_vector()) n += v != kIgnoreIndex;
  return n;
}

}  // namespace

Transformer::Transformer(const ModelSpec& spec, ParamStore& store, const ModelParallel& parallel,
                         bool value_head)
    : spec_(spec),
      store_(store),
      embed_(store.add("embed.weight", {spec.vocab_size, spec.d_model}, SyncGroup::kDense,
                       Init::kNormal, spec.init_std, false)) {
  for (int l = 0; l < spec_.n_layers; ++l) {
    blocks_.push_back(std::make_unique<Block>(store, "layers." + std::to_string(l) + ".", spec_,
                                              spec_.is_moe_layer(l), parallel));
  }
  final_norm_ =
      std::make_unique<RmsNorm>(store, "final_norm.weight", spec_.d_model, spec_.norm_eps);
  if (!spec_.tie_embeddings) {
    lm_head_ = &store.add("lm_head.weight", {spec_.vocab_size, spec_.d_model}, SyncGroup::kDense,
                          Init::kNormal, spec_.init_std, true);
  }
  if (value_head) {
    value_head_ = &store.add("value_head.weight", {1, spec_.d_model}, SyncGroup::kDense,
                             Init::kZeros, 0.0f, false);
  }
  for (int k = 0; k < spec_.mtp_modules; ++k) {
    const std::string p = "mtp." + std::to_string(k) + ".";
    MtpModule m;
    m.hnorm = std::make_unique<RmsNorm>(store, p + "hnorm.weight", spec_.d_model, spec_.norm_eps);
    m.enorm = std::make_unique<RmsNorm>(store, p + "enorm.weight", spec_.d_model, spec_.norm_eps);
    m.proj = &store.add(p + "proj", {spec_.d_model, 2 * spec_.d_model}, SyncGroup::kDense,
                        Init::kNormal, spec_.init_std, true);
    m.block = std::make_unique<Block>(store, p + "block.", spec_, spec_.has_moe(), parallel);
    m.out_norm =
        std::make_unique<RmsNorm>(store, p + "out_norm.weight", spec_.d_model, spec_.norm_eps);
    mtp_.push_back(std::move(m));
  }
}

std::vector<MoeFfn*> Transformer::moe_layers() {
  std::vector<MoeFfn*> out;
  for (auto& b : blocks_)
    if (b->moe()) out.push_back(b->moe());
  for (auto& m : mtp_)
    if (m.block->moe()) out.push_back(m.block->moe());
  return out;
}

bool Transformer::cache_forward_issues_without_host(int64_t tokens) {
  for (MoeFfn* m : moe_layers()) {
    if (!m->inference_issues_without_host(tokens, store_.device(), store_.compute_dtype())) {
      return false;
    }
  }
  return true;
}

std::vector<MoeFfn*> Transformer::routed_layers() {
  std::vector<MoeFfn*> out;
  for (auto& b : blocks_)
    if (b->moe()) out.push_back(b->moe());
  return out;
}

int Transformer::num_routed_layers() const {
  int n = 0;
  for (int l = 0; l < spec_.n_layers; ++l) n += spec_.is_moe_layer(l);
  return n;
}

Tensor Transformer::set_routes(const ForwardRoutes& r, int64_t b, int64_t t) {
  const std::vector<MoeFfn*> moes = routed_layers();
  const int64_t layers = static_cast<int64_t>(moes.size()), k = spec_.moe.top_k, n = b * t;
  SY_CHECK(layers > 0) << "routes given to a model without MoE layers";
  check_shape(r.routes, {b, t, layers, k}, "forward routes [B, T, MoE layers, top_k]");
  check_dtype(r.routes, DType::kI32, "forward routes");
  // A layer's routes are a strided slice of [B, T, layers, k]: gathered on the host into
  // [layers, N, k] (each layer's rows contiguous), then one copy to the device.
  const Tensor host = r.routes.to(Device::cpu());
  const int32_t* src = host.data<int32_t>();
  Tensor per_layer = Tensor::empty({layers, n, k}, DType::kI32);
  int32_t* dst = per_layer.data<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t l = 0; l < layers; ++l)
      std::copy_n(src + (i * layers + l) * k, k, dst + (l * n + i) * k);
  const Device dev = store_.device();
  const Tensor routes = per_layer.to(dev);
  Tensor differs = Tensor::zeros({n}, DType::kI32, dev);
  for (int64_t l = 0; l < layers; ++l)
    moes[l]->set_routes(routes.rows(l, l + 1).view({n, k}), r.replay, differs);
  return differs;
}

void Transformer::clear_routes() {
  for (MoeFfn* m : routed_layers()) m->set_routes(Tensor(), false, Tensor());
}

TokenLayout Transformer::layout_for(const Tensor& inputs) const {
  SY_CHECK(inputs.ndim() == 2) << "model inputs must be [B, T], got " << shape_str(inputs.shape());
  TokenLayout layout;
  layout.batch = inputs.dim(0);
  layout.seq = inputs.dim(1);
  Tensor pos = Tensor::empty({layout.batch, layout.seq}, DType::kI32);
  int32_t* p = pos.data<int32_t>();
  for (int64_t i = 0; i < layout.tokens(); ++i) p[i] = static_cast<int32_t>(i % layout.seq);
  layout.positions = pos.to(store_.device());
  layout.rope = rope_table(layout.positions, spec_.head_dim(), spec_.rope_theta);
  return layout;
}

Tensor Transformer::embed(const Tensor& ids) {
  profile::Scope region("embed");
  Tensor flat = ids.to(store_.device()).view({ids.numel()});
  // Looked up from the fp32 table, rounded once to the compute dtype.
  Tensor x = Tensor::empty({ids.numel(), spec_.d_model}, store_.compute_dtype(), store_.device());
  embedding_forward(x, flat, embed_.value);
  return x;
}

void Transformer::embed_backward(const Tensor& ids, const Tensor& d) {
  profile::Scope region("embed.bwd");
  embedding_backward(grad_to_add(embed_), d, ids.to(store_.device()).view({ids.numel()}));
}

Tensor Transformer::head_weight() const { return lm_head_ ? lm_head_->w() : embed_.w(); }
Param& Transformer::head_param() { return lm_head_ ? *lm_head_ : embed_; }

Tensor Transformer::trunk_forward(const Tensor& inputs, const TokenLayout& layout, Tensor* h0,
                                  const std::vector<KvAttention*>* attention) {
  Tensor x = embed(inputs), residual;  // a block's input is x + residual (undefined: x)
  for (size_t l = 0; l < blocks_.size(); ++l) {
    const Tensor sum =
        residual.defined() ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
    ResidualTerms terms =
        blocks_[l]->forward_terms(x, residual, sum, layout, attention ? (*attention)[l] : nullptr);
    x = std::move(terms.h);
    residual = std::move(terms.f);
  }
  profile::Scope region("final_norm");
  const Tensor out =
      residual.defined() ? Tensor::empty(x.shape(), x.dtype(), x.device()) : x;
  Tensor hn = final_norm_->forward(x, residual, residual.defined() ? out : Tensor());
  if (h0) *h0 = out;
  return hn;
}

Tensor Transformer::trunk_backward(const Tensor& dh) {
  Tensor d = dh;
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) d = (*it)->backward(d);
  return d;
}

TargetCounts Transformer::count_targets(const Tensor& targets) const {
  TargetCounts c;
  c.lm = count_valid(targets);
  for (int k = 1; k <= spec_.mtp_modules; ++k)
    c.mtp.push_back(count_valid(shift_for_mtp(targets, targets, k).second));
  return c;
}

namespace {

// Output head + fused cross-entropy on normalised hidden states hn [N, D]: returns the
// per-token losses (on hn's device, not read here: the host does not wait for them) and
// writes dhn = d(scale * summed loss)/d(hn). Head gradient accumulates. The logits take hn's
// dtype (bf16 under bf16 compute; the cross-entropy accumulates in fp32) and exist
// `chunk_rows` rows at a time (ModelSpec::head_chunk_rows; 0: rows of 256 MiB). `targets`
// may be on the host or already on hn's device.
Tensor head_loss_and_grad(const Tensor& hn, Param& head, const Tensor& targets, double scale,
                          const Tensor& dhn, int64_t chunk_rows) {
  profile::Scope region("head+loss");
  constexpr int64_t kChunkBytes = int64_t{256} << 20;
  const int64_t n = hn.dim(0), vocab = head.value.dim(0);
  const Device dev = hn.device();
  if (chunk_rows <= 0) {
    chunk_rows = std::max<int64_t>(
        1, kChunkBytes / std::max<int64_t>(1, vocab * int64_t(dtype_size(hn.dtype()))));
  }
  chunk_rows = std::min(chunk_rows, std::max<int64_t>(n, 1));
  Tensor losses = Tensor::empty({n}, DType::kF32, dev);
  Tensor lse = Tensor::empty({chunk_rows}, DType::kF32, dev);
  Tensor tgt = targets.to(dev).view({n});
  Tensor dlosses = Tensor::empty({n}, DType::kF32, dev);
  fill_(dlosses, static_cast<float>(scale));
  for (int64_t r0 = 0; r0 < n; r0 += chunk_rows) {
    const int64_t r1 = std::min(n, r0 + chunk_rows);
    const Tensor h = hn.rows(r0, r1), t = tgt.rows(r0, r1), l = lse.rows(0, r1 - r0);
    Tensor logits = Tensor::empty({r1 - r0, vocab}, hn.dtype(), dev);
    matmul(logits, h, head.w(), false, true);
    cross_entropy_forward_backward(losses.rows(r0, r1), l, logits, dlosses.rows(r0, r1), logits, t,
                                   kIgnoreIndex);  // the gradient in place of the logits
    matmul_backward(dhn.rows(r0, r1), head.grad, logits, h, head.w(), false, true, 0.0f,
                    take_grad_beta(head));
  }
  return losses;
}

// The sum of per-token losses (f32), in double, in token order (a device's are copied first).
double loss_sum(const Tensor& device_or_host_losses) {
  const Tensor losses = device_or_host_losses.to(Device::cpu());
  double sum = 0;
  const float* p = losses.data<float>();
  for (int64_t i = 0; i < losses.numel(); ++i) sum += p[i];
  return sum;
}

}  // namespace

LossTerms QueuedLoss::wait() {
  LossTerms terms;
  for (size_t k = 0; k < heads_.size(); ++k) {
    const double term = heads_[k].scale * loss_sum(heads_[k].losses.wait());
    (k == 0 ? terms.lm : terms.mtp) += term;
  }
  terms.aux = aux_;
  return terms;
}

LossTerms Transformer::forward_backward(const Tensor& inputs, const Tensor& targets,
                                        const LossScales& scales) {
  return queue_forward_backward(inputs, targets, scales).wait();
}

QueuedLoss Transformer::queue_forward_backward(const Tensor& inputs, const Tensor& targets,
                                               const LossScales& scales) {
  SY_CHECK(targets.shape() == inputs.shape())
      << "targets " << shape_str(targets.shape()) << " vs inputs " << shape_str(inputs.shape());
  SY_CHECK(static_cast<int>(scales.mtp.size()) == spec_.mtp_modules)
      << "loss scales for " << scales.mtp.size() << " MTP modules, model has " << spec_.mtp_modules;
  const Device dev = store_.device();
  store_.refresh_compute();
  const TokenLayout layout = layout_for(inputs);
  const int64_t n = layout.tokens(), d = spec_.d_model;
  const DType dt = store_.compute_dtype();

  std::vector<MoeFfn*> moes = moe_layers();
  double balance_before = 0;
  for (MoeFfn* m : moes) {
    m->set_loss_scale(static_cast<float>(scales.balance));
    balance_before += m->stats().aux_loss + m->stats().seq_aux_loss + m->stats().z_loss;
  }

  QueuedLoss queued;
  // Ids and targets (the MTP modules' shifted ones too) go to the device before any work of
  // this step is queued, once: a host-to-device copy waits for the GPU, so copies later in
  // the step would drain the queue. The embedding's backward reuses the ids.
  struct MtpState {
    Tensor ids, targets, cat, dout;
  };
  std::vector<MtpState> states(mtp_.size());
  for (size_t k = 0; k < mtp_.size(); ++k) {
    auto [ids, tgt] = shift_for_mtp(inputs, targets, static_cast<int>(k) + 1);
    states[k].ids = ids.to(dev);
    states[k].targets = tgt.to(dev);
  }
  const Tensor inputs_dev = inputs.to(dev), targets_dev = targets.to(dev);
  Tensor h0;
  const Tensor hn = trunk_forward(inputs_dev, layout, &h0);
  Tensor dhn = Tensor::empty({n, d}, dt, dev);
  // Losses stay on the device until the whole backward is queued.
  const Tensor lm_losses =
      head_loss_and_grad(hn, head_param(), targets_dev, scales.lm, dhn, spec_.head_chunk_rows);
  std::vector<Tensor> mtp_losses;

  // MTP forward, module by module (each feeds the next), keeping the head gradients.
  Tensor prev = h0;
  for (size_t k = 0; k < mtp_.size(); ++k) {
    MtpModule& m = mtp_[k];
    Tensor a = m.hnorm->forward(prev);
    Tensor c = m.enorm->forward(embed(states[k].ids));
    states[k].cat = Tensor::empty({n, 2 * d}, dt, dev);
    concat_cols(states[k].cat, a, c);
    Tensor z = Tensor::empty({n, d}, dt, dev);
    matmul(z, states[k].cat, m.proj->w(), false, true);
    Tensor hk = m.block->forward(z, layout);
    Tensor hkn = m.out_norm->forward(hk);
    states[k].dout = Tensor::empty({n, d}, dt, dev);
    mtp_losses.push_back(head_loss_and_grad(hkn, head_param(), states[k].targets, scales.mtp[k],
                                            states[k].dout, spec_.head_chunk_rows));
    prev = hk;
  }

  // MTP backward, last module first; each hands the gradient of its h^{k-1} input back.
  Tensor carry;
  for (size_t k = mtp_.size(); k-- > 0;) {
    MtpModule& m = mtp_[k];
    Tensor dhk = m.out_norm->backward(states[k].dout, carry);  // + carry, when defined
    Tensor dz = m.block->backward(dhk);
    Tensor dcat = Tensor::empty({n, 2 * d}, dt, dev);
    matmul_backward(dcat, m.proj->grad, dz, states[k].cat, m.proj->w(), false, true, 0.0f,
                    take_grad_beta(*m.proj));
    Tensor da = Tensor::empty({n, d}, dt, dev);
    Tensor dc = Tensor::empty({n, d}, dt, dev);
    split_cols(da, dc, dcat);
    embed_backward(states[k].ids, m.enorm->backward(dc));
    carry = m.hnorm->backward(da);
  }

  Tensor dh0;
  {
    profile::Scope region("final_norm.bwd");
    dh0 = final_norm_->backward(dhn, carry);  // + carry, when defined
  }
  embed_backward(inputs_dev, trunk_backward(dh0));
  store_.finish_grads();
  queued.heads_.push_back({HostReadback(lm_losses), scales.lm});
  for (size_t k = 0; k < mtp_losses.size(); ++k)
    queued.heads_.push_back({HostReadback(mtp_losses[k]), scales.mtp[k]});

  double balance_after = 0;
  for (MoeFfn* m : moes)
    balance_after += m->stats().aux_loss + m->stats().seq_aux_loss + m->stats().z_loss;
  queued.aux_ = balance_after - balance_before;
  return queued;
}

Tensor Transformer::logits(const Tensor& inputs, bool last_position_only) {
  store_.refresh_compute();
  const TokenLayout layout = layout_for(inputs);
  const Device dev = store_.device();
  Tensor hn = trunk_forward(inputs, layout);
  const int64_t b = layout.batch, t = layout.seq;
  Tensor rows = hn;
  if (last_position_only) {
    rows = Tensor::empty({b, spec_.d_model}, hn.dtype(), dev);
    for (int64_t r = 0; r < b; ++r)
      rows.rows(r, r + 1).copy_from(hn.rows(r * t + t - 1, r * t + t));
  }
  Tensor out = Tensor::empty({rows.dim(0), spec_.vocab_size}, DType::kF32, dev);
  matmul(out, rows, head_weight(), false, true);
  return out.view({b, last_position_only ? 1 : t, spec_.vocab_size});
}

Tensor Transformer::forward_with_cache(const Tensor& ids, const TokenLayout& layout,
                                       const std::vector<KvAttention*>& attention,
                                       const Tensor& rows) {
  SY_CHECK(attention.size() == blocks_.size())
      << "forward_with_cache: " << attention.size() << " attention caches for " << blocks_.size()
      << " blocks";
  const Device dev = store_.device();
  store_.refresh_compute();
  const std::vector<MoeFfn*> moes = moe_layers();
  for (MoeFfn* m : moes) m->set_dropless(true);
  const std::vector<MoeFfn*> routed = routing_sink_ ? routed_layers() : std::vector<MoeFfn*>();
  for (size_t i = 0; i < routed.size(); ++i)
    routed[i]->set_routing_sink(routing_sink_, static_cast<int>(i));
  const Tensor hn = trunk_forward(ids, layout, nullptr, &attention);
  for (MoeFfn* m : routed) m->set_routing_sink(nullptr, 0);
  for (MoeFfn* m : moes) m->set_dropless(false);
  Tensor picked = hn;
  if (rows.defined()) {
    // A row gather: the embedding lookup with the hidden states as its table.
    picked = Tensor::empty({rows.numel(), spec_.d_model}, hn.dtype(), dev);
    embedding_forward(picked, rows, hn);
  }
  Tensor out = Tensor::empty({picked.dim(0), spec_.vocab_size}, DType::kF32, dev);
  matmul(out, picked, head_weight(), false, true);
  return out;
}

Transformer::TokenLogprobs Transformer::token_logprobs(const Tensor& inputs, const Tensor& targets,
                                                       bool with_entropy, float temperature,
                                                       const ForwardRoutes* routes) {
  SY_CHECK(temperature > 0) << "temperature " << temperature << " must be > 0";
  SY_CHECK(targets.shape() == inputs.shape())
      << "targets " << shape_str(targets.shape()) << " vs inputs " << shape_str(inputs.shape());
  const Device dev = store_.device();
  store_.refresh_compute();
  const int64_t b = inputs.dim(0), t = inputs.dim(1), n = b * t, vocab = spec_.vocab_size;
  HeadState& s = head_state_;
  s.inputs = inputs;
  const Tensor differs = routes ? set_routes(*routes, b, t) : Tensor();
  s.hn = trunk_forward(inputs, layout_for(inputs));
  if (routes) clear_routes();
  s.logits = Tensor::empty({n, vocab}, DType::kF32, dev);
  matmul(s.logits, s.hn, head_weight(), false, true);
  s.inv_temperature = 1.0f / temperature;
  if (temperature != 1.0f) scale_(s.logits, s.inv_temperature);
  s.targets = targets.to(dev).view({n});
  s.lse = Tensor::empty({n}, DType::kF32, dev);
  Tensor losses = Tensor::empty({n}, DType::kF32, dev);
  cross_entropy_forward(losses, s.lse, s.logits, s.targets, kIgnoreIndex);
  TokenLogprobs out;
  out.logp = losses.to(Device::cpu()).clone().view({b, t});
  scale_(out.logp, -1.0f);
  if (with_entropy) {
    // Where the logits are: only the N entropies travel to the host, not N x V logits.
    Tensor entropy = Tensor::empty({n}, DType::kF32, dev);
    softmax_entropy(entropy, s.logits, s.lse);
    out.entropy = entropy.to(Device::cpu()).view({b, t});
  }
  if (routes) out.route_differs = differs.to(Device::cpu()).view({b, t});
  return out;
}

void Transformer::backward_logprobs(const Tensor& dlogp) {
  HeadState& s = head_state_;
  SY_CHECK(s.logits.defined()) << "backward_logprobs without token_logprobs";
  const int64_t n = s.logits.dim(0);
  check_shape(dlogp, s.inputs.shape(), "dlogp");
  // logp = -CE, so d(loss)/d(CE) = -dlogp.
  Tensor dlosses = dlogp.to(Device::cpu()).clone().view({n});
  scale_(dlosses, -1.0f);
  cross_entropy_backward(s.logits, dlosses.to(s.logits.device()), s.logits, s.lse, s.targets,
                         kIgnoreIndex);
  if (s.inv_temperature != 1.0f) scale_(s.logits, s.inv_temperature);  // d(logits / T)
  // The log-probs came from fp32 logits; their gradient meets the head in the compute dtype.
  const Tensor dlogits = as_dtype(s.logits, s.hn.dtype());
  Tensor dhn = Tensor::empty(s.hn.shape(), s.hn.dtype(), s.hn.device());
  matmul_backward(dhn, head_param().grad, dlogits, s.hn, head_weight(), false, true, 0.0f,
                  take_grad_beta(head_param()));
  embed_backward(s.inputs, trunk_backward(final_norm_->backward(dhn)));
  store_.finish_grads();
  s = HeadState{};
}

Tensor Transformer::values(const Tensor& inputs) {
  SY_CHECK(value_head_ != nullptr) << "values() on a model built without a value head";
  store_.refresh_compute();
  HeadState& s = head_state_;
  s.inputs = inputs;
  s.hn = trunk_forward(inputs, layout_for(inputs));
  Tensor v = Tensor::empty({inputs.numel(), 1}, DType::kF32, store_.device());
  matmul(v, s.hn, value_head_->w(), false, true);
  return v.to(Device::cpu()).view({inputs.dim(0), inputs.dim(1)});
}

void Transformer::backward_values(const Tensor& dvalues) {
  HeadState& s = head_state_;
  SY_CHECK(value_head_ != nullptr && s.hn.defined()) << "backward_values without values()";
  check_shape(dvalues, s.inputs.shape(), "dvalues");
  const Tensor dv = as_dtype(dvalues.to(s.hn.device()).view({s.inputs.numel(), 1}), s.hn.dtype());
  Tensor dhn = Tensor::empty(s.hn.shape(), s.hn.dtype(), s.hn.device());
  matmul_backward(dhn, value_head_->grad, dv, s.hn, value_head_->w(), false, true, 0.0f,
                  take_grad_beta(*value_head_));
  embed_backward(s.inputs, trunk_backward(final_norm_->backward(dhn)));
  store_.finish_grads();
  s = HeadState{};
}

std::pair<double, int64_t> Transformer::eval_loss(const Tensor& inputs, const Tensor& targets) {
  Tensor lg = logits(inputs, false);
  const int64_t n = inputs.numel();
  Tensor losses = Tensor::empty({n}, DType::kF32, lg.device());
  Tensor lse = Tensor::empty({n}, DType::kF32, lg.device());
  cross_entropy_forward(losses, lse, lg.view({n, spec_.vocab_size}),
                        targets.to(lg.device()).view({n}), kIgnoreIndex);
  return {loss_sum(losses), count_valid(targets)};
}

}  // namespace sy
