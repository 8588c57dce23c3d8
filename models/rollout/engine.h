#pragma once
// The rollout engine: batched autoregressive generation on the model's device, in four parts
// (as vLLM splits it): the scheduler (models/rollout/scheduler.h) admits and retires
// sequences, the KV pool (models/rollout/kv_pool.h) holds every live sequence's keys and
// values in a slot allocated once, the model runner here issues one prefill or decode
// forward (Transformer::forward_with_cache), and the device sampler (kernels/sampling.h)
// draws each token and its log-prob.
//
// A round between two check points:
//   1. retire the rows that finished, admit pending prompts into the free slots (continuous
//      batching), prefill them together: right-padded to a batch's longest prompt, at most
//      EngineOptions::prefill_tokens padded tokens per forward, the first token sampled from
//      each row's last real position;
//   2. check_interval decode steps over the live rows (padded to a power-of-two row count),
//      each embedding -> blocks -> final norm -> head -> sample -> row bookkeeping
//      (kernels/rollout_rows.h) on the device, with no host wait of its own;
//   3. one read of the rows' new tokens, log-probs and states: a row is finished at a stop
//      token (found on the device), at max_new_tokens, when prompt + completion fill the
//      model's context (seq_len positions read, so seq_len + 1 tokens: the last one sampled
//      from the full context is kept), or at a stop string (SamplingOptions::stop_check, run here
//      on the host; the completion is cut right after the stop).
//
// Reproducibility: row i's k-th token is drawn with sampling_uniform(seed, first_row_id + i,
// k), and the MoE layers run dropless (no capacity dropping, even for a model trained with
// a capacity factor), so a row's tokens do not depend on its batch-mates: a prompt gets the
// same completion alone, in any batch, with any capacity or check interval, or on another
// rank (up to the summation order of batched GEMMs on a GPU).
//
// Expert parallelism: every rank of `world` must call generate together. They agree at each
// check point (one small host all-reduce) on whether any rank has work left and on how many
// prefill forwards the round needs; a rank with nothing to run joins every forward with an
// idle row, so the MoE all-to-alls match.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/rollout/kv_pool.h"
#include "models/rollout/routing_record.h"
#include "models/transformer.h"
#include "parallel/communicator.h"

