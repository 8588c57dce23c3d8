#include "rl/rollouts.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/check.h"
#include "models/generate.h"
#include "rl/rl_trainer.h"
#include "trainer/run.h"

namespace sy::rl {
namespace {

std::string byte_completion_text(const std::vector<int32_t>& ids) {
  std::string text;
  for (int32_t t : ids) text.push_back(t >= 0 && t < 256 ? static_cast<char>(t) : '?');
  return text;
}

// Length-prefixed strings ("3:abc0:"), for gathering byte strings of any content.
std::string pack(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) absl::StrAppend(&out, s.size(), ":", s);
  return out;
}

std::vector<std::string> unpack(const std::string& packed) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < packed.size()) {
    const size_t colon = packed.find(':', at);
    SY_CHECK(colon != std::string::npos) << "malformed packed strings";
    const size_t n = std::stoul(packed.substr(at, colon - at));
    out.push_back(packed.substr(colon + 1, n));
    at = colon + 1 + n;
  }
  return out;
}

}  // namespace

std::vector<int32_t> RlTrainer::encode_prompt(const Prompt& prompt) const {
  auto ids = tokenizer_->encode(prompt_template_.apply(prompt.text), /*add_special_tokens=*/true);
  // Prompts are valid UTF-8 text from the task (checked on sixteen of them at create); a
  // task that makes other bytes is a programming error.
  SY_CHECK(ids.ok()) << ids.status();
  return *std::move(ids);
}

std::string RlTrainer::completion_text(const std::vector<int32_t>& ids) const {
  if (tokenizer_->kind() == "bytes") return byte_completion_text(ids);
  // A model's vocabulary may be padded past the tokenizer's; an id there has no text.
  std::vector<int32_t> known;
  for (int32_t id : ids)
    if (id >= 0 && id < tokenizer_->vocab_size()) known.push_back(id);
  auto text = tokenizer_->decode(known, /*skip_special_tokens=*/true);
  return text.ok() ? *std::move(text) : std::string();
}

absl::StatusOr<Rollouts> RlTrainer::rollout(int64_t step) {
  Rollouts out;
  out.step = step;
  const int64_t p_count = rl_.prompts_per_step(), g = rl_.group_size();
  const uint64_t first = first_prompt_index(step, world_->rank(), world_->size(), p_count);
  std::vector<std::vector<int32_t>> ids;
  for (int64_t p = 0; p < p_count; ++p) {
    out.prompts.push_back(task_->sample(first + p, Split::kTrain));
    const std::vector<int32_t> prompt = encode_prompt(out.prompts.back());
    for (int64_t i = 0; i < g; ++i) ids.push_back(prompt);
  }
  const SamplingOptions options{.temperature = static_cast<float>(rl_.temperature()),
                                .top_p = static_cast<float>(rl_.top_p()),
                                .max_new_tokens = max_new_tokens_,
                                .stop_tokens = tokenizer_->eos_ids(),
                                .seed = rl_.seed()};
  // A MoE model's routes are recorded for routing replay and the mismatch metrics.
  const EngineOptions engine{.record_routing = policy_->num_routed_layers() > 0};
  SY_ASSIGN_OR_RETURN(std::vector<Completion> completions,
                      generate_completions(*policy_, ids, options, world_, first * g, engine));
  for (Completion& c : completions) {
    out.completions.push_back(std::move(c.tokens));
    out.logprobs.push_back(std::move(c.logprobs));
    out.routes.push_back(std::move(c.routes));
  }
  return out;
}

