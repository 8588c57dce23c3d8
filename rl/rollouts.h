#pragma once
// Rollout collection: every rank samples its share of the step's prompts (G completions
// each) with the rollout engine, and the task, or the external reward command, scores them.
// The work is RlTrainer's (rollout, score, evaluate: rl/rollouts.cc); this header holds what
// it hands on.
#include <cstdint>
#include <string>
#include <vector>

#include "rl/tasks.h"

namespace sy::rl {

// The global index of the first of the `prompts_per_step` training prompts that `rank` of
// `ranks` samples in `step`: rank r takes [step·P·R + r·P, +P), so any layout of the job
// samples the same prompts.
inline uint64_t first_prompt_index(int64_t step, int rank, int ranks, int64_t prompts_per_step) {
  return static_cast<uint64_t>((step * ranks + rank) * prompts_per_step);
}

// What one rank sampled in one step: P prompts with G completions each, prompt-major.
struct Rollouts {
  int64_t step = 0;
  std::vector<Prompt> prompts;                    // P
  std::vector<std::vector<int32_t>> completions;  // P·G token ids (the stop token included)
  // The rollout engine's log-prob of each completion token under the distribution it sampled
  // from, softmax(logits / temperature) (the behaviour policy of rl.rollout_correction).
  std::vector<std::vector<float>> logprobs;
  // A MoE model's routes per completion (Completion::routes: the experts of each input
  // position of prompt + completion, [positions, MoE layers, top_k]); empty for a dense one.
  std::vector<std::vector<int32_t>> routes;
  std::vector<Score> scores;                      // the task's verdicts
  std::vector<float> rewards;                     // task or command rewards, before any KL
};

}  // namespace sy::rl
