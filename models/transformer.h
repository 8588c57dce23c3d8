#pragma once
// The MoE transformer with DeepSeek-V3-style multi-token prediction.
//
//   h0 = blocks(embed(tokens));  logits = head(RMSNorm(h0))        (first_k_dense dense blocks,
//                                                                    then MoE blocks)
//   MTP module k = 1..D:  h^k = block_k(proj_k [RMSNorm(h^{k-1}) ; RMSNorm(embed(t_{i+k}))])
//                         logits^k = head(RMSNorm_k(h^k)) predicts t_{i+k+1}
//   loss = CE(main) + lambda / D * sum_k CE_k + load-balancing terms
// The embedding and the output head are shared by the MTP modules (and tied to each other
// when tie_embeddings is set).
#include <memory>
#include <string>
#include <vector>

#include "models/layers.h"
#include "models/model_spec.h"
#include "models/param_store.h"

namespace sy {

constexpr int kIgnoreIndex = -1;

// How each loss term is normalised over a whole optimizer step. The per-token losses are
// summed and multiplied by these, so a step over several micro-batches (and, later, several
// ranks) is normalised by its global token counts and does not depend on how it is split.
struct LossScales {
  double lm = 0;            // 1 / (target tokens of the main head in the step)
  std::vector<double> mtp;  // per module: lambda / D / (its target tokens in the step)
  double balance = 1;       // balancing terms: 1 / (micro-batches in the step)
};

struct LossTerms {
  double lm = 0;   // scaled: summed over the micro-batches of a step, the mean CE
  double mtp = 0;  // lambda / D * sum_k mean CE_k
  double aux = 0;  // all balancing terms (aux + seq aux + z) over all MoE layers
  double total() const { return lm + mtp + aux; }
};

// The loss terms of a queued forward_backward: the balancing terms are known when it returns,
// the per-token losses are on their way to the host (HostReadback), so the caller can queue
// more (the optimizer) before waiting for them.
class QueuedLoss {
 public:
  LossTerms wait();  // once

 private:
  friend class Transformer;
  struct Head {
    HostReadback losses;  // per token, f32
    double scale = 0;
  };
  std::vector<Head> heads_;  // the main head, then each MTP module
  double aux_ = 0;
};

// Target-token counts of a micro-batch: the main head's, and each MTP module's.
struct TargetCounts {
  int64_t lm = 0;
  std::vector<int64_t> mtp;
};

// Routes for the MoE layers of a training-side forward (routing replay, R3): the experts each
// token went to in a rollout (models/rollout/routing_record.h), per MoE layer of the trunk.
struct ForwardRoutes {
  // i32 [B, T, num_routed_layers(), top_k], global expert ids, on the host. A token whose
  // route in a layer starts with a negative id has none there: that layer routes it itself.
  Tensor routes;
  // true: the MoE layers route by `routes` (MoeFfn::set_routes); false: the routes are only
  // compared with the layers' own top-k.
  bool replay = false;
};

class Transformer {
 public:
  // value_head adds "value_head.weight" [1, d_model]: a scalar per position on the final norm,
  // for a PPO critic (the same transformer, initialised from the policy).
  Transformer(const ModelSpec& spec, ParamStore& store, const ModelParallel& parallel = {},
              bool value_head = false);
  Transformer(const Transformer&) = delete;

  const ModelSpec& spec() const { return spec_; }
  const ParamStore& store() const { return store_; }

  // Counts the targets each head will see for this batch (targets i32 [B, T]).
  TargetCounts count_targets(const Tensor& targets) const;

  // One micro-batch: forward, losses, backward. Gradients accumulate into the store.
  // inputs, targets: i32 [B, T]; targets == kIgnoreIndex carry no loss.
  LossTerms forward_backward(const Tensor& inputs, const Tensor& targets, const LossScales& scales);
  // The same, returning as soon as the backward is queued (the training loop's form).
  QueuedLoss queue_forward_backward(const Tensor& inputs, const Tensor& targets,
                                    const LossScales& scales);

  // Forward only (no MTP): logits f32 [B, T, V], or [B, 1, V] of the last position.
  Tensor logits(const Tensor& inputs, bool last_position_only);

