#pragma once
// The transformer's sublayers as explicit forward/backward pairs (no autograd tape).
// A forward with `save` keeps what its backward needs in the module; the next backward
// consumes it. Every sublayer owns its pre-norm: it computes f(RMSNorm(x)), and its
// backward returns the gradient with respect to x through that path, plus the residual
// gradient the block hands it (added in the pre-norm's backward pass, so the residual stream
// costs no pass of its own). Parameter gradients accumulate into the ParamStore.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/permute.h"
#include "kernels/profile.h"
#include "models/model_spec.h"
#include "models/param_store.h"
#include "parallel/communicator.h"
#include "parallel/expert_dispatch.h"

namespace sy {

// The ranks a model's layers talk to. Null members mean one process.
//   world: the MoE balancing statistics (expert loads, mean scores, token counts) are summed
//          over it, so the balancing terms are those of the global batch;
//   ep:    the expert-parallel group the routed experts are spread over.
struct ModelParallel {
  Communicator* world = nullptr;
  Communicator* ep = nullptr;
};

// Shape of the activations flowing through a block: B sequences of T tokens, N = B*T rows.
struct TokenLayout {
  int64_t batch = 0;
  int64_t seq = 0;
  Tensor positions;  // i32 [B, T]
  // rope_table(positions, head_dim, rope_theta) when the model built it (once per batch, for
  // every layer's rotations); undefined: the rotations form their angles from positions.
  Tensor rope;
  int64_t tokens() const { return batch * seq; }
};

// RMSNorm with a learned gain.
class RmsNorm {
 public:
  RmsNorm(ParamStore& store, const std::string& name, int dim, float eps);
  // With `residual`: normalizes x + residual, written to `sum` in the same pass
  // (kernels/rmsnorm.h).
  Tensor forward(const Tensor& x, const Tensor& residual = Tensor(), const Tensor& sum = Tensor());
  // dx written (plus `residual` when given, in the same pass: kernels/rmsnorm.h); the gain's
  // gradient accumulates.
  Tensor backward(const Tensor& dy, const Tensor& residual = Tensor());

 private:
  Param& weight_;
  float eps_;
  Tensor x_, rstd_;
};

// Attention against keys and values kept outside the layer, across forwards (the rollout
// engine's KV pool, models/rollout/kv_pool.h): given one layer's new q [B, T, H, hd], k and v
// [B, T, Hkv, hd], projected and rotated, it stores k and v where the sequences' earlier keys
// are and returns the attention output [B, T, H, hd]. Inference only: nothing is kept for a
// backward.
class KvAttention {
 public:
  virtual ~KvAttention() = default;
  virtual Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v) = 0;
};

// Where an inference forward's MoE layers report the experts they chose (the rollout engine's
// routing recorder, models/rollout/routing_record.h): `indices` i32 [B*T, k] of the forward's
// tokens at MoE layer `layer` (the trunk's MoE layers counted from 0), on the model's device.
// Called inside the forward, between the layer's top-k and its experts: it may queue device
// work only (a decode step stays free of host waits and capturable as a CUDA graph).
class RoutingSink {
 public:
  virtual ~RoutingSink() = default;
  virtual void record(int layer, const Tensor& indices) = 0;
};

// Rotary causal self-attention with grouped KV heads: y = Wo attn(rope(Wq n), rope(Wk n), Wv n)
// where n = RMSNorm(x).
class Attention {
 public:
  Attention(ParamStore& store, const std::string& prefix, const ModelSpec& spec);
  // With a cache, x holds only the new positions (layout.positions says where they sit) and
  // the cache computes the attention over them and what it keeps. With `residual`, the input
  // is x + residual, written to `sum` by the pre-norm's pass.
  Tensor forward(const Tensor& x, const TokenLayout& layout, KvAttention* cache = nullptr,
                 const Tensor& residual = Tensor(), const Tensor& sum = Tensor());
  // With `residual`, returns the gradient with respect to x plus residual (added in the
  // pre-norm's backward pass).
  Tensor backward(const Tensor& dy, const Tensor& residual = Tensor());

  // The projections of normalised input n [B*T, D] to q [B, T, H, hd], k and v [B, T, Hkv, hd],
  // rotated by their positions: what every forward (training, prefill, decode) starts with.
  // With spec.qk_norm every q and k head is RMS-normalised (gains [hd]) before the rotation;
  // those norms keep their inputs for the backward, which undoes the rotation, then them.
  void project_qkv(const Tensor& n, const TokenLayout& layout, Tensor& q, Tensor& k, Tensor& v);

 private:
  const ModelSpec& spec_;
  RmsNorm norm_;
  Param &wq_, &wk_, &wv_, &wo_;
  std::unique_ptr<RmsNorm> q_norm_, k_norm_;  // set with spec.qk_norm
  TokenLayout layout_;
  Tensor n_, q_, k_, v_, o_, lse_;
};

