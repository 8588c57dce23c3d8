#pragma once
// Batched autoregressive generation on the model's KV cache: temperature, top-k and top-p
// (nucleus) sampling, stop tokens and a token budget. Used by `switchyard generate`, by the
// evaluation of the training loop (greedy) and by RL rollouts.
//
// Sampling is reproducible and independent of batching: the random number for row r's i-th
// new token is a hash of (seed, row_id, i), where row_id = first_row_id + r, so a prompt gets
// the same completion alone, in a batch, or on another rank.
//
// All ranks of `world` must call generate together (the MoE layers exchange tokens): they
// step through the same prompt lengths (a rank with no prompt of a length runs one padding
// row) and keep stepping until every rank's rows have finished.
#include <cstdint>
#include <vector>

#include "models/transformer.h"
#include "parallel/communicator.h"

namespace sy {

struct SamplingOptions {
  float temperature = 1.0f;  // <= 0: greedy (argmax, ties to the lower id)
  int top_k = 0;             // 0: no limit
  float top_p = 1.0f;        // 1: no nucleus cut
  int max_new_tokens = 32;
  std::vector<int32_t> stop_tokens;  // generation of a row ends after it emits one of these
  uint64_t seed = 0;
};

// The next token for one row of logits [V], drawn with uniform u in [0, 1).
int32_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& options, double u);

// The uniform number for (seed, row, position): a counter-based hash.
double sampling_uniform(uint64_t seed, uint64_t row_id, uint64_t position);

// Completions (new tokens, the stop token included when one ended the row) for each prompt.
std::vector<std::vector<int32_t>> generate(Transformer& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const SamplingOptions& options,
                                           Communicator* world = nullptr,
                                           uint64_t first_row_id = 0);

}  // namespace sy
