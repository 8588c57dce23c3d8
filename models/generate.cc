#include "models/generate.h"

#include <algorithm>
#include <utility>

namespace sy {

absl::StatusOr<std::vector<Completion>> generate_completions(
    Transformer& model, const std::vector<std::vector<int32_t>>& prompts,
    const SamplingOptions& options, Communicator* world, uint64_t first_row_id,
    const EngineOptions& engine) {
  // A pool just large enough for this call: as many rows as prompts (up to max_rows), as
  // many positions as the longest prompt and its budget need (the last token is never
  // cached). Bad input is left to the engine, which names it.
  const int64_t seq_len = model.spec().seq_len;
  int64_t positions = 1;
  for (const std::vector<int32_t>& p : prompts) {
    const int64_t len = static_cast<int64_t>(p.size());
    const int64_t budget = std::clamp<int64_t>(options.max_new_tokens, 0, seq_len + 1 - len);
    positions = std::max(positions, std::min(seq_len, len + budget - 1));
  }
  EngineOptions sized = engine;
  sized.max_rows = std::min<int64_t>(engine.max_rows,
                                     std::max<int64_t>(1, static_cast<int64_t>(prompts.size())));
  sized.max_len = std::max<int64_t>(1, positions);
  absl::StatusOr<std::unique_ptr<RolloutEngine>> eng = RolloutEngine::create(model, sized, world);
  // A rank whose pool does not fit must not leave the others waiting in the first step.
  if (world && world->size() > 1) {
    double refused = eng.ok() ? 0 : 1;
    world->all_reduce_host({&refused, 1}, ReduceOp::kMax);
    if (eng.ok() && refused > 0) {
      return absl::ResourceExhaustedError(
          "generate: another rank's rollout engine did not fit (its error says why)");
    }
  }
  if (!eng.ok()) return eng.status();
  return (*eng)->generate(prompts, options, first_row_id);
}

absl::StatusOr<std::vector<std::vector<int32_t>>> generate(
    Transformer& model, const std::vector<std::vector<int32_t>>& prompts,
    const SamplingOptions& options, Communicator* world, uint64_t first_row_id) {
  SY_ASSIGN_OR_RETURN(std::vector<Completion> completions,
                      generate_completions(model, prompts, options, world, first_row_id));
  std::vector<std::vector<int32_t>> out;
  out.reserve(completions.size());
  for (Completion& c : completions) out.push_back(std::move(c.tokens));
  return out;
}

StopCheck stop_at_strings(std::vector<std::string> stops,
                          std::function<std::string(int32_t)> piece) {
  return [stops = std::move(stops),
          piece = std::move(piece)](std::span<const int32_t> completion) -> int64_t {
    std::string text;
    for (size_t i = 0; i < completion.size(); ++i) {
      const size_t before = text.size();
      text += piece(completion[i]);
      // A stop that ends inside this token's text: it was not complete before it.
      for (const std::string& stop : stops) {
        if (stop.empty()) continue;
        const size_t from = before >= stop.size() ? before - stop.size() + 1 : 0;
        if (text.find(stop, from) != std::string::npos) return static_cast<int64_t>(i + 1);
      }
    }
    return -1;
  };
}

}  // namespace sy
