#pragma once
// Generation, the simple way in: `switchyard generate`, the training loop's evaluation
// (greedy) and RL rollouts call these; they run on the rollout engine
// (models/rollout/engine.h: KV pool, continuous batching, device sampling with
// temperature, top-k, top-p and min-p, stop tokens and stop strings), sized for the call.
//
// Sampling is reproducible and independent of batching: the random number for row r's i-th
// new token is sampling_uniform(seed, first_row_id + r, i) (kernels/sampling.h), so a prompt
// gets the same completion alone, in a batch, or on another rank.
//
// All ranks of `world` must call generate together (the MoE layers exchange tokens); each
// passes its own prompts, and every rank steps until all ranks' rows have finished.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/rollout/engine.h"
#include "models/transformer.h"
#include "parallel/communicator.h"

namespace sy {

// Completions with their log-probs and why each ended. engine: the engine's limits
// (max_rows, check_interval, prefill_tokens); its max_len is sized for the prompts.
absl::StatusOr<std::vector<Completion>> generate_completions(
    Transformer& model, const std::vector<std::vector<int32_t>>& prompts,
    const SamplingOptions& options, Communicator* world = nullptr, uint64_t first_row_id = 0,
    const EngineOptions& engine = {});

// The new tokens alone (the stop token included when one ended the row), per prompt.
absl::StatusOr<std::vector<std::vector<int32_t>>> generate(
    Transformer& model, const std::vector<std::vector<int32_t>>& prompts,
    const SamplingOptions& options, Communicator* world = nullptr, uint64_t first_row_id = 0);

// A StopCheck for stop strings in the text the tokens spell, token by token (`piece`: the
// text of one token): a completion ends right after the token that completes the earliest
// stop string.
StopCheck stop_at_strings(std::vector<std::string> stops,
                          std::function<std::string(int32_t)> piece);

}  // namespace sy
