#include "models/model_spec.h"

namespace sy {

ModelSpec model_spec_from_config(const switchyard::Experiment& config) {
  const auto& m = config.model();
  const auto& moe = config.moe();
  ModelSpec s;
  s.vocab_size = m.vocab_size();
  s.d_model = m.d_model();
  s.n_layers = m.n_layers();
  s.n_heads = m.n_heads();
  s.n_kv_heads = m.n_kv_heads();
  s.seq_len = m.seq_len();
  s.rope_theta = static_cast<float>(m.rope_theta());
  s.norm_eps = static_cast<float>(m.norm_eps());
  s.dense_ffn_hidden = m.dense_ffn_hidden();
  s.first_k_dense = m.first_k_dense();
  s.tie_embeddings = m.tie_embeddings();
  s.init_std = static_cast<float>(m.init_std());
  s.head_dim_override = m.head_dim();
  s.qk_norm = m.qk_norm();
  s.moe.num_experts = moe.num_experts();
  s.moe.top_k = moe.top_k();
  s.moe.expert_hidden = moe.expert_hidden();
  s.moe.num_shared_experts = moe.num_shared_experts();
  s.moe.score_function = moe.score_function() == switchyard::MoeConfig::SCORE_SIGMOID
                             ? ScoreFunction::kSigmoid
                             : ScoreFunction::kSoftmax;
  s.moe.normalize_topk = moe.normalize_topk();
  s.moe.route_scale = static_cast<float>(moe.route_scale());
  s.moe.capacity_factor = moe.capacity_factor();
  s.moe.aux_loss_coef = static_cast<float>(moe.aux_loss_coef());
  s.moe.z_loss_coef = static_cast<float>(moe.z_loss_coef());
  s.moe.seq_aux_loss_coef = static_cast<float>(moe.seq_aux_loss_coef());
  s.moe.bias_update_rate = static_cast<float>(moe.bias_update_rate());
  s.moe.n_groups = moe.n_groups();
  s.moe.topk_groups = moe.topk_groups();
  s.mtp_modules = config.mtp().num_modules();
  s.mtp_loss_weight = static_cast<float>(config.mtp().loss_weight());
  return s;
}

}  // namespace sy
