#include "models/generate.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <string>

#include "models/param_store.h"

namespace sy {

double sampling_uniform(uint64_t seed, uint64_t row_id, uint64_t position) {
  const uint64_t h = hash_seed(seed, "sample", row_id * 0x9e3779b97f4a7c15ull + position);
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

int32_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& options, double u) {
  if (options.temperature <= 0.0f || options.top_k == 1) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  // Candidates by descending probability (ties to the lower id), cut by top-k and top-p.
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = options.top_k > 0 ? std::min<int64_t>(options.top_k, vocab) : vocab;
  std::vector<double> p(keep);
  const double mx = logits[order[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) {
    p[i] = std::exp((logits[order[i]] - mx) / options.temperature);
    sum += p[i];
  }
  if (options.top_p < 1.0f) {
    double mass = 0;
    int64_t cut = 0;
    while (cut < keep && mass < options.top_p * sum) mass += p[cut++];
    keep = std::max<int64_t>(1, cut);
    sum = mass;
  }
  double target = u * sum;
  for (int64_t i = 0; i < keep; ++i) {
    target -= p[i];
    if (target < 0) return order[i];
  }
  return order[keep - 1];
}

std::vector<std::vector<int32_t>> generate(Transformer& model,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const SamplingOptions& options, Communicator* world,
                                           uint64_t first_row_id) {
  std::vector<std::vector<int32_t>> out(prompts.size());
  std::map<size_t, std::vector<size_t>> by_length;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SY_CHECK(!prompts[i].empty()) << "generate: prompt " << i << " is empty";
    by_length[prompts[i].size()].push_back(i);
  }
  // Every rank walks the union of all ranks' prompt lengths, in the same order.
  std::set<size_t> lengths;
  for (const auto& [len, rows] : by_length) lengths.insert(len);
  if (world && world->size() > 1) {
    std::string mine;
    for (size_t len : lengths) mine += std::to_string(len) + " ";
    for (const std::string& other : world->all_gather_host(mine)) {
      size_t at = 0;
      while (at < other.size()) {
        const size_t end = other.find(' ', at);
        lengths.insert(std::stoul(other.substr(at, end - at)));
        at = end + 1;
      }
    }
  }
  const std::set<int32_t> stops(options.stop_tokens.begin(), options.stop_tokens.end());
  const int64_t vocab = model.spec().vocab_size;
  for (size_t len : lengths) {
    std::vector<size_t> members;
    if (auto it = by_length.find(len); it != by_length.end()) members = it->second;
    // A rank with nothing of this length still steps with one padding row.
    const bool padding = members.empty();
    const int64_t b = padding ? 1 : static_cast<int64_t>(members.size());
    Tensor ids = Tensor::zeros({b, static_cast<int64_t>(len)}, DType::kI32);
    for (int64_t r = 0; r < b && !padding; ++r)
      std::copy(prompts[members[r]].begin(), prompts[members[r]].end(),
                ids.data<int32_t>() + r * len);
    Transformer::DecodeState state;
    std::vector<bool> done(b, padding);
    for (int step = 0; step < options.max_new_tokens; ++step) {
      double unfinished = 0;
      for (bool d : done) unfinished += d ? 0 : 1;
      if (world && world->size() > 1) world->all_reduce_host({&unfinished, 1}, ReduceOp::kMax);
      if (unfinished == 0) break;
      const std::vector<float> logits = model.decode(ids, state).to_f32_vector();
      Tensor next = Tensor::empty({b, 1}, DType::kI32);
      for (int64_t r = 0; r < b; ++r) {
        int32_t token = 0;
        if (!done[r]) {
          const size_t row = members[r];
          token = sample_token(logits.data() + r * vocab, vocab, options,
                               sampling_uniform(options.seed, first_row_id + row, step));
          out[row].push_back(token);
          done[r] = stops.count(token) > 0;
        }
        next.data<int32_t>()[r] = token;
      }
      ids = next;
    }
  }
  return out;
}

}  // namespace sy
