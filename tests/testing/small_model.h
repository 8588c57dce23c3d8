#pragma once
// A small MoE for tests that need a whole experiment (CPU, one process): two layers (one
// dense, one MoE with 4 experts, top-2), one MTP module, a 64-byte vocabulary. Tests add the
// rest of the experiment (data, optimizer, train, rl, logging) in text format.
namespace sy::testing {

inline constexpr char kSmallModel[] = R"pb(
  device: DEVICE_CPU
  model {
    vocab_size: 64
    d_model: 32
    n_layers: 2
    n_heads: 4
    n_kv_heads: 2
    seq_len: 12
    first_k_dense: 1
    dense_ffn_hidden: 48
    init_std: 0.1
  }
  moe { num_experts: 4 top_k: 2 expert_hidden: 16 normalize_topk: true }
  mtp { num_modules: 1 }
)pb";

}  // namespace sy::testing