absl::Status RlTrainer::score(Rollouts& rollouts) {
  const int64_t g = rl_.group_size();
  const size_t n = rollouts.completions.size();
  std::vector<std::string> texts(n);
  rollouts.scores.resize(n);
  rollouts.rewards.resize(n);
  for (size_t i = 0; i < n; ++i) {
    texts[i] = completion_text(rollouts.completions[i]);
    rollouts.scores[i] = task_->score(rollouts.prompts[i / g], texts[i]);
    rollouts.rewards[i] = static_cast<float>(rollouts.scores[i].reward);
  }
  if (rl_.reward_command_size() == 0) return absl::OkStatus();

  // The command runs on rank 0 for every rank's completions, in rank order; the rewards come
  // back the same way (as text, so every rank sees exactly what rank 0 parsed).
  const std::vector<std::string> gathered = world_->all_gather_host(pack(texts));
  std::string answer;
  if (world_->rank() == 0) {
    std::vector<Prompt> prompts;
    std::vector<std::string> all_texts;
    const int64_t p_count = rl_.prompts_per_step();
    for (int r = 0; r < world_->size(); ++r) {
      const uint64_t first = first_prompt_index(rollouts.step, r, world_->size(), p_count);
      for (int64_t p = 0; p < p_count; ++p)
        prompts.push_back(task_->sample(first + p, Split::kTrain));
      for (std::string& s : unpack(gathered[r])) all_texts.push_back(std::move(s));
    }
    std::vector<RewardQuery> queries;
    for (size_t i = 0; i < all_texts.size(); ++i)
      queries.push_back({.prompt = &prompts[i / g], .completion = all_texts[i]});
    auto rewards = command_->score(queries);
    if (rewards.ok()) {
      std::vector<std::string> numbers;
      for (double r : *rewards) numbers.push_back(absl::StrFormat("%.17g", r));
      answer = absl::StrCat("ok ", absl::StrJoin(numbers, " "));
    } else {
      answer = absl::StrCat("error rl.reward_command: ", rewards.status().message());
    }
  }
  answer = world_->all_gather_host(answer)[0];
  if (answer.rfind("error ", 0) == 0) return absl::FailedPreconditionError(answer.substr(6));
  std::vector<std::string> numbers = absl::StrSplit(answer.substr(3), ' ');
  for (size_t i = 0; i < n; ++i) {
    double r = 0;
    SY_CHECK(absl::SimpleAtod(numbers[world_->rank() * n + i], &r)) << "reward broadcast";
    rollouts.rewards[i] = static_cast<float>(r);
  }
  return absl::OkStatus();
}

EvalMetrics RlTrainer::evaluate() {
  const int64_t n = rl_.eval_examples();
  const int64_t ranks = world_->size(), r = world_->rank();
  const int64_t lo = n * r / ranks, hi = n * (r + 1) / ranks;
  std::vector<Prompt> prompts;
  std::vector<std::vector<int32_t>> ids;
  for (int64_t i = lo; i < hi; ++i) {
    prompts.push_back(task_->sample(static_cast<uint64_t>(i), Split::kHeldOut));
    ids.push_back(encode_prompt(prompts.back()));
  }
  const SamplingOptions greedy{
      .temperature = 0.0f, .max_new_tokens = max_new_tokens_, .stop_tokens = tokenizer_->eos_ids()};
  // The options and prompts passed the config's checks at start-up: a refusal is a bug here.
  const auto completions = generate(*policy_, ids, greedy, world_);
  SY_CHECK(completions.ok()) << completions.status();
  // Collective, as the generation is: every rank skips the sampled pass alike.
  EvalMetrics e;
  e.stopped = stop_agreed(*world_);
  const SamplingOptions sampling{.temperature = static_cast<float>(rl_.temperature()),
                                 .top_p = static_cast<float>(rl_.top_p()),
                                 .max_new_tokens = max_new_tokens_,
                                 .stop_tokens = tokenizer_->eos_ids(),
                                 .seed = rl_.seed() + 1};
  absl::StatusOr<std::vector<std::vector<int32_t>>> samples;
  if (!e.stopped) {
    samples = generate(*policy_, ids, sampling, world_, static_cast<uint64_t>(lo));
    SY_CHECK(samples.ok()) << samples.status();
  }
  // Summed over every rank's prompts in one all-reduce.
  double sums[3] = {0, 0, 0};
  double& correct = sums[0];
  double& reward = sums[1];
  double& sampled_correct = sums[2];
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Score s = task_->score(prompts[i], completion_text((*completions)[i]));
    correct += s.correct;
    reward += s.reward;
    if (!e.stopped)
      sampled_correct += task_->score(prompts[i], completion_text((*samples)[i])).correct;
  }
  world_->all_reduce_host(sums, ReduceOp::kSum);
  e.correct = static_cast<int64_t>(correct);
  e.total = n;
  e.accuracy = n > 0 ? correct / n : 0;
  e.reward_mean = n > 0 ? reward / n : 0;
  e.sampled_accuracy = n > 0 ? sampled_correct / n : 0;
  return e;
}

}  // namespace sy::rl