// Feed-forward sublayers: dense SwiGLU or mixture of experts.
class FeedForward {
 public:
  virtual ~FeedForward() = default;
  // With `residual`, the sublayer's input is x + residual, which its pre-norm's pass writes
  // to `sum` (the block's residual stream).
  virtual Tensor forward(const Tensor& x, const TokenLayout& layout, const Tensor& residual,
                         const Tensor& sum) = 0;
  Tensor forward(const Tensor& x, const TokenLayout& layout) {
    return forward(x, layout, Tensor(), Tensor());
  }
  // The gradient with respect to x, plus `residual` when it is defined (added in the
  // pre-norm's backward pass: a block's residual stream without a pass of its own).
  virtual Tensor backward(const Tensor& dy, const Tensor& residual) = 0;
  Tensor backward(const Tensor& dy) { return backward(dy, Tensor()); }
};

// SwiGLU MLP on already-normalised input: y = W2 (silu(W1 n) * (W3 n)), W1 and W3 stacked as
// one [2F, D] weight (w13). Shared experts of a MoE layer are one of these too.
class SwigluMlp {
 public:
  SwigluMlp(ParamStore& store, const std::string& prefix, int d_model, int hidden, float std,
            float out_std);
  Tensor forward(const Tensor& n);
  Tensor backward(const Tensor& dy);  // gradient with respect to n

 private:
  Param &w13_, &w2_;
  Tensor n_, h_, a_;
};

class DenseFfn : public FeedForward {
 public:
  DenseFfn(ParamStore& store, const std::string& prefix, const ModelSpec& spec);
  using FeedForward::forward;
  Tensor forward(const Tensor& x, const TokenLayout& layout, const Tensor& residual,
                 const Tensor& sum) override;
  using FeedForward::backward;
  Tensor backward(const Tensor& dy, const Tensor& residual) override;

 private:
  RmsNorm norm_;
  SwigluMlp mlp_;
};

// Per-step routing statistics of one MoE layer, summed over the micro-batches of a step.
struct RoutingStats {
  std::vector<double> load;  // [E] slots routed to each expert (before capacity dropping)
  int64_t dropped = 0;       // slots dropped by the capacity limit
  double aux_loss = 0;       // balancing terms (already multiplied by their coefficients
  double z_loss = 0;         //   and by the micro-batch's loss scale)
  double seq_aux_loss = 0;
  void reset(int num_experts);
};

// Mixture of experts: router (softmax or sigmoid scores, optional group-limited top-k,
// optional normalisation of the chosen weights), routed SwiGLU experts (stacked weights
// [E, 2F, D] and [E, D, F]), optional shared experts, dropless or capacity dropping, and the
// load-balancing terms:
//   aux     = coef * sum_e f_e * P_e over the micro-batch,
//   seq aux = coef * mean over sequences of sum_e f_e * P_e within the sequence,
//     with f_e = E / (k * tokens) * (slots routed to e) and P_e = mean over tokens of the
//     token's scores normalised to sum 1 (f is a count and carries no gradient);
//   z       = coef * mean over tokens of logsumexp(router logits)^2.
// The auxiliary-loss-free bias (DeepSeek-V3) shifts only which experts are chosen; after
// each optimizer step update_bias() moves it by rate * sign(mean load - load).
// With an expert-parallel group of P ranks this rank holds E/P experts (the stacked weights
// are [E/P, ...]); rows travel to their experts' owners and back through an ExpertDispatcher.
// With a world group the balancing statistics are global: every rank adds its share of the
// global terms, so summed over ranks they equal the single-process terms of the whole batch.
// Capacity dropping is decided per rank, on that rank's tokens.
//
// The expert GEMMs run one of two ways, the same products either way: a GEMM per expert on
// its rows (spread over a few streams on a GPU), or "batched": every local expert's rows
// copied into blocks of one padded length (zero rows after each expert's own), one strided
// batched GEMM for all experts, and the real rows copied back. Batched issues two GEMM calls
// per pass instead of two per expert, at the price of the padding's FLOPs and the copies. The
// environment chooses: SWITCHYARD_EXPERT_GEMMS=loop (also when unset) or batched, or auto:
// batched on a GPU when the padding adds at most 25% to the rows, the loop otherwise and on
// the CPU. (The loop stays the default until the batched way is measured on the GPU.)
class MoeFfn : public FeedForward {
 public:
  MoeFfn(ParamStore& store, const std::string& prefix, const ModelSpec& spec,
         const ModelParallel& parallel = {});
  using FeedForward::forward;
  Tensor forward(const Tensor& x, const TokenLayout& layout, const Tensor& residual,
                 const Tensor& sum) override;
  using FeedForward::backward;
  Tensor backward(const Tensor& dy, const Tensor& residual) override;