  // An inference forward (no MTP, nothing kept for a backward, MoE layers dropless) of new
  // tokens whose attention runs against keys and values the caller keeps: the rollout
  // engine's prefill and decode steps (models/rollout/engine.h). ids i32 [B, T] and
  // layout.positions [B, T] on the model's device; attention[l] serves block l (num_blocks()
  // of them). Returns the f32 logits [R, V] of the token rows `rows` (i32 [R] on the device,
  // flat indices b * T + t), or of every token when rows is undefined. Issues no host wait
  // of its own (each MoE layer still waits for its expert counts and its balancing
  // statistics, as in training).
  Tensor forward_with_cache(const Tensor& ids, const TokenLayout& layout,
                            const std::vector<KvAttention*>& attention,
                            const Tensor& rows = Tensor());
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  // The MoE layers of the trunk (no MTP module's): what routes are recorded and replayed for.
  int num_routed_layers() const;
  // forward_with_cache's MoE layers report their top-k to `sink` (null: none), trunk MoE
  // layer i as layer i: the rollout engine's routing recorder, for the engine's lifetime.
  void set_routing_sink(RoutingSink* sink) { routing_sink_ = sink; }
  // Whether forward_with_cache over `tokens` tokens issues nothing to or from the host (every
  // MoE layer's MoeFfn::inference_issues_without_host): a decode step that can be captured as
  // a CUDA graph (kernels/graph.h).
  bool cache_forward_issues_without_host(int64_t tokens);

  // Per-token log-probabilities of `targets` under the main head (no MTP), for RL:
  // logp[b, t] = log softmax(logits[b, t] / temperature)[targets[b, t]], 0 where targets ==
  // kIgnoreIndex; entropy[b, t] of that distribution when asked (else undefined).
  // f32 [B, T], CPU. Keeps what backward_logprobs needs.
  // With `routes` (B and T those of inputs) the MoE layers replay or compare them, and
  // route_differs (i32 [B, T], CPU) is 1 at the tokens whose own top-k differs from the routes
  // as a set in at least one MoE layer.
  struct TokenLogprobs {
    Tensor logp, entropy;
    Tensor route_differs;
  };
  TokenLogprobs token_logprobs(const Tensor& inputs, const Tensor& targets,
                               bool with_entropy = false, float temperature = 1.0f,
                               const ForwardRoutes* routes = nullptr);
  // Backward of the last token_logprobs: dlogp f32 [B, T] = d(loss)/d(logp). Parameter
  // gradients accumulate (MoE balancing terms included, scaled by their loss scale).
  void backward_logprobs(const Tensor& dlogp);

  // The value head's output, f32 [B, T] on the CPU (needs value_head); backward_values
  // accumulates the gradients of d(loss)/d(values).
  Tensor values(const Tensor& inputs);
  void backward_values(const Tensor& dvalues);

  // Summed CE and token count of the main head on a batch (for evaluation).
  std::pair<double, int64_t> eval_loss(const Tensor& inputs, const Tensor& targets);

  std::vector<MoeFfn*> moe_layers();

 private:
  struct MtpModule {
    std::unique_ptr<RmsNorm> hnorm, enorm, out_norm;
    Param* proj;
    std::unique_ptr<Block> block;
  };
  TokenLayout layout_for(const Tensor& inputs) const;
  std::vector<MoeFfn*> routed_layers();
  // Hands each trunk MoE layer its routes for the next forward of B x T tokens; returns the
  // [B*T] device flags they mark (MoeFfn::set_routes). clear_routes() takes them back.
  Tensor set_routes(const ForwardRoutes& routes, int64_t b, int64_t t);
  void clear_routes();
  Tensor embed(const Tensor& ids);
  void embed_backward(const Tensor& ids, const Tensor& d);
  Tensor head_weight() const;
  Param& head_param();
  // The embedding, every block and the final norm: returns the normalised output. The blocks
  // hand their residual terms on unsummed, each next pre-norm adds them in its own pass, the
  // final norm the last ones (writing the trunk's output, their sum, to *h0 when asked).
  // With `attention`, block l attends through attention[l] (forward_with_cache).
  Tensor trunk_forward(const Tensor& inputs, const TokenLayout& layout, Tensor* h0 = nullptr,
                       const std::vector<KvAttention*>* attention = nullptr);
  Tensor trunk_backward(const Tensor& dh);

  ModelSpec spec_;
  ParamStore& store_;
  Param& embed_;
  Param* lm_head_ = nullptr;  // null when tied
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<RmsNorm> final_norm_;
  std::vector<MtpModule> mtp_;
  Param* value_head_ = nullptr;
  RoutingSink* routing_sink_ = nullptr;
  // Saved by token_logprobs / values for their backward.
  struct HeadState {
    Tensor inputs, hn, logits, lse, targets;
    float inv_temperature = 1.0f;
  } head_state_;
};

}  // namespace sy
