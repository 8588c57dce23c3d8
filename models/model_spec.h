#pragma once
// The model's shape as plain values, read once from the experiment config. Modules take a
// ModelSpec rather than the Protobuf message, so tests can build one field by field.
#include "configs/switchyard.pb.h"
#include "kernels/router.h"

namespace sy {

struct MoeSpec {
  int num_experts = 0;
  int top_k = 1;
  int expert_hidden = 0;
  int num_shared_experts = 0;
  ScoreFunction score_function = ScoreFunction::kSoftmax;
  bool normalize_topk = false;
  float route_scale = 1.0f;
  double capacity_factor = 0.0;  // 0: dropless
  float aux_loss_coef = 0.0f;
  float z_loss_coef = 0.0f;
  float seq_aux_loss_coef = 0.0f;
  float bias_update_rate = 0.0f;  // 0: no auxiliary-loss-free bias
  int n_groups = 1;
  int topk_groups = 1;
};

struct ModelSpec {
  int vocab_size = 0;
  int d_model = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int seq_len = 0;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  int dense_ffn_hidden = 0;
  int first_k_dense = 0;
  bool tie_embeddings = false;
  float init_std = 0.02f;
  MoeSpec moe;
  int mtp_modules = 0;
  float mtp_loss_weight = 0.0f;
  // Training computes the output head's logits this many rows (tokens) at a time; 0: as many
  // as fit in 256 MiB, so a step never holds every token's logits at once (1 GiB for 16,384
  // tokens of a 32,768 vocabulary in bf16). Not in the config: a memory bound, not a model
  // choice (tests set it to cut small batches into several chunks).
  int64_t head_chunk_rows = 0;
  int head_dim_override = 0;  // 0: d_model / n_heads
  bool qk_norm = false;       // RMSNorm of each q and k head before the rotary embedding

  int head_dim() const { return head_dim_override > 0 ? head_dim_override : d_model / n_heads; }
  bool is_moe_layer(int layer) const { return layer >= first_k_dense; }
  bool has_moe() const { return first_k_dense < n_layers; }
};

ModelSpec model_spec_from_config(const switchyard::Experiment& config);

}  // namespace sy