  // Balancing terms enter the loss multiplied by this (1 / micro-batches per step).
  void set_loss_scale(float scale) { loss_scale_ = scale; }
  // On: an inference forward. The capacity factor is ignored (no token dropped), so a
  // token's output does not depend on the other tokens of its batch; no load statistics or
  // balancing terms are kept (no backward follows), and with every expert local the layer
  // issues its work without a host wait. The rollout engine's forwards run so.
  void set_dropless(bool dropless) { dropless_ = dropless; }
  // Whether an inference forward of n tokens on `device` in `dtype` runs with nothing to or
  // from the host (the experts all local, grouped GEMMs over the plan's device offsets, the
  // plan queueing no readback): what capturing the forward as a CUDA graph needs.
  bool inference_issues_without_host(int64_t n, Device device, DType dtype) const;
  RoutingStats& stats() { return stats_; }
  void update_bias();  // from stats().load; no-op when bias_update_rate == 0
  const Param* bias() const { return bias_; }

  // Routing replay (kernels/routing_replay.h) for the forwards until the next call: `routes`
  // i32 [N, k] of global expert ids on the layer's device, one row per token of the forward
  // (undefined: none). With `replay` the layer routes by them instead of its top-k: the router
  // still scores every token (its gradient flows through the gate weights, taken from its
  // scores at the given experts and normalised as its own top-k's); a row whose first id is
  // negative keeps the layer's choice. `differs` (i32 [N], optional) gets 1 at the rows where
  // the layer's own top-k differs from `routes` as a set (else left as it is).
  void set_routes(const Tensor& routes, bool replay, const Tensor& differs);
  // While set, each forward reports the experts it chose to `sink` as MoE layer `layer` (null:
  // none); Transformer::forward_with_cache sets it around its inference forwards.
  void set_routing_sink(RoutingSink* sink, int layer) {
    sink_ = sink;
    sink_layer_ = layer;
  }
  // The experts the last forward's tokens went to, i32 [N, k] on the device: its top-k, or
  // the replayed routes.
  const Tensor& routes() const { return indices_; }

 private:
  Tensor experts_forward();
  Tensor experts_forward_on_device(const Tensor& xp);
  Tensor combine(const Tensor& y, const Tensor& shared_out,
                 std::optional<profile::Scope>& region);
  Tensor experts_backward(const Tensor& dy_local);

  const ModelSpec& spec_;
  ModelParallel parallel_;
  std::unique_ptr<Communicator> local_;  // the group of one, when no ep group is given
  ExpertDispatcher dispatcher_;
  RmsNorm norm_;
  Param& router_;
  Param* bias_ = nullptr;
  Param &w13_, &w2_;
  std::unique_ptr<SwigluMlp> shared_;
  float loss_scale_ = 1.0f;
  bool dropless_ = false;
  RoutingStats stats_;
  Tensor replay_routes_, replay_differs_;  // set_routes
  bool replay_ = false;
  RoutingSink* sink_ = nullptr;
  int sink_layer_ = 0;
  // saved for backward
  TokenLayout layout_;
  Tensor n_, logits_, scores_, indices_, weights_, xp_local_, h_, a_, y_;
  // Batched expert GEMMs: [local experts, padded rows, *] blocks (h_, a_ are then padded too);
  // undefined when the last forward ran a GEMM per expert.
  Tensor xpad_;
  DispatchPlan plan_;
  std::vector<double> f_global_;  // [E] f_e over the (global) micro-batch
  std::vector<double> f_seq_;     // [B, E] f_e per local sequence
  Tensor dbalance_;               // [B, E] d(aux + seq aux)/d(p), on the device
  double tokens_global_ = 0;      // N and B summed over the world group
  double sequences_global_ = 0;
};

// Pre-norm transformer block: h = x + attn(x); out = h + ffn(h).
// A block's output as the two terms of its residual stream, out = h + f, left for the next
// pre-norm to add in its own pass (RmsNorm::forward with a residual).
struct ResidualTerms {
  Tensor h, f;
};

class Block {
 public:
  Block(ParamStore& store, const std::string& prefix, const ModelSpec& spec, bool moe,
        const ModelParallel& parallel = {});
  // out = x + attention + FFN, summed.
  Tensor forward(const Tensor& x, const TokenLayout& layout, KvAttention* cache = nullptr);
  // The same with the input given as x + residual (undefined: x alone), that sum written to
  // `sum` by the attention's pre-norm, and the output left as its two terms.
  ResidualTerms forward_terms(const Tensor& x, const Tensor& residual, const Tensor& sum,
                              const TokenLayout& layout, KvAttention* cache = nullptr);
  Tensor backward(const Tensor& dout);
  MoeFfn* moe() { return moe_; }

 private:
  Attention attn_;
  std::unique_ptr<FeedForward> ffn_;
  MoeFfn* moe_ = nullptr;
};

}  // namespace sy