namespace sy {

// Ends a completion at a stop string: given a row's completion so far, the length it ends at
// (right after the earliest stop), or -1 to go on. Called on the host at check points.
using StopCheck = std::function<int64_t(std::span<const int32_t> completion)>;

struct SamplingOptions {
  float temperature = 1.0f;  // <= 0: greedy (argmax, ties to the lower id)
  int sampling_top_k = 0;    // keep the k most likely tokens; 0: no limit
  float top_p = 1.0f;        // nucleus mass in (0, 1]; 1: no cut
  float min_p = 0.0f;        // in [0, 1): drop tokens below min_p * the top probability
  int max_new_tokens = 32;
  std::vector<int32_t> stop_tokens;  // a row ends after it emits one of these (kept)
  uint64_t seed = 0;
  StopCheck stop_check;  // optional: stop strings
};

// OK, or what to change: temperature NaN, top_p outside (0, 1], min_p outside [0, 1),
// sampling_top_k < 0, max_new_tokens < 0.
absl::Status validate_sampling_options(const SamplingOptions& options);

enum class FinishReason {
  kStopToken,   // the last token is a stop token
  kStopString,  // cut right after a stop string
  kMaxTokens,   // max_new_tokens reached
  kContext,     // prompt + completion hold seq_len + 1 tokens (the context is full)
};
const char* finish_reason_name(FinishReason reason);

struct Completion {
  std::vector<int32_t> tokens;  // the new tokens (the stop token included when one ended it)
  std::vector<float> logprobs;  // log softmax(logits / temperature) of each (f32; greedy: T=1)
  FinishReason finish = FinishReason::kMaxTokens;
  // With EngineOptions::record_routing: the experts of each input position of prompt +
  // completion (P + G - 1 of them: the last token is never an input), [positions, MoE layers,
  // top_k] row-major (models/rollout/routing_record.h). Empty otherwise.
  std::vector<int32_t> routes;
};

struct EngineOptions {
  int64_t max_rows = 64;          // KV slots: the most sequences decoded at once
  int64_t max_len = 0;            // cached positions per slot; 0: the model's seq_len
  int check_interval = 8;         // decode steps between checks for finished rows
  int64_t prefill_tokens = 8192;  // the most padded tokens in one prefill forward
  // Capture each decode batch size's step as a CUDA graph (kernels/graph.h) and replay it:
  // one launch instead of some twenty a layer. Applies on a GPU, on one rank, when every MoE
  // layer runs its experts with no host wait (Transformer::cache_forward_issues_without_host);
  // SWITCHYARD_DECODE_GRAPHS=0 turns it off too. Same tokens and log-probs either way.
  bool decode_graphs = true;
  // Record each token's experts per MoE layer for routing replay (Completion::routes); no
  // effect on a model without MoE layers. Off: no buffer, no work.
  bool record_routing = false;
};

// The working memory an engine with `options` keeps free beside its KV pool for a model of
// `spec` computing in `dtype` (max_len 0: the model's seq_len): one prefill forward's
// activations over max(prefill_tokens, max_len) tokens, plus each of max_rows rows' share of a
// decode step (its activations and f32 logits; twice that with decode_graphs, where every
// padded row count keeps its captured step's tensors for the call). A rough bound, as create() counts it: on a GPU
// it must be free beside the pool, and an up-front memory plan (rl/rl_trainer.h) adds it.
int64_t estimate_rollout_workspace_bytes(const ModelSpec& spec, const EngineOptions& options,
                                         DType dtype);

class RolloutEngine {
 public:
  // Allocates the KV pool (model's device and compute dtype). Errors: options out of range,
  // or a pool that does not fit in the GPU's memory (naming the largest max_rows that does).
  static absl::StatusOr<std::unique_ptr<RolloutEngine>> create(Transformer& model,
                                                               const EngineOptions& options,
                                                               Communicator* world = nullptr);
  ~RolloutEngine();

  // One completion per prompt, in prompt order; row ids first_row_id + i. Errors (on every
  // rank of the world alike): bad options, an empty prompt, a token outside the vocabulary,
  // or a prompt longer than the context or than the pool's max_len (naming the prompt).
  absl::StatusOr<std::vector<Completion>> generate(const std::vector<std::vector<int32_t>>& prompts,
                                                   const SamplingOptions& options,
                                                   uint64_t first_row_id = 0);

  const EngineOptions& options() const { return options_; }
  // What the last generate call did with its decode steps: run as issued kernels, replayed
  // as captured graphs (EngineOptions::decode_graphs), and how many graphs it captured.
  struct DecodeStats {
    int64_t steps_issued = 0, steps_replayed = 0, graphs = 0;
  };
  const DecodeStats& last_decode_stats() const { return decode_stats_; }
  // The working memory create() reserved beside the pool (the sizes it gave KvPool::create).
  int64_t workspace_bytes() const { return workspace_bytes_; }

 private:
  struct Rows;
  struct DecodeBatch;
  RolloutEngine(Transformer& model, const EngineOptions& options, Communicator* world,
                std::unique_ptr<KvPool> pool);
  void prefill(Rows& rows, int64_t first_row, const std::vector<int64_t>& prompt_ids,
               const std::vector<std::vector<int32_t>>& prompts);
  void idle_prefill();
  void decode_step(Rows& rows);

  Transformer& model_;
  EngineOptions options_;
  Communicator* world_;
  std::unique_ptr<KvPool> pool_;
  PoolStep step_;
  std::vector<std::unique_ptr<PoolAttention>> layers_;
  std::vector<KvAttention*> attention_;
  int64_t workspace_bytes_ = 0;
  DecodeStats decode_stats_;
  std::unique_ptr<RoutingRecorder> recorder_;  // with options.record_routing on a MoE model
};

}  // namespace sy
