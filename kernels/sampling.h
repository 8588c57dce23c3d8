#pragma once
// Token sampling on the device that holds the logits, one row per sequence, with the log-prob
// of every drawn token (RL's behaviour log-probs). The same rule on every backend, so the CPU
// is the reference for the CUDA kernel:
//
//   z = logits[r] / temperature[r]                       (f32 arithmetic)
//   greedy (temperature[r] <= 0): token = argmax z (ties to the lower id), z = logits[r]
//   else the candidate set K starts as the whole vocabulary, then
//     top_k[r] > 0:  keep the top_k tokens by (z descending, id ascending);
//     min_p[r] > 0:  drop tokens whose probability is below min_p * (largest probability);
//     top_p[r] < 1:  of what is left, ordered by (probability descending, id ascending), keep
//                    the shortest prefix whose mass is >= top_p * (mass of what is left);
//     the token is the first id of K, in ascending id order, at which the cumulative mass
//     of K exceeds u * mass(K), with u = sampling_uniform(seed[r], row_id[r], position[r])
//     (the last id of K when rounding leaves none).
//   logprob[r] = z[token] - logsumexp(z): the log-probability of the token under the whole
//   distribution softmax(logits / temperature) (softmax(logits) when greedy), before any
//   top-k / top-p / min-p cut, so it equals what a training forward at that temperature
//   computes for the same token.
//
// "Mass" is the sum of exp(z - max z); the kernel may sum in another order than the CPU, so
// a sampled token can differ from the CPU's only where u falls within rounding of a boundary.
// Greedy tokens are the same on every backend.
//
// Rows whose active[r] is 0 are left alone: token[r] and logprob[r] are not written.
//
// Shapes: logits f32 [R, V] (or a view of R rows); temperature, top_p, min_p f32 [R];
// top_k, active i32 [R]; seed, row_id i64 [R] (the bits of uint64 values); position i32 [R];
// token i32 [R], logprob f32 [R] out. All on the logits' device. Nothing waits for the host.
#include <cstdint>

#include "kernels/tensor.h"

namespace sy {

struct SamplingParams {
  Tensor temperature, top_p, min_p;  // f32 [R]
  Tensor top_k;                      // i32 [R]
  Tensor seed, row_id;               // i64 [R]
  Tensor position;                   // i32 [R]: the index of the token in its completion
  Tensor active;                     // i32 [R]: 0 leaves the row alone
};

void sample_tokens(const Tensor& token, const Tensor& logprob, const Tensor& logits,
                   const SamplingParams& params);

// The uniform number in [0, 1) for (seed, row, position): a counter-based hash, the same bits
// on the host and on the device.
double sampling_uniform(uint64_t seed, uint64_t row_id, uint64_t position);

namespace cpu {
void sample_tokens(const Tensor& token, const Tensor& logprob, const Tensor& logits,
                   const SamplingParams& params);
}  // namespace cpu
namespace cuda {
// kernels/cuda/sampling.cu; defined in CUDA builds only.
void sample_tokens(const Tensor& token, const Tensor& logprob, const Tensor& logits,
                   const SamplingParams& params);
}  // namespace cuda
}  // namespace sy
